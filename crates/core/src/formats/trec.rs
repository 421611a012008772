//! TREC runs, topics and corpora: the third input shape, where a run lists the
//! candidates and the texts come from a topics TSV and a corpus.
//!
//! Ordering: within a query, run entries are sorted by score descending, ties
//! by the rank column ascending, remaining ties in file order. trec_eval also
//! sorts by score but breaks ties by docid; the rank column is used here
//! because it is what the run's author meant. Like trec_eval, the rank column
//! need not be a number: a rank that is not a non-negative integer is kept
//! as none and sorts after the numbered ones. Queries come out in the order
//! of their first appearance in the run.
//!
//! A docid listed twice for one query: as a first stage to rerank
//! ([`read_trec_run`]) it keeps its best-ordered entry (the others are
//! dropped with a warning); as a run to evaluate ([`read_trec_run_strict`])
//! it is an error naming both lines, as trec_eval refuses it. A run qid
//! missing from the topics, or a run docid missing from the corpus, is an
//! error.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use serde::Deserialize;

use super::lines::Lines;
use super::{finish_request, split_json_error, RequestIter};
use crate::{Candidate, Error, Query, Result};

/// One line of a TREC run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEntry {
    pub docid: String,
    /// The run's rank column (usually 1-based); None when it is not a
    /// non-negative integer (trec_eval ignores the column).
    pub rank: Option<u64>,
    pub score: f64,
}

/// What a run line must look like, for error messages.
const RUN_LINE: &str = "6 whitespace-separated columns `qid Q0 docid rank score tag`";

/// Parses one run line into (qid, entry); the error says what was expected.
pub(crate) fn parse_run_line(line: &str) -> std::result::Result<(&str, RunEntry), String> {
    let cols: Vec<&str> = line.split_whitespace().collect();
    if cols.len() != 6 {
        return Err(format!(
            "expected {RUN_LINE}, found {} column(s)",
            cols.len()
        ));
    }
    let rank: Option<u64> = cols[3].parse().ok();
    let score: f64 = cols[4]
        .parse()
        .ok()
        .filter(|s: &f64| s.is_finite())
        .ok_or_else(|| {
            format!(
                "score (column 5) must be a finite number, found `{}`",
                cols[4]
            )
        })?;
    Ok((
        cols[0],
        RunEntry {
            docid: cols[2].to_owned(),
            rank,
            score,
        },
    ))
}

/// One query of a run: its qid, the line it first appears on, its entries.
struct RunQuery {
    qid: String,
    first_line: usize,
    entries: Vec<(RunEntry, usize)>,
}

/// What to do with a docid listed twice for one query.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Duplicates {
    /// Keep the best-ordered entry, warn about the others.
    KeepBest,
    /// Refuse the run (trec_eval's rule for runs it evaluates).
    Refuse,
}

/// Reads a run keeping queries in first-appearance order, entries sorted.
fn read_run_ordered(path: &Path, duplicates: Duplicates) -> Result<Vec<RunQuery>> {
    let mut lines = Lines::open(path)?;
    let mut queries: Vec<RunQuery> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    while let Some(line) = lines.next_line()? {
        if line.text.trim().is_empty() {
            continue;
        }
        let (qid, entry) = parse_run_line(line.text)
            .map_err(|msg| Error::input(path, format!("line {}", line.no), msg))?;
        let i = match index.get(qid) {
            Some(&i) => i,
            None => {
                index.insert(qid.to_owned(), queries.len());
                queries.push(RunQuery {
                    qid: qid.to_owned(),
                    first_line: line.no,
                    entries: Vec::new(),
                });
                queries.len() - 1
            }
        };
        queries[i].entries.push((entry, line.no));
    }
    for q in &mut queries {
        if duplicates == Duplicates::Refuse {
            let mut first: HashMap<&str, usize> = HashMap::with_capacity(q.entries.len());
            for (e, line) in &q.entries {
                if let Some(before) = first.insert(e.docid.as_str(), *line) {
                    return Err(Error::input(
                        path,
                        format!("line {line}"),
                        format!(
                            "docid `{}` is listed again for query `{}` (first at line {before}); \
                             expected each docid once per query (trec_eval refuses such runs too)",
                            e.docid, q.qid
                        ),
                    ));
                }
            }
        }
        // Stable: equal (score, rank) keep file order; unnumbered ranks last.
        q.entries.sort_by(|(a, _), (b, _)| {
            b.score
                .total_cmp(&a.score)
                .then(a.rank.unwrap_or(u64::MAX).cmp(&b.rank.unwrap_or(u64::MAX)))
        });
        let mut seen = HashSet::with_capacity(q.entries.len());
        q.entries.retain(|(e, line)| {
            if seen.insert(e.docid.clone()) {
                true
            } else {
                tracing::warn!(
                    file = %path.display(),
                    "line {line}: duplicate docid {} in query {}: keeping its best-ranked entry, dropping this one",
                    e.docid,
                    q.qid
                );
                false
            }
        });
    }
    Ok(queries)
}

