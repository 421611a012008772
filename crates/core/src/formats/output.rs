//! Result outputs: a TREC run and a rank_llm-style JSONL, written atomically
//! and resumable.
//!
//! # Formats
//!
//! - **TREC run**: `qid Q0 docid rank score tag`, one line per candidate, rank
//!   1-based, score from [`RerankOutcome::rank_scores`]. Scores are printed
//!   in Rust's shortest round-trip form, so distinct values stay distinct as
//!   text and the strictly decreasing order survives trec_eval's re-sort; the
//!   writer checks this and refuses otherwise. A query with no candidates
//!   writes no lines.
//! - **JSONL**: one line per query,
//!   `{"query": {"qid", "text"}, "candidates": [{"docid", "score", "model_score"?,
//!   "original_rank", "first_stage_score", "chunk"?, "doc": {"contents", "title"?}}],
//!   "windows": [{"start", "end", "docids", "scores"}]}`. `score` is the rank
//!   score (as in the TREC run), `model_score` the raw score of the last window
//!   that saw the candidate, `original_rank` the 1-based first-stage rank,
//!   `chunk` the 0-based chunk that stood for a document cut into chunks,
//!   window `start`/`end` 0-based positions. This is also the request JSONL
//!   shape, so a result can be read back as input.
//!
//! # Atomic writing and resume
//!
//! [`AtomicWriter`] writes a temp file in the target's directory and renames
//! it into place on [`AtomicWriter::commit`]; dropped without commit, the temp
//! file is removed and the target is untouched. A signal skips destructors, so
//! open writers' temp files are also listed for [`remove_unfinished_outputs`],
//! which the CLI calls on Ctrl-C or SIGTERM before exiting.
//!
//! A long rerank should survive an interruption, but an atomic output only
//! appears at the end. So [`OutputSink`] writes each output's progress to
//! `<output>.partial`, appending and flushing once per query (no fsync per
//! query: a killed process loses nothing flushed; a power cut may), and on
//! [`OutputSink::finish`] fsyncs it and renames it onto `<output>`. With
//! `resume`, the sink first reads the existing `.partial` files (or, if there
//! is none, a finished `<output>`) and keeps only queries known complete:
//! - JSONL: lines that parse completely; an unparsable *last* line is a
//!   truncated write and is dropped (an unparsable line before it is an error).
//! - TREC: a query's lines carry no end marker, so the last query group of the
//!   file is always treated as incomplete and redone (costs one query);
//!   an unparsable last line is dropped with it.
//! - With both outputs, a query counts as done when it is complete in the
//!   JSONL and in the TREC run (or has no candidates, which the TREC run cannot
//!   show). Each `.partial` is rewritten (atomically) to hold exactly the done
//!   queries, then appended to; [`OutputSink::completed`] lists their qids
//!   for the caller to skip.
//!
//! Durability and exclusion: every rename into place is followed by an fsync
//! of the directory, so a finished output survives a power cut. While a sink
//! is open it holds an exclusive lock on `<output>.lock` (the first output),
//! so a second process writing the same output (two `rerank --resume`) is
//! refused instead of interleaving. With [`OutputConfig::fingerprint`] (what
//! determines the output: model, window, input, ...) the sink keeps it in
//! `<output>.resume.json` while the run is unfinished, and a resume whose
//! fingerprint differs is refused, naming the fields that changed.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tempfile::NamedTempFile;

use super::lines::Lines;
use super::trec::parse_run_line;
use super::Id;
use crate::window::{RerankOutcome, WindowRecord};
use crate::Request;
use crate::{Error, Result};

// ---------------------------------------------------------------------------
// Formatting

