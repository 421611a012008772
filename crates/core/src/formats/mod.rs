//! Candidate input formats and result output formats.
//!
//! # Inputs
//!
//! Three shapes are read, all streamed so that large inputs are never held as a
//! JSON tree:
//!
//! 1. **rank_llm retrieve_results JSON**: one top-level array
//!    `[{"query": str, "hits": [{"content", "qid", "docid", "rank", "score", "title"?}]}]`.
//!    Parsed by a `serde_json` sequence visitor on a reader thread that hands
//!    one query at a time through a bounded channel. The qid comes from the
//!    hits (all hits of a record must agree) or from an optional record-level
//!    `qid`. Candidates keep file order; a warning is logged when `rank` is not
//!    increasing. A record without hits and without a record-level `qid` has
//!    no qid to report under, so it is skipped with a warning.
//! 2. **rank_llm request JSONL**: one request per line,
//!    `{"query": {"text", "qid"}, "candidates": [{"docid", "score", "doc": {...}}]}`;
//!    the passage text is the first of `doc.contents`, `doc.text`,
//!    `doc.segment`, `doc.body`, `doc.passage`, the title `doc.title` if any.
//!    The JSONL written by [`output`] has this shape too, so a result can be fed
//!    to a later stage.
//! 3. **TREC run + topics + corpus**: a run (`qid Q0 docid rank score tag`), a
//!    topics TSV (`qid<TAB>query`) and a corpus (JSONL with `docid`/`_id`/`id`,
//!    optional `title`, `text`/`contents`; or TSV `docid<TAB>text`). Only the
//!    corpus entries the run references are kept, so a corpus of millions of
//!    passages costs one streaming pass. See [`trec`] for ordering rules.
//!
//! qids and docids may be JSON strings or integers; both become strings.
//!
//! [`open_requests`] detects the shape from the content: first non-whitespace
//! byte `[` is retrieve_results JSON, `{` is request JSONL, anything else is
//! taken as a TREC run, which needs the topics and corpus
//! ([`InputSpec::RunWithTexts`]). When nothing fits, the error lists the three
//! expected shapes.
//!
//! # Bad input
//!
//! Errors name the file, the place (`line N` for line formats, `record N` for
//! the JSON array, both 1-based, plus `line`/`column` from the JSON parser when
//! known) and the field path (`hits[4]`, `candidates[0].doc`, 0-based like JSON
//! paths). Recoveries, each logged with `tracing::warn!`:
//! - duplicate docids within one query: the first occurrence is kept, later
//!   ones are dropped;
//! - a query with zero candidates is passed through as an empty request (as
//!   rank_llm keeps it); the TREC writer writes nothing for it.
//!
//! Everything else (malformed JSON/TSV, missing fields, invalid UTF-8, a run
//! docid missing from the corpus, a run qid missing from the topics) is an
//! error.
//!
//! # Outputs
//!
//! See [`output`]: TREC run and JSONL result writers, [`AtomicWriter`], and
//! [`OutputSink`] with `.partial` progress files for `--resume`.

pub(crate) mod lines;
pub mod output;
mod rankllm;
pub mod trec;

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::{Candidate, Error, Request, Result};

pub use output::{
    completed_qids, format_request_jsonl, remove_unfinished_outputs, write_atomically,
    AtomicWriter, OutputConfig, OutputKind, OutputSink,
};
pub use trec::{read_corpus_subset, read_topics, read_trec_run, read_trec_run_strict, RunEntry};

/// A stream of requests; it ends after the first error.
pub type RequestIter = Box<dyn Iterator<Item = Result<Request>> + Send>;

/// Where the candidates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSpec {
    /// One self-contained file (retrieve_results JSON or request JSONL),
    /// detected by content.
    Auto(PathBuf),
    /// A TREC run whose texts come from a topics file and a corpus.
    RunWithTexts {
        run: PathBuf,
        topics: PathBuf,
        corpus: PathBuf,
    },
}

/// The input shapes [`detect_format`] tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    RetrieveResults,
    RequestJsonl,
    TrecRun,
}

/// The three accepted shapes, for error messages.
pub const EXPECTED_SHAPES: &str = "expected one of:\n  \
     1. rank_llm retrieve_results JSON: [{\"query\": str, \"hits\": [{\"content\", \"qid\", \"docid\", \"rank\", \"score\"}]}]\n  \
     2. rank_llm request JSONL, one per line: {\"query\": {\"text\", \"qid\"}, \"candidates\": [{\"docid\", \"score\", \"doc\": {\"contents\"|\"text\"|\"segment\", \"title\"?}}]}\n  \
     3. a TREC run `qid Q0 docid rank score tag` (with --topics qid<TAB>query and --corpus JSONL/TSV)";