/// Reads a TREC run: per qid, entries sorted by score descending, ties by the
/// rank column (see the module comment). Duplicate docids keep their first
/// entry in that order.
pub fn read_trec_run(path: &Path) -> Result<BTreeMap<String, Vec<RunEntry>>> {
    run_by_qid(read_run_ordered(path, Duplicates::KeepBest)?)
}

/// [`read_trec_run`] for a run to evaluate: a docid listed twice for one
/// query is an error, as in trec_eval.
pub fn read_trec_run_strict(path: &Path) -> Result<BTreeMap<String, Vec<RunEntry>>> {
    run_by_qid(read_run_ordered(path, Duplicates::Refuse)?)
}

fn run_by_qid(queries: Vec<RunQuery>) -> Result<BTreeMap<String, Vec<RunEntry>>> {
    Ok(queries
        .into_iter()
        .map(|q| (q.qid, q.entries.into_iter().map(|(e, _)| e).collect()))
        .collect())
}

/// Reads a topics TSV, `qid<TAB>query` per line (the query is everything after
/// the first tab). A qid repeated later keeps its first text, with a warning.
pub fn read_topics(path: &Path) -> Result<Vec<Query>> {
    let mut lines = Lines::open(path)?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    while let Some(line) = lines.next_line()? {
        if line.text.trim().is_empty() {
            continue;
        }
        let Some((qid, text)) = line.text.split_once('\t') else {
            return Err(Error::input(
                path,
                format!("line {}", line.no),
                "expected `qid<TAB>query`, found no tab",
            ));
        };
        let qid = qid.trim();
        if qid.is_empty() {
            return Err(Error::input(
                path,
                format!("line {}", line.no),
                "empty qid before the tab",
            ));
        }
        if !seen.insert(qid.to_owned()) {
            tracing::warn!(file = %path.display(), "line {}: qid {qid} repeated; keeping its first text", line.no);
            continue;
        }
        out.push(Query {
            qid: qid.to_owned(),
            text: text.trim().to_owned(),
            instruction: None,
        });
    }
    Ok(out)
}

/// A corpus JSONL line; fields borrow from the line where possible so that
/// the many unwanted lines of a large corpus cost no allocation.
#[derive(Deserialize)]
struct CorpusLine<'a> {
    #[serde(default, borrow)]
    docid: Option<CorpusId<'a>>,
    #[serde(default, borrow, rename = "_id")]
    underscore_id: Option<CorpusId<'a>>,
    #[serde(default, borrow)]
    id: Option<CorpusId<'a>>,
    #[serde(default, borrow)]
    title: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    contents: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum CorpusId<'a> {
    Str(#[serde(borrow)] Cow<'a, str>),
    Int(i64),
}

impl CorpusId<'_> {
    fn into_string(self) -> String {
        match self {
            CorpusId::Str(s) => s.into_owned(),
            CorpusId::Int(i) => i.to_string(),
        }
    }
    fn as_str(&self) -> Cow<'_, str> {
        match self {
            CorpusId::Str(s) => Cow::Borrowed(s),
            CorpusId::Int(i) => Cow::Owned(i.to_string()),
        }
    }
}

/// Texts by docid: `(title, text)`.
pub type CorpusSubset = HashMap<String, (Option<String>, String)>;