/// The TREC lines of one query (empty for a query without candidates).
pub fn format_trec(outcome: &RerankOutcome, tag: &str) -> Result<String> {
    check_token("run tag", tag)?;
    check_token("qid", &outcome.query.qid)?;
    let scores = outcome.rank_scores();
    let mut out = String::with_capacity(outcome.ranked.len() * 48);
    let mut prev: Option<(f64, String)> = None;
    for (i, (c, score)) in outcome.ranked.iter().zip(&scores).enumerate() {
        check_token("docid", &c.candidate.docid)?;
        let text = format!("{score}");
        if !score.is_finite() || prev.as_ref().is_some_and(|(p, _)| *score >= *p) {
            return Err(Error::Invalid(format!(
                "query {}: TREC scores must be finite and strictly decreasing, got {} after {}",
                outcome.query.qid,
                text,
                prev.map(|(_, t)| t).unwrap_or_default()
            )));
        }
        out.push_str(&format!(
            "{} Q0 {} {} {} {}\n",
            outcome.query.qid,
            c.candidate.docid,
            i + 1,
            text,
            tag
        ));
        prev = Some((*score, text));
    }
    Ok(out)
}

fn check_token(what: &str, s: &str) -> Result<()> {
    if s.is_empty() || s.chars().any(char::is_whitespace) {
        return Err(Error::Invalid(format!(
            "{what} `{s}` cannot be written to a TREC run: it must be non-empty and contain no whitespace"
        )));
    }
    Ok(())
}

#[derive(Serialize)]
struct JsonlQuery<'a> {
    text: &'a str,
    qid: &'a str,
}

#[derive(Serialize)]
struct JsonlDoc<'a> {
    contents: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
}

#[derive(Serialize)]
struct JsonlCandidate<'a> {
    docid: &'a str,
    score: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    model_score: Option<f32>,
    original_rank: usize,
    first_stage_score: f64,
    /// 0-based index of the chunk that stood for a chunked document.
    #[serde(skip_serializing_if = "Option::is_none")]
    chunk: Option<usize>,
    doc: JsonlDoc<'a>,
}

#[derive(Serialize)]
struct JsonlLine<'a> {
    query: JsonlQuery<'a>,
    candidates: Vec<JsonlCandidate<'a>>,
    windows: &'a [WindowRecord],
}

/// The JSONL line of one query, with its trailing newline.
pub fn format_jsonl(outcome: &RerankOutcome) -> Result<String> {
    let scores = outcome.rank_scores();
    let line = JsonlLine {
        query: JsonlQuery {
            text: &outcome.query.text,
            qid: &outcome.query.qid,
        },
        candidates: outcome
            .ranked
            .iter()
            .zip(scores)
            .map(|(c, score)| JsonlCandidate {
                docid: &c.candidate.docid,
                score,
                model_score: c.model_score,
                original_rank: c.original_rank + 1,
                first_stage_score: c.candidate.score,
                chunk: c.chunk,
                doc: JsonlDoc {
                    contents: &c.candidate.text,
                    title: c.candidate.title.as_deref(),
                },
            })
            .collect(),
        windows: &outcome.windows,
    };
    json_line(&line, &outcome.query.qid)
}

/// `value` as one JSON line with its trailing newline.
fn json_line(value: &impl Serialize, qid: &str) -> Result<String> {
    let mut s = serde_json::to_string(value)
        .map_err(|e| Error::Invalid(format!("query {qid}: cannot encode JSON: {e}")))?;
    s.push('\n');
    Ok(s)
}

#[derive(Serialize)]
struct RequestCandidate<'a> {
    docid: &'a str,
    score: f64,
    doc: JsonlDoc<'a>,
}

#[derive(Serialize)]
struct RequestLine<'a> {
    query: JsonlQuery<'a>,
    candidates: Vec<RequestCandidate<'a>>,
}

/// One request as a rank_llm request JSONL line (`{"query": {"text", "qid"},
/// "candidates": [{"docid", "score", "doc": {"contents", "title"?}}]}`), with
/// its trailing newline: the shape [`super::open_requests`] reads back.
pub fn format_request_jsonl(request: &Request) -> Result<String> {
    let line = RequestLine {
        query: JsonlQuery {
            text: &request.query.text,
            qid: &request.query.qid,
        },
        candidates: request
            .candidates
            .iter()
            .map(|c| RequestCandidate {
                docid: &c.docid,
                score: c.score,
                doc: JsonlDoc {
                    contents: &c.text,
                    title: c.title.as_deref(),
                },
            })
            .collect(),
    };
    json_line(&line, &request.query.qid)
}

// ---------------------------------------------------------------------------
// AtomicWriter

