//! Reading a whole corpus for indexing, strictly: the same shapes as
//! `firstrank_core::formats::trec::read_corpus_subset` (JSONL with
//! `docid`|`_id`|`id`, optional `title`, `text`|`contents`; or TSV
//! `docid<TAB>text`, told apart by the first non-blank line), but where that
//! reader keeps the first of two equal docids, an index must not silently
//! drop a passage, so here every problem is an error naming the file and
//! line(s):
//! - a docid seen twice (both lines named);
//! - a document with no text field, or whose text and title are both empty;
//! - an empty corpus (no documents at all).
//!
//! Blank lines are skipped. The corpus is streamed; only the docid → line
//! map for the duplicate check is held in memory (for MS MARCO's 8.8M
//! passages, a few hundred MB).
//!
//! A rank_llm candidates file is accepted as a corpus too (the retrieve_results
//! JSON array, or the request JSONL that `firstrank retrieve` writes): its
//! passages are pooled in order of appearance, and a docid that comes back
//! in a later query (or in the same one) is the same passage, so only its
//! first occurrence is kept, whatever the later text says. The candidates are
//! read by `firstrank_core::formats::open_requests`, so their errors are that
//! reader's. The shape is told from the first non-blank bytes: `[` is a
//! retrieve_results array; a `{` line whose object has `query`, `candidates`
//! or `hits` and no `docid`/`_id`/`id` is request JSONL; any other `{` line is
//! corpus JSONL, anything else TSV.

use std::collections::HashMap;
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use anyhow::Result;
use firstrank_core::formats::{detect_format, open_requests, InputFormat, InputSpec};
use firstrank_core::Error;
use serde::de::IgnoredAny;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// One corpus passage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub docid: String,
    pub title: Option<String>,
    pub text: String,
}

impl Document {
    /// What gets indexed and embedded: `title text` when there is a title
    /// (BEIR's convention for bi-encoders), else the text.
    pub fn indexed_text(&self) -> String {
        match self.title.as_deref() {
            Some(t) if !t.is_empty() => format!("{t} {}", self.text),
            _ => self.text.clone(),
        }
    }
}

/// What a full pass over the corpus saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorpusStats {
    pub num_docs: u64,
    pub bytes: u64,
    /// sha256 of the file's bytes, lowercase hex.
    pub sha256: String,
}

#[derive(Deserialize)]
struct JsonDoc {
    #[serde(default)]
    docid: Option<Id>,
    #[serde(default, rename = "_id")]
    underscore_id: Option<Id>,
    #[serde(default)]
    id: Option<Id>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    contents: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Id {
    Str(String),
    Int(i64),
}

impl Id {
    fn into_string(self) -> String {
        match self {
            Id::Str(s) => s,
            Id::Int(i) => i.to_string(),
        }
    }
}

/// Streams every document of `path` to `each`, in file order, with its
/// 1-based line (for a candidates file: the 1-based number of the query
/// whose candidates first hold the passage). Stops at the first error, from
/// the corpus or from `each`.
pub fn read_corpus(
    path: &Path,
    each: impl FnMut(Document, usize) -> Result<()>,
) -> Result<CorpusStats> {
    match sniff(path)? {
        Shape::Candidates => read_candidate_pool(path, each),
        Shape::Corpus => read_corpus_file(path, each),
    }
}

/// Every document of `path` ([`read_corpus`]), in memory.
pub fn read_documents(path: &Path) -> Result<Vec<Document>> {
    let mut docs = Vec::new();
    read_corpus(path, |d, _| {
        docs.push(d);
        Ok(())
    })?;
    Ok(docs)
}

/// What [`sniff`] tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// A rank_llm candidates file (retrieve_results JSON or request JSONL).
    Candidates,
    /// A corpus: JSONL documents or TSV (or nothing at all).
    Corpus,
}