/// Opens the candidates as a stream of requests.
pub fn open_requests(spec: &InputSpec) -> Result<RequestIter> {
    match spec {
        InputSpec::Auto(path) => match detect_format(path)? {
            InputFormat::RetrieveResults => rankllm::open_retrieve_results(path),
            InputFormat::RequestJsonl => rankllm::open_request_jsonl(path),
            InputFormat::TrecRun => Err(Error::input(
                path,
                "line 1",
                format!(
                    "this looks like a TREC run, which carries no texts: give the topics and the corpus too \
                     (--topics, --corpus); {EXPECTED_SHAPES}"
                ),
            )),
        },
        InputSpec::RunWithTexts { run, topics, corpus } => trec::open_run_with_texts(run, topics, corpus),
    }
}

/// Reads every request of `spec` into memory (convenient for small inputs and tests).
pub fn read_requests(spec: &InputSpec) -> Result<Vec<Request>> {
    open_requests(spec)?.collect()
}

/// Tells the input shape from the file's first non-whitespace bytes.
pub fn detect_format(path: &Path) -> Result<InputFormat> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = BufReader::new(file);
    let io = |e| Error::io(path, e);
    // Skip a byte order mark and whitespace without reading whole lines: a
    // minified JSON file is one huge line.
    if reader.fill_buf().map_err(io)?.starts_with(b"\xEF\xBB\xBF") {
        reader.consume(3);
    }
    let mut line_no = 1usize;
    let first = loop {
        let buf = reader.fill_buf().map_err(io)?;
        if buf.is_empty() {
            return Err(Error::input(
                path,
                "start of file",
                format!("the file is empty; {EXPECTED_SHAPES}"),
            ));
        }
        match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => {
                line_no += buf[..i].iter().filter(|&&b| b == b'\n').count();
                let first = buf[i];
                reader.consume(i);
                break first;
            }
            None => {
                line_no += buf.iter().filter(|&&b| b == b'\n').count();
                let n = buf.len();
                reader.consume(n);
            }
        }
    };
    match first {
        b'[' => Ok(InputFormat::RetrieveResults),
        b'{' => Ok(InputFormat::RequestJsonl),
        _ => {
            // A run line is short; look at no more than 64 KiB of it.
            let mut line = Vec::new();
            (&mut reader)
                .take(1 << 16)
                .read_until(b'\n', &mut line)
                .map_err(io)?;
            let text = String::from_utf8_lossy(line.trim_ascii());
            match trec::parse_run_line(&text) {
                Ok(_) => Ok(InputFormat::TrecRun),
                Err(why) => {
                    let shown: String = text.chars().take(60).collect();
                    Err(Error::input(
                        path,
                        format!("line {line_no}"),
                        format!(
                            "unrecognised input format (starts with `{shown}`; as a TREC run line: {why}); \
                             {EXPECTED_SHAPES}"
                        ),
                    ))
                }
            }
        }
    }
}

/// A qid or docid as found in JSON: a string or an integer, kept as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Id(pub String);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct IdVisitor;
        impl Visitor<'_> for IdVisitor {
            type Value = Id;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Id, E> {
                Ok(Id(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<Id, E> {
                Ok(Id(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Id, E> {
                Ok(Id(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Id, E> {
                Ok(Id(v.to_string()))
            }
        }
        deserializer.deserialize_any(IdVisitor)
    }
}

/// Splits a serde_json error into a location suffix and a message without the
/// trailing " at line L column C".
pub(crate) fn split_json_error(e: &serde_json::Error) -> (Option<(usize, usize)>, String) {
    let full = e.to_string();
    if e.line() == 0 {
        return (None, full);
    }
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let mut msg = full
        .strip_suffix(&suffix)
        .map(str::to_owned)
        .unwrap_or(full);
    if msg.starts_with("invalid unicode code point") {
        msg.push_str(" (invalid UTF-8? the input must be UTF-8 text)");
    }
    (Some((e.line(), e.column())), msg)
}

/// Applies the documented recoveries to one query's candidates: duplicate
/// docids keep their first occurrence; an empty list is passed through.
pub(crate) fn finish_request(
    query: crate::Query,
    mut candidates: Vec<Candidate>,
    source: &Path,
) -> Request {
    if candidates.is_empty() {
        tracing::warn!(
            qid = %query.qid,
            file = %source.display(),
            "query {} has no candidates; passing it through as an empty request",
            query.qid
        );
    } else {
        let mut seen: HashSet<String> = HashSet::with_capacity(candidates.len());
        candidates.retain(|c| {
            if seen.insert(c.docid.clone()) {
                true
            } else {
                tracing::warn!(
                    qid = %query.qid,
                    docid = %c.docid,
                    file = %source.display(),
                    "duplicate docid {} in query {}: keeping the first occurrence, dropping this one",
                    c.docid,
                    query.qid
                );
                false
            }
        });
    }
    Request { query, candidates }
}