/// Writes `target` all at once: a temp file in the same directory, renamed
/// into place by [`commit`](Self::commit). Dropped uncommitted, the temp file
/// is deleted and `target` is left as it was; a process stopped by a signal
/// deletes it through [`remove_unfinished_outputs`].
pub struct AtomicWriter {
    target: PathBuf,
    inner: BufWriter<NamedTempFile>,
    _registration: OpenTempFile,
}

/// Temp files of the [`AtomicWriter`]s open in this process. A signal ends a
/// process without running destructors, so the CLI's interrupt handler
/// deletes these by name instead.
static OPEN_TEMP_FILES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn open_temp_files() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    OPEN_TEMP_FILES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A temp file's entry in [`OPEN_TEMP_FILES`], removed when dropped (after a
/// commit's rename, or with the uncommitted writer).
struct OpenTempFile(PathBuf);

impl OpenTempFile {
    fn register(path: &Path) -> Self {
        open_temp_files().push(path.to_path_buf());
        Self(path.to_path_buf())
    }
}

impl Drop for OpenTempFile {
    fn drop(&mut self) {
        let mut open = open_temp_files();
        if let Some(i) = open.iter().position(|p| *p == self.0) {
            open.swap_remove(i);
        }
    }
}

/// Deletes the temp files of every [`AtomicWriter`] still open, so that a
/// process about to exit on a signal leaves neither a partial output nor a
/// temp file behind. Their targets stay as they were; a writer that commits
/// afterwards fails instead of renaming. Returns how many were deleted.
pub fn remove_unfinished_outputs() -> usize {
    let mut open = open_temp_files();
    let removed = open
        .iter()
        .filter(|p| std::fs::remove_file(p).is_ok())
        .count();
    open.clear();
    removed
}

impl AtomicWriter {
    /// Starts writing `target`; creates its directory if needed.
    pub fn create(target: impl AsRef<Path>) -> Result<Self> {
        let target = target.as_ref().to_path_buf();
        let dir = parent_dir(&target);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let prefix = format!(".{name}.");
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(".tmp");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            builder.permissions(std::fs::Permissions::from_mode(0o644));
        }
        let tmp = builder.tempfile_in(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Self {
            target,
            _registration: OpenTempFile::register(tmp.path()),
            inner: BufWriter::with_capacity(1 << 16, tmp),
        })
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Flushes, syncs and renames the temp file onto the target.
    pub fn commit(self) -> Result<()> {
        let Self {
            target,
            inner,
            _registration,
        } = self;
        let tmp = inner
            .into_inner()
            .map_err(|e| Error::io(&target, e.into_error()))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| Error::io(&target, e))?;
        tmp.persist(&target)
            .map_err(|e| Error::io(&target, e.error))?;
        sync_dir(&parent_dir(&target))
    }
}

/// Makes the renames in `dir` durable (unix; elsewhere a no-op).
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

impl Write for AtomicWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the whole of `bytes` to `target` through an [`AtomicWriter`]: the
/// target appears complete or not at all.
pub fn write_atomically(target: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let target = target.as_ref();
    let mut w = AtomicWriter::create(target)?;
    w.write_all(bytes).map_err(|e| Error::io(target, e))?;
    w.commit()
}

/// Formats that patch a header after writing the body (GGUF) seek back.
impl std::io::Seek for AtomicWriter {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

// ---------------------------------------------------------------------------
// Progress scanning

/// Which output a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    Trec,
    Jsonl,
}

/// A complete query record found in a progress file.
struct Record {
    qid: String,
    /// Lines (1-based) the record spans, inclusive.
    lines: (usize, usize),
    /// JSONL only: the query had no candidates.
    empty: bool,
}