/// Streams a corpus, keeping only the docids in `wanted`. JSONL
/// (`{"docid"|"_id"|"id", "title"?, "text"|"contents"}`) or TSV
/// (`docid<TAB>text`), told apart by the first non-blank line (`{` or not).
/// A docid listed twice keeps its first entry.
pub fn read_corpus_subset(path: &Path, wanted: &HashSet<String>) -> Result<CorpusSubset> {
    let mut lines = Lines::open(path)?;
    let mut out: CorpusSubset = HashMap::with_capacity(wanted.len());
    let mut jsonl: Option<bool> = None;
    while let Some(line) = lines.next_line()? {
        let text = line.text.trim();
        if text.is_empty() {
            continue;
        }
        let is_jsonl = *jsonl.get_or_insert(text.starts_with('{'));
        let loc = || format!("line {}", line.no);
        if is_jsonl {
            let doc: CorpusLine = serde_json::from_str(text).map_err(|e| {
                let (pos, msg) = split_json_error(&e);
                let location = match pos {
                    Some((_, col)) => format!("line {}, column {col}", line.no),
                    None => loc(),
                };
                Error::input(path, location, msg)
            })?;
            let id = doc.docid.or(doc.underscore_id).or(doc.id).ok_or_else(|| {
                Error::input(
                    path,
                    loc(),
                    "missing the document id: expected a field `docid`, `_id` or `id`",
                )
            })?;
            if !wanted.contains(id.as_str().as_ref()) || out.contains_key(id.as_str().as_ref()) {
                continue;
            }
            let body = doc.text.or(doc.contents).ok_or_else(|| {
                Error::input(
                    path,
                    loc(),
                    "missing the passage text: expected a field `text` or `contents`",
                )
            })?;
            out.insert(
                id.into_string(),
                (doc.title.map(Cow::into_owned), body.into_owned()),
            );
        } else {
            let Some((id, body)) = text.split_once('\t') else {
                return Err(Error::input(
                    path,
                    loc(),
                    "expected a TSV line `docid<TAB>text` (or a JSONL corpus with `docid` and `text`), found no tab",
                ));
            };
            let id = id.trim();
            if wanted.contains(id) && !out.contains_key(id) {
                out.insert(id.to_owned(), (None, body.to_owned()));
            }
        }
    }
    Ok(out)
}

/// Builds the requests of a run from its topics and corpus.
pub(crate) fn open_run_with_texts(
    run: &Path,
    topics_path: &Path,
    corpus_path: &Path,
) -> Result<RequestIter> {
    let queries = read_run_ordered(run, Duplicates::KeepBest)?;
    let topics: HashMap<String, String> = read_topics(topics_path)?
        .into_iter()
        .map(|q| (q.qid, q.text))
        .collect();
    for q in &queries {
        if !topics.contains_key(&q.qid) {
            return Err(Error::input(
                run,
                format!("line {}", q.first_line),
                format!(
                    "qid {} is not in the topics file {}",
                    q.qid,
                    topics_path.display()
                ),
            ));
        }
    }
    let wanted: HashSet<String> = queries
        .iter()
        .flat_map(|q| q.entries.iter().map(|(e, _)| e.docid.clone()))
        .collect();
    let corpus = read_corpus_subset(corpus_path, &wanted)?;
    let mut requests = Vec::with_capacity(queries.len());
    for q in queries {
        let mut candidates = Vec::with_capacity(q.entries.len());
        for (e, line) in q.entries {
            let Some((title, text)) = corpus.get(&e.docid) else {
                return Err(Error::input(
                    run,
                    format!("line {line}"),
                    format!(
                        "qid {} docid {} is not in the corpus {}",
                        q.qid,
                        e.docid,
                        corpus_path.display()
                    ),
                ));
            };
            candidates.push(Candidate {
                docid: e.docid,
                score: e.score,
                title: title.clone(),
                text: text.clone(),
            });
        }
        let text = topics[&q.qid].clone();
        requests.push(finish_request(
            Query {
                qid: q.qid,
                text,
                instruction: None,
            },
            candidates,
            run,
        ));
    }
    Ok(Box::new(requests.into_iter().map(Ok)))
}
