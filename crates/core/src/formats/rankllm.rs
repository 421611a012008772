//! rank_llm's two candidate formats: the retrieve_results JSON array (streamed
//! one record at a time by a sequence visitor on a reader thread) and the
//! request JSONL (streamed line by line).

use std::cell::Cell;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use super::lines::Lines;
use super::{finish_request, split_json_error, Id, RequestIter};
use crate::{Candidate, Error, Query, Request, Result};

// ---------------------------------------------------------------------------
// retrieve_results JSON

/// One record of the array. Every field is optional here so that a missing
/// one is reported with its path rather than as a bare serde message.
#[derive(Deserialize)]
struct RawRecord {
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    qid: Option<Id>,
    #[serde(default)]
    hits: Option<Vec<RawHit>>,
}

#[derive(Deserialize)]
struct RawHit {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    qid: Option<Id>,
    #[serde(default)]
    docid: Option<Id>,
    #[serde(default)]
    rank: Option<f64>,
    #[serde(default)]
    score: Option<f64>,
}

fn missing(path: &Path, location: String, field: &str) -> Error {
    Error::input(path, location, format!("missing field `{field}`"))
}

/// Converts one record; `Ok(None)` for a record that is skipped (no hits and no qid).
fn convert_record(path: &Path, index: usize, raw: RawRecord) -> Result<Option<Request>> {
    let loc = |suffix: &str| {
        if suffix.is_empty() {
            format!("record {index}")
        } else {
            format!("record {index}, {suffix}")
        }
    };
    let text = raw.query.ok_or_else(|| missing(path, loc(""), "query"))?;
    let hits = raw.hits.ok_or_else(|| missing(path, loc(""), "hits"))?;
    let mut qid: Option<(String, String)> = raw.qid.map(|q| (q.0, "qid".to_owned()));
    let mut candidates = Vec::with_capacity(hits.len());
    let mut prev_rank: Option<f64> = None;
    let mut rank_warned = false;
    for (i, hit) in hits.into_iter().enumerate() {
        let here = format!("hits[{i}]");
        let hit_qid = hit.qid.ok_or_else(|| missing(path, loc(&here), "qid"))?;
        match &qid {
            None => qid = Some((hit_qid.0, format!("{here}.qid"))),
            Some((q, from)) if *q != hit_qid.0 => {
                return Err(Error::input(
                    path,
                    loc(&here),
                    format!(
                        "qid `{}` differs from `{q}` given by {from}; all hits of a record must belong to one query",
                        hit_qid.0
                    ),
                ))
            }
            Some(_) => {}
        }
        let docid = hit
            .docid
            .ok_or_else(|| missing(path, loc(&here), "docid"))?;
        let content = hit
            .content
            .ok_or_else(|| missing(path, loc(&here), "content"))?;
        let score = hit
            .score
            .ok_or_else(|| missing(path, loc(&here), "score"))?;
        if let (Some(prev), Some(rank)) = (prev_rank, hit.rank) {
            if rank <= prev && !rank_warned {
                rank_warned = true;
                tracing::warn!(
                    file = %path.display(),
                    "record {index}, {here}: rank {rank} does not increase (previous {prev}); keeping file order"
                );
            }
        }
        if hit.rank.is_some() {
            prev_rank = hit.rank;
        }
        candidates.push(Candidate {
            docid: docid.0,
            score,
            title: hit.title,
            text: content,
        });
    }
    let Some((qid, _)) = qid else {
        tracing::warn!(
            file = %path.display(),
            "record {index} (query {text:?}) has no hits and no record-level `qid`; skipping it"
        );
        return Ok(None);
    };
    Ok(Some(finish_request(
        Query {
            qid,
            text,
            instruction: None,
        },
        candidates,
        path,
    )))
}

struct RecordsVisitor<'a> {
    path: &'a Path,
    tx: &'a SyncSender<Result<Request>>,
    /// 1-based index of the record being read (for error locations).
    record: &'a Cell<usize>,
    /// Set when the visitor stopped on purpose (receiver gone, or an error
    /// already sent); the serde error it returns then is not reported.
    stopped: &'a Cell<bool>,
}

impl<'de> Visitor<'de> for RecordsVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array of retrieve_results records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        loop {
            self.record.set(self.record.get() + 1);
            let Some(raw) = seq.next_element::<RawRecord>()? else {
                return Ok(());
            };
            let item = match convert_record(self.path, self.record.get(), raw) {
                Ok(None) => continue,
                Ok(Some(req)) => Ok(req),
                Err(e) => Err(e),
            };
            let is_err = item.is_err();
            if self.tx.send(item).is_err() || is_err {
                self.stopped.set(true);
                return Err(de::Error::custom("stopped"));
            }
        }
    }
}

fn json_error(path: &Path, record: usize, e: serde_json::Error) -> Error {
    if e.is_io() {
        return Error::io(path, e.into());
    }
    let (pos, msg) = split_json_error(&e);
    let location = match pos {
        Some((line, col)) => format!("record {record}, line {line}, column {col}"),
        None => format!("record {record}"),
    };
    Error::input(path, location, msg)
}