#[derive(Deserialize)]
struct DoneLine {
    query: DoneQuery,
    candidates: Vec<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct DoneQuery {
    qid: Id,
}

/// Complete query records of a progress file, in file order (see the module
/// comment for what counts as complete).
fn scan_progress(path: &Path, kind: OutputKind) -> Result<Vec<Record>> {
    let mut lines = Lines::open(path)?;
    let mut records: Vec<Record> = Vec::new();
    // A bad line is only fatal if another line follows it.
    let mut pending_bad: Option<Error> = None;
    loop {
        let line = match lines.next_line() {
            Ok(Some(l)) => l,
            Ok(None) => break,
            Err(e) => {
                // Invalid UTF-8 can come from a write cut in the middle of a
                // character: fatal only if not on the last line.
                if let Some(bad) = pending_bad.take() {
                    return Err(bad);
                }
                pending_bad = Some(e);
                continue;
            }
        };
        if let Some(bad) = pending_bad.take() {
            return Err(bad);
        }
        if line.text.trim().is_empty() {
            continue;
        }
        let no = line.no;
        match kind {
            OutputKind::Jsonl => match serde_json::from_str::<DoneLine>(line.text) {
                Ok(d) if line.terminated => records.push(Record {
                    qid: d.query.qid.0,
                    lines: (no, no),
                    empty: d.candidates.is_empty(),
                }),
                // A complete object without its newline is still a cut write.
                Ok(_) => {}
                Err(e) => {
                    pending_bad = Some(Error::input(
                        path,
                        format!("line {no}"),
                        format!("not a firstrank JSONL result line ({e}); only the last line may be incomplete"),
                    ))
                }
            },
            OutputKind::Trec => match parse_run_line(line.text) {
                Ok((qid, _)) if line.terminated => match records.last_mut() {
                    Some(r) if r.qid == qid && r.lines.1 + 1 == no => r.lines.1 = no,
                    _ => records.push(Record {
                        qid: qid.to_owned(),
                        lines: (no, no),
                        empty: false,
                    }),
                },
                Ok(_) => {}
                Err(msg) => {
                    pending_bad = Some(Error::input(
                        path,
                        format!("line {no}"),
                        format!("{msg}; only the last line may be incomplete"),
                    ))
                }
            },
        }
    }
    if kind == OutputKind::Trec {
        // The last group may be missing lines: redo it.
        records.pop();
    }
    Ok(records)
}

/// The qids already complete in a progress file (a `.partial` of an
/// interrupted run, possibly cut mid-line). For a TREC run the last query in
/// the file is never counted (its lines may be incomplete), nor are queries
/// without candidates (they leave no lines).
pub fn completed_qids(path: &Path, kind: OutputKind) -> Result<HashSet<String>> {
    Ok(scan_progress(path, kind)?
        .into_iter()
        .map(|r| r.qid)
        .collect())
}

/// Rewrites `path` keeping only the lines of records whose qid is in `keep`.
fn rewrite_progress(path: &Path, records: &[Record], keep: &HashSet<String>) -> Result<()> {
    let mut wanted_lines = Vec::new();
    for r in records.iter().filter(|r| keep.contains(&r.qid)) {
        wanted_lines.push(r.lines);
    }
    let mut out = AtomicWriter::create(path)?;
    let mut lines = Lines::open(path)?;
    let mut next = wanted_lines.iter().peekable();
    while let Some(&&(from, to)) = next.peek() {
        let Some(line) = lines.next_line()? else {
            break;
        };
        if line.no < from {
            continue;
        }
        out.write_all(line.text.as_bytes())
            .and_then(|()| out.write_all(b"\n"))
            .map_err(|e| Error::io(path, e))?;
        if line.no == to {
            next.next();
        }
    }
    out.commit()
}

// ---------------------------------------------------------------------------
// OutputSink

/// What [`OutputSink`] writes.
#[derive(Debug, Clone, Default)]
pub struct OutputConfig {
    /// TREC run path, if any.
    pub trec: Option<PathBuf>,
    /// JSONL result path, if any.
    pub jsonl: Option<PathBuf>,
    /// The run tag (TREC column 6); no whitespace.
    pub tag: String,
    /// Continue from existing `.partial` files (or finished outputs).
    pub resume: bool,
    /// What determines the output (a JSON object of named settings): kept
    /// beside the unfinished run and compared on resume. None: no check.
    pub fingerprint: Option<serde_json::Value>,
}

struct Target {
    kind: OutputKind,
    target: PathBuf,
    partial: PathBuf,
    file: BufWriter<File>,
}

/// Writes TREC and/or JSONL results query by query into `<output>.partial`
/// files and moves them into place on [`finish`](Self::finish). See the
/// module comment for the resume rules.
pub struct OutputSink {
    targets: Vec<Target>,
    tag: String,
    completed: HashSet<String>,
    /// `<output>.lock`, locked while the sink lives; removed by `finish`.
    lock: (PathBuf, File),
    /// `<output>.resume.json`, if a fingerprint was given.
    fingerprint_file: Option<PathBuf>,
}

/// `<path><suffix>`.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Takes the exclusive lock of an output, or says who holds it.
fn lock_output(target: &Path) -> Result<(PathBuf, File)> {
    let path = with_suffix(target, ".lock");
    let dir = parent_dir(target);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok((path, file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Invalid(format!(
            "{} is being written by another process (its lock {} is held); wait for it to finish \
             or stop it before resuming",
            target.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
    }
}

/// Refuses a resume whose fingerprint differs from the unfinished run's.
fn check_fingerprint(file: &Path, now: &serde_json::Value) -> Result<()> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(file, e)),
    };
    let before: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        Error::input(
            file,
            format!("line {}", e.line()),
            format!("not the JSON firstrank wrote: {e}"),
        )
    })?;
    if &before == now {
        return Ok(());
    }
    let empty = serde_json::Map::new();
    let (b, n) = (
        before.as_object().unwrap_or(&empty),
        now.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = b.keys().chain(n.keys()).collect();
    keys.sort();
    keys.dedup();
    let changed: Vec<String> = keys
        .into_iter()
        .filter(|k| b.get(*k) != n.get(*k))
        .map(|k| {
            let show =
                |v: Option<&serde_json::Value>| v.map_or("(none)".to_string(), |v| v.to_string());
            format!("{k}: {} then, {} now", show(b.get(k)), show(n.get(k)))
        })
        .collect();
    Err(Error::Invalid(format!(
        "cannot resume: the unfinished run was made with other settings ({}; recorded in {}). \
         Rerun without --resume to start over",
        changed.join("; "),
        file.display()
    )))
}

