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

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::Result;
use firstrank_core::Error;
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

/// Streams every document of `path` to `each` (with its 1-based line), in
/// file order. Stops at the first error, from the corpus or from `each`.
pub fn read_corpus(
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
                return Err(Error::input(
                    path,
                    &loc,
                    "expected a TSV line `docid<TAB>text` (or a JSONL corpus with `docid` and `text`), found no tab",
                )
                .into());
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
            "the corpus holds no documents; expected JSONL {\"docid\", \"text\"} or TSV docid<TAB>text lines",
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