/// The top-level fields that tell a request line from a corpus line.
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    query: Option<IgnoredAny>,
    #[serde(default)]
    candidates: Option<IgnoredAny>,
    #[serde(default)]
    hits: Option<IgnoredAny>,
    #[serde(default)]
    docid: Option<IgnoredAny>,
    #[serde(default, rename = "_id")]
    underscore_id: Option<IgnoredAny>,
    #[serde(default)]
    id: Option<IgnoredAny>,
}

/// Looks at the first non-blank bytes of `path` (see the module comment).
fn sniff(path: &Path) -> Result<Shape> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = BufReader::new(file);
    let io = |e| Error::io(path, e);
    if reader.fill_buf().map_err(io)?.starts_with(b"\xEF\xBB\xBF") {
        reader.consume(3);
    }
    let first = loop {
        let buf = reader.fill_buf().map_err(io)?;
        if buf.is_empty() {
            // Empty or blank: the corpus reader says so.
            return Ok(Shape::Corpus);
        }
        match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => {
                let b = buf[i];
                reader.consume(i);
                break b;
            }
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    };
    match first {
        b'[' => Ok(Shape::Candidates),
        b'{' => {
            let mut line = Vec::new();
            (&mut reader)
                .take(1 << 28)
                .read_until(b'\n', &mut line)
                .map_err(io)?;
            // A line that does not parse is left to the corpus reader, which
            // reports where it breaks.
            Ok(match serde_json::from_slice::<Probe>(&line) {
                Ok(p)
                    if (p.query.is_some() || p.candidates.is_some() || p.hits.is_some())
                        && p.docid.is_none()
                        && p.underscore_id.is_none()
                        && p.id.is_none() =>
                {
                    Shape::Candidates
                }
                _ => Shape::Corpus,
            })
        }
        _ => Ok(Shape::Corpus),
    }
}

/// The passages of a candidates file, pooled: first occurrence of each docid
/// kept, in order of appearance.
fn read_candidate_pool(
    path: &Path,
    mut each: impl FnMut(Document, usize) -> Result<()>,
) -> Result<CorpusStats> {
    let requests = open_requests(&InputSpec::Auto(path.to_path_buf()))?;
    let mut seen: HashSet<String> = HashSet::new();
    let (mut queries, mut candidates, mut num_docs) = (0usize, 0u64, 0u64);
    for request in requests {
        let request = request?;
        queries += 1;
        for c in request.candidates {
            candidates += 1;
            if seen.contains(&c.docid) {
                continue;
            }
            let loc = format!(
                "query {} (#{queries}), docid {}",
                request.query.qid, c.docid
            );
            if c.docid.trim().is_empty() || c.docid.chars().any(char::is_whitespace) {
                return Err(Error::input(
                    path,
                    &loc,
                    "the docid must be non-empty and contain no whitespace (it is written to TREC runs)",
                )
                .into());
            }
            let title = c.title.filter(|t| !t.trim().is_empty());
            if c.text.trim().is_empty() && title.is_none() {
                return Err(Error::input(
                    path,
                    &loc,
                    "the passage has an empty text and no title; an index cannot hold it",
                )
                .into());
            }
            seen.insert(c.docid.clone());
            num_docs += 1;
            each(
                Document {
                    docid: c.docid,
                    title,
                    text: c.text,
                },
                queries,
            )?;
        }
    }
    if num_docs == 0 {
        return Err(Error::input(
            path,
            "end of file",
            format!(
                "the candidates file holds no passages ({queries} queries, none with candidates)"
            ),
        )
        .into());
    }
    tracing::info!(
        file = %path.display(),
        "pooled {num_docs} distinct passages from the {candidates} candidates of {queries} queries"
    );
    let (bytes, sha256) = hash_file(path)?;
    Ok(CorpusStats {
        num_docs,
        bytes,
        sha256,
    })
}

/// Size and sha256 of a file's bytes.
fn hash_file(path: &Path) -> Result<(u64, String)> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((bytes, hex(&hasher.finalize())))
}