fn read_retrieve_results(path: &Path, tx: SyncSender<Result<Request>>) {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => {
            let _ = tx.send(Err(Error::io(path, e)));
            return;
        }
    };
    let mut reader = BufReader::with_capacity(1 << 16, file);
    // Skip a UTF-8 byte order mark.
    if let Ok(buf) = reader.fill_buf() {
        if buf.starts_with(b"\xEF\xBB\xBF") {
            reader.consume(3);
        }
    }
    let record = Cell::new(0);
    let stopped = Cell::new(false);
    let mut de = serde_json::Deserializer::from_reader(reader);
    let visitor = RecordsVisitor {
        path,
        tx: &tx,
        record: &record,
        stopped: &stopped,
    };
    let result = de.deserialize_seq(visitor).and_then(|()| de.end());
    if let Err(e) = result {
        if !stopped.get() {
            let _ = tx.send(Err(json_error(path, record.get().max(1), e)));
        }
    }
}

/// Streams a retrieve_results JSON array: a reader thread parses one record at
/// a time and hands it over a bounded channel.
pub(crate) fn open_retrieve_results(path: &Path) -> Result<RequestIter> {
    // Open once here so a missing file fails at open time, not at first read.
    File::open(path).map_err(|e| Error::io(path, e))?;
    let (tx, rx) = sync_channel::<Result<Request>>(4);
    let owned: PathBuf = path.to_path_buf();
    std::thread::Builder::new()
        .name("firstrank-json-input".into())
        .spawn(move || read_retrieve_results(&owned, tx))
        .map_err(|e| Error::io(path, e))?;
    Ok(Box::new(rx.into_iter()))
}

// ---------------------------------------------------------------------------
// request JSONL

#[derive(Deserialize)]
struct RawRequest {
    #[serde(default)]
    query: Option<RawQuery>,
    #[serde(default)]
    candidates: Option<Vec<RawCandidate>>,
}

#[derive(Deserialize)]
struct RawQuery {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    qid: Option<Id>,
}

#[derive(Deserialize)]
struct RawCandidate {
    #[serde(default)]
    docid: Option<Id>,
    #[serde(default)]
    score: Option<f64>,
    #[serde(default)]
    doc: Option<RawDoc>,
}

#[derive(Deserialize)]
struct RawDoc {
    #[serde(default)]
    contents: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    segment: Option<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    passage: Option<String>,
    #[serde(default)]
    title: Option<String>,
}

/// Text fields of `doc`, in order of preference.
pub(crate) const DOC_TEXT_FIELDS: &str = "`contents`, `text`, `segment`, `body` or `passage`";

fn convert_request(path: &Path, line: usize, raw: RawRequest) -> Result<Request> {
    let loc = |suffix: &str| {
        if suffix.is_empty() {
            format!("line {line}")
        } else {
            format!("line {line}, {suffix}")
        }
    };
    let query = raw.query.ok_or_else(|| missing(path, loc(""), "query"))?;
    let text = query
        .text
        .ok_or_else(|| missing(path, loc("query"), "text"))?;
    let qid = query
        .qid
        .ok_or_else(|| missing(path, loc("query"), "qid"))?
        .0;
    let raw_candidates = raw
        .candidates
        .ok_or_else(|| missing(path, loc(""), "candidates"))?;
    let mut candidates = Vec::with_capacity(raw_candidates.len());
    for (i, c) in raw_candidates.into_iter().enumerate() {
        let here = format!("candidates[{i}]");
        let docid = c.docid.ok_or_else(|| missing(path, loc(&here), "docid"))?.0;
        let score = c.score.ok_or_else(|| missing(path, loc(&here), "score"))?;
        let doc = c.doc.ok_or_else(|| missing(path, loc(&here), "doc"))?;
        let body = doc
            .contents
            .or(doc.text)
            .or(doc.segment)
            .or(doc.body)
            .or(doc.passage)
            .ok_or_else(|| {
                Error::input(
                    path,
                    loc(&format!("{here}.doc")),
                    format!("missing the passage text: expected a field {DOC_TEXT_FIELDS}"),
                )
            })?;
        candidates.push(Candidate {
            docid,
            score,
            title: doc.title,
            text: body,
        });
    }
    Ok(finish_request(
        Query {
            qid,
            text,
            instruction: None,
        },
        candidates,
        path,
    ))
}

struct JsonlRequests {
    path: PathBuf,
    lines: Lines,
    done: bool,
}

impl JsonlRequests {
    fn next_request(&mut self) -> Result<Option<Request>> {
        loop {
            let Some(line) = self.lines.next_line()? else {
                return Ok(None);
            };
            if line.text.trim().is_empty() {
                continue;
            }
            let no = line.no;
            let raw: RawRequest = serde_json::from_str(line.text).map_err(|e| {
                let (pos, msg) = split_json_error(&e);
                let location = match pos {
                    Some((_, col)) => format!("line {no}, column {col}"),
                    None => format!("line {no}"),
                };
                Error::input(&self.path, location, msg)
            })?;
            return convert_request(&self.path, no, raw).map(Some);
        }
    }
}

impl Iterator for JsonlRequests {
    type Item = Result<Request>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_request() {
            Ok(Some(r)) => Some(Ok(r)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Streams a request JSONL file line by line.
pub(crate) fn open_request_jsonl(path: &Path) -> Result<RequestIter> {
    Ok(Box::new(JsonlRequests {
        path: path.to_path_buf(),
        lines: Lines::open(path)?,
        done: false,
    }))
}