/// `<path>.partial`.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

impl OutputSink {
    pub fn create(config: OutputConfig) -> Result<Self> {
        if config.trec.is_some() {
            check_token("run tag", &config.tag)?;
        }
        let mut outputs: Vec<(OutputKind, PathBuf)> = Vec::new();
        if let Some(p) = &config.trec {
            outputs.push((OutputKind::Trec, p.clone()));
        }
        if let Some(p) = &config.jsonl {
            outputs.push((OutputKind::Jsonl, p.clone()));
        }
        if outputs.is_empty() {
            return Err(Error::Invalid(
                "no output given: need a TREC run path, a JSONL path or both".into(),
            ));
        }
        if outputs.len() == 2 && outputs[0].1 == outputs[1].1 {
            return Err(Error::Invalid(format!(
                "the TREC and JSONL outputs are the same file {}",
                outputs[0].1.display()
            )));
        }

        let lock = lock_output(&outputs[0].1)?;
        let fingerprint_file = config
            .fingerprint
            .as_ref()
            .map(|_| with_suffix(&outputs[0].1, ".resume.json"));
        if let (Some(file), Some(now), true) =
            (&fingerprint_file, &config.fingerprint, config.resume)
        {
            check_fingerprint(file, now)?;
        }
        let mut completed = HashSet::new();
        if config.resume {
            // Scan what exists; a missing progress file means nothing done.
            let mut scans: Vec<(OutputKind, PathBuf, Vec<Record>)> = Vec::new();
            for (kind, target) in &outputs {
                let partial = partial_path(target);
                if !partial.exists() && target.exists() {
                    tracing::info!(
                        "resume: no {} but {} exists; continuing from it",
                        partial.display(),
                        target.display()
                    );
                    std::fs::copy(target, &partial).map_err(|e| Error::io(&partial, e))?;
                }
                let records = if partial.exists() {
                    scan_progress(&partial, *kind)?
                } else {
                    Vec::new()
                };
                scans.push((*kind, partial, records));
            }
            completed = done_qids(&scans);
            for (_, partial, records) in &scans {
                if partial.exists() {
                    rewrite_progress(partial, records, &completed)?;
                }
            }
            tracing::info!("resume: {} queries already complete", completed.len());
        }

        let mut targets = Vec::new();
        for (kind, target) in outputs {
            let partial = partial_path(&target);
            let dir = parent_dir(&target);
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            if !config.resume && partial.exists() {
                tracing::warn!(
                    "overwriting {} from an earlier run (pass --resume to continue it)",
                    partial.display()
                );
            }
            let file = OpenOptions::new()
                .create(true)
                .write(true)
                .append(config.resume)
                .truncate(!config.resume)
                .open(&partial)
                .map_err(|e| Error::io(&partial, e))?;
            targets.push(Target {
                kind,
                target,
                partial,
                file: BufWriter::with_capacity(1 << 16, file),
            });
        }
        if let (Some(file), Some(now)) = (&fingerprint_file, &config.fingerprint) {
            let text = serde_json::to_string_pretty(now)
                .map_err(|e| Error::Invalid(format!("the run's fingerprint: {e}")))?;
            write_atomically(file, format!("{text}\n").as_bytes())?;
        }
        Ok(Self {
            targets,
            tag: config.tag,
            completed,
            lock,
            fingerprint_file,
        })
    }