/// A corpus file proper (JSONL or TSV), strictly.
fn read_corpus_file(
    path: &Path,
    mut each: impl FnMut(Document, usize) -> Result<()>,
) -> Result<CorpusStats> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    let mut buf = Vec::new();
    let mut line_no = 0usize;
    let mut bytes = 0u64;
    let mut jsonl: Option<bool> = None;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut num_docs = 0u64;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf);
        bytes += n as u64;
        line_no += 1;
        let loc = format!("line {line_no}");
        let mut raw: &[u8] = &buf;
        if line_no == 1 && raw.starts_with(b"\xEF\xBB\xBF") {
            raw = &raw[3..];
        }
        let line = std::str::from_utf8(raw).map_err(|e| {
            Error::input(
                path,
                format!("line {line_no}, byte {}", e.valid_up_to() + 1),
                "invalid UTF-8; the corpus must be UTF-8 text",
            )
        })?;
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        let is_jsonl = *jsonl.get_or_insert(line.trim_start().starts_with('{'));
        let doc = if is_jsonl {
            let d: JsonDoc = serde_json::from_str(line).map_err(|e| {
                Error::input(
                    path,
                    format!("line {line_no}, column {}", e.column()),
                    format!(
                        "{e}; expected a JSON object {{\"docid\"|\"_id\"|\"id\", \"title\"?, \"text\"|\"contents\"}}"
                    ),
                )
            })?;
            let docid = d
                .docid
                .or(d.underscore_id)
                .or(d.id)
                .map(Id::into_string)
                .ok_or_else(|| {
                    Error::input(
                        path,
                        &loc,
                        "missing the document id: expected a field `docid`, `_id` or `id`",
                    )
                })?;
            let text = d.text.or(d.contents).ok_or_else(|| {
                Error::input(
                    path,
                    &loc,
                    format!("document {docid} has no text: expected a field `text` or `contents`"),
                )
            })?;
            Document {
                docid,
                title: d.title.filter(|t| !t.trim().is_empty()),
                text,
            }
        } else {
            let Some((id, text)) = line.split_once('\t') else {
                let mut why = "expected a TSV line `docid<TAB>text` (or a JSONL corpus with `docid` and `text`, \
                               or a rank_llm candidates file), found no tab"
                    .to_owned();
                if num_docs == 0 && matches!(detect_format(path), Ok(InputFormat::TrecRun)) {
                    why.push_str(
                        "; this looks like a TREC run, which holds no passage texts: \
                         give the corpus, or a candidates file with the texts",
                    );
                }
                return Err(Error::input(path, &loc, why).into());
            };
            Document {
                docid: id.trim().to_owned(),
                title: None,
                text: text.to_owned(),
            }
        };
        if doc.docid.trim().is_empty() || doc.docid.chars().any(char::is_whitespace) {
            return Err(Error::input(
                path,
                &loc,
                format!(
                    "docid `{}` must be non-empty and contain no whitespace (it is written to TREC runs)",
                    doc.docid
                ),
            )
            .into());
        }
        if doc.text.trim().is_empty() && doc.title.is_none() {
            return Err(Error::input(
                path,
                &loc,
                format!("document {} has an empty text and no title", doc.docid),
            )
            .into());
        }
        if let Some(first) = seen.insert(doc.docid.clone(), line_no) {
            return Err(Error::input(
                path,
                &loc,
                format!(
                    "duplicate docid {}: already defined on line {first}; docids must be unique",
                    doc.docid
                ),
            )
            .into());
        }
        num_docs += 1;
        each(doc, line_no)?;
    }
    if num_docs == 0 {
        return Err(Error::input(
            path,
            "end of file",
            "the corpus holds no documents; expected JSONL {\"docid\", \"text\"} or TSV docid<TAB>text lines \
             (or a rank_llm candidates file)",
        )
        .into());
    }
    Ok(CorpusStats {
        num_docs,
        bytes,
        sha256: hex(&hasher.finalize()),
    })
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