    /// qids already complete (only with `resume`): skip these.
    pub fn completed(&self) -> &HashSet<String> {
        &self.completed
    }

    /// Appends one query to every output and flushes.
    pub fn write(&mut self, outcome: &RerankOutcome) -> Result<()> {
        // Format everything first so that an invalid outcome writes nothing.
        let mut texts = Vec::with_capacity(self.targets.len());
        for t in &self.targets {
            texts.push(match t.kind {
                OutputKind::Trec => format_trec(outcome, &self.tag)?,
                OutputKind::Jsonl => format_jsonl(outcome)?,
            });
        }
        for (t, text) in self.targets.iter_mut().zip(texts) {
            t.file
                .write_all(text.as_bytes())
                .and_then(|()| t.file.flush())
                .map_err(|e| Error::io(&t.partial, e))?;
        }
        Ok(())
    }

    /// Syncs every `.partial`, renames it onto its output and syncs the
    /// directory; then drops the run's fingerprint and lock files.
    pub fn finish(self) -> Result<()> {
        let mut dirs = Vec::new();
        for t in self.targets {
            let file = t
                .file
                .into_inner()
                .map_err(|e| Error::io(&t.partial, e.into_error()))?;
            file.sync_all().map_err(|e| Error::io(&t.partial, e))?;
            drop(file);
            std::fs::rename(&t.partial, &t.target).map_err(|e| Error::io(&t.target, e))?;
            let dir = parent_dir(&t.target);
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        for dir in &dirs {
            sync_dir(dir)?;
        }
        if let Some(f) = &self.fingerprint_file {
            std::fs::remove_file(f)
                .or_else(not_found_ok)
                .map_err(|e| Error::io(f, e))?;
        }
        // Removed while still locked; a process that opened it just before
        // could still lock the unlinked file, which takes three runs of one
        // output at once.
        let (lock_path, lock_file) = self.lock;
        std::fs::remove_file(&lock_path)
            .or_else(not_found_ok)
            .map_err(|e| Error::io(&lock_path, e))?;
        drop(lock_file);
        Ok(())
    }
}

fn not_found_ok(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// Queries done in every scanned output (see the module comment).
fn done_qids(scans: &[(OutputKind, PathBuf, Vec<Record>)]) -> HashSet<String> {
    let mut done: Option<HashSet<String>> = None;
    // Queries with no candidates, known from a JSONL: the TREC run cannot show them.
    let empties: HashSet<&str> = scans
        .iter()
        .filter(|(k, _, _)| *k == OutputKind::Jsonl)
        .flat_map(|(_, _, rs)| rs.iter().filter(|r| r.empty).map(|r| r.qid.as_str()))
        .collect();
    for (kind, _, records) in scans {
        let mut here: HashSet<String> = records.iter().map(|r| r.qid.clone()).collect();
        if *kind == OutputKind::Trec {
            here.extend(empties.iter().map(|s| s.to_string()));
        }
        done = Some(match done {
            None => here,
            Some(d) => d.intersection(&here).cloned().collect(),
        });
    }
    // With a TREC run alone, an empty query leaves no trace and is simply redone.
    done.unwrap_or_default()
}
