//! The index directory: building it from a corpus and opening it again.
//!
//! Layout (`manifest.json` is written last, so a directory without it is an
//! interrupted build):
//! ```text
//! <dir>/manifest.json   format, version, corpus (path, bytes, sha256, num_docs), bm25?, dense?
//! <dir>/docs.jsonl      the documents, ordinal order        (docstore)
//! <dir>/docs.offsets    N+1 u64 LE offsets into docs.jsonl
//! <dir>/bm25/           tantivy index                        (if bm25)
//! <dir>/dense.json      {version, model, dim, count, normalized}  (if dense)
//! <dir>/dense.f32       N × dim f32 LE rows
//! ```
//! Opening checks the format name and version, that every index the
//! manifest lists is there, and that each holds `num_docs` documents; any
//! mismatch is an error that names the file and says to rebuild.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use firstrank_models::embed::SentenceEncoder;
use serde::{Deserialize, Serialize};

use crate::analyzer::ANALYZER_DESCRIPTION;
use crate::bm25::{Bm25Params, Bm25Writer};
use crate::corpus::{read_corpus, CorpusStats};
use crate::dense::{DenseHeader, DenseWriter};
use crate::docstore::{DocStore, DocStoreWriter};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const FORMAT_NAME: &str = "firstrank-index";
pub const INDEX_VERSION: u32 = 1;
pub const BM25_DIR: &str = "bm25";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorpusInfo {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
    pub num_docs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bm25Info {
    pub k1: f32,
    pub b: f32,
    pub analyzer: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DenseInfo {
    pub model: String,
    pub dim: usize,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub created_by: String,
    pub corpus: CorpusInfo,
    pub bm25: Option<Bm25Info>,
    pub dense: Option<DenseInfo>,
}

impl Manifest {
    /// Reads and validates `<dir>/manifest.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let p = dir.join(MANIFEST_FILE);
        if !p.exists() {
            if dir.is_dir() && std::fs::read_dir(dir)?.next().is_some() {
                bail!(
                    "{}: missing; {} holds an incomplete index (was indexing interrupted?); rebuild it",
                    p.display(),
                    dir.display()
                );
            }
            bail!(
                "{}: no index here (missing {MANIFEST_FILE}); build one with `firstrank index`",
                dir.display()
            );
        }
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let probe: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}: line {}, column {}: corrupted manifest ({e}); rebuild the index",
                p.display(),
                e.line(),
                e.column()
            )
        })?;
        let format = probe.get("format").and_then(|v| v.as_str());
        ensure!(
            format == Some(FORMAT_NAME),
            "{}: field `format` is {:?}, expected \"{FORMAT_NAME}\"; this is not a firstrank index",
            p.display(),
            probe.get("format")
        );
        let version = probe.get("version").and_then(|v| v.as_u64());
        ensure!(
            version == Some(INDEX_VERSION as u64),
            "{}: index format version {}, this firstrank reads version {INDEX_VERSION}; rebuild the index",
            p.display(),
            probe.get("version").map(|v| v.to_string()).unwrap_or_else(|| "missing".into())
        );
        serde_json::from_value(probe).map_err(|e| {
            anyhow::anyhow!(
                "{}: corrupted manifest ({e}); rebuild the index",
                p.display()
            )
        })
    }

    /// Writes `<dir>/manifest.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let mut json = serde_json::to_vec_pretty(self)?;
        json.push(b'\n');
        firstrank_core::formats::write_atomically(dir.join(MANIFEST_FILE), &json)?;
        Ok(())
    }
}

/// An indexing stage, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading the corpus, storing documents and feeding the BM25 writer.
    Reading,
    /// Committing and merging the BM25 index.
    Bm25Commit,
    /// Embedding the documents.
    Dense,
}

/// A progress report: `done` of `total` documents in `stage` after `elapsed`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub stage: Stage,
    pub done: u64,
    /// Unknown while reading the corpus (it is streamed).
    pub total: Option<u64>,
    pub elapsed: Duration,
    /// Whether the stage is complete.
    pub finished: bool,
}

impl Progress {
    pub fn docs_per_sec(&self) -> f64 {
        self.done as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The dense part of an index build.
pub struct DenseOptions<'a> {
    pub encoder: &'a SentenceEncoder,
    /// Name recorded in the manifest and checked at query time (e.g. `all-MiniLM-L6-v2`).
    pub model_name: String,
    /// Documents per `encode` call (default 256; batches inside it are the encoder's).
    pub chunk: usize,
}

/// What to build.
pub struct IndexOptions<'a> {
    pub bm25: Option<Bm25Params>,
    pub dense: Option<DenseOptions<'a>>,
}

impl Default for IndexOptions<'_> {
    fn default() -> Self {
        IndexOptions {
            bm25: Some(Bm25Params::default()),
            dense: None,
        }
    }
}

/// Builds an index of `corpus` in `dir`, which must not exist or be empty.
/// On failure the half-built directory is removed. `progress` is called every
/// few thousand documents and at the end of each stage.
pub fn build_index(
    corpus: &Path,
    dir: &Path,
    options: &IndexOptions<'_>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Manifest> {
    ensure!(
        options.bm25.is_some() || options.dense.is_some(),
        "nothing to build: ask for a BM25 index, a dense index or both"
    );
    if dir.exists() {
        ensure!(
            dir.is_dir() && std::fs::read_dir(dir)?.next().is_none(),
            "{}: already exists and is not an empty directory; choose a new index directory or remove it",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = build_into(corpus, dir, options, progress);
    if result.is_err() {
        // Only files this build created are in there (the directory was empty).
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

fn build_into(
    corpus: &Path,
    dir: &Path,
    options: &IndexOptions<'_>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Manifest> {
    let start = Instant::now();
    let mut store = DocStoreWriter::create(dir)?;
    let mut bm25 = match options.bm25 {
        Some(_) => {
            let d = dir.join(BM25_DIR);
            std::fs::create_dir(&d)?;
            Some(Bm25Writer::create(&d)?)
        }
        None => None,
    };
    let mut done = 0u64;
    let stats: CorpusStats = read_corpus(corpus, |doc, _line| {
        let ord = store.add(&doc)?;
        if let Some(w) = bm25.as_mut() {
            w.add(ord, &doc.indexed_text())?;
        }
        done += 1;
        if done.is_multiple_of(10_000) {
            progress(Progress {
                stage: Stage::Reading,
                done,
                total: None,
                elapsed: start.elapsed(),
                finished: false,
            });
        }
        Ok(())
    })?;
    store.finish()?;
    let read = Progress {
        stage: Stage::Reading,
        done,
        total: Some(done),
        elapsed: start.elapsed(),
        finished: true,
    };
    progress(read);
    tracing::info!(
        "read {done} documents in {:.1}s ({:.0} docs/s)",
        read.elapsed.as_secs_f64(),
        read.docs_per_sec()
    );
    if let Some(w) = bm25 {
        let t = Instant::now();
        w.finish()?;
        let p = Progress {
            stage: Stage::Bm25Commit,
            done,
            total: Some(done),
            elapsed: start.elapsed(),
            finished: true,
        };
        progress(p);
        tracing::info!(
            "BM25 index committed in {:.1}s ({:.0} docs/s overall)",
            t.elapsed().as_secs_f64(),
            p.docs_per_sec()
        );
    }
    let mut manifest = Manifest {
        format: FORMAT_NAME.into(),
        version: INDEX_VERSION,
        created_by: concat!("firstrank-retrieval ", env!("CARGO_PKG_VERSION")).into(),
        corpus: CorpusInfo {
            path: std::fs::canonicalize(corpus).unwrap_or_else(|_| corpus.to_path_buf()),
            bytes: stats.bytes,
            sha256: stats.sha256,
            num_docs: stats.num_docs,
        },
        bm25: options.bm25.map(|p| Bm25Info {
            k1: p.k1,
            b: p.b,
            analyzer: ANALYZER_DESCRIPTION.into(),
        }),
        dense: None,
    };
    if let Some(d) = &options.dense {
        let header = embed_store(dir, stats.num_docs, d, progress)?;
        manifest.dense = Some(DenseInfo {
            model: header.model,
            dim: header.dim,
        });
    }
    manifest.write(dir)?;
    Ok(manifest)
}

/// Adds (or replaces) the dense index of an existing index directory.
pub fn add_dense_index(
    dir: &Path,
    options: &DenseOptions<'_>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Manifest> {
    let mut manifest = Manifest::read(dir)?;
    // Drop the old dense entry first, so that an interrupted rebuild does not
    // leave a manifest pointing at a half-written matrix.
    if manifest.dense.take().is_some() {
        manifest.write(dir)?;
    }
    let header = embed_store(dir, manifest.corpus.num_docs, options, progress)?;
    manifest.dense = Some(DenseInfo {
        model: header.model,
        dim: header.dim,
    });
    manifest.write(dir)?;
    Ok(manifest)
}

fn embed_store(
    dir: &Path,
    num_docs: u64,
    options: &DenseOptions<'_>,
    progress: &mut dyn FnMut(Progress),
) -> Result<DenseHeader> {
    let start = Instant::now();
    let store = DocStore::open(dir, num_docs)?;
    let mut writer = DenseWriter::create(dir, &options.model_name, options.encoder.dim())?;
    let chunk = options.chunk.max(1);
    let mut texts: Vec<String> = Vec::with_capacity(chunk);
    let mut done = 0u64;
    let mut flush = |texts: &mut Vec<String>, done: &mut u64| -> Result<()> {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        for row in options.encoder.encode(&refs)? {
            writer.add(&row)?;
        }
        *done += texts.len() as u64;
        texts.clear();
        progress(Progress {
            stage: Stage::Dense,
            done: *done,
            total: Some(num_docs),
            elapsed: start.elapsed(),
            finished: *done == num_docs,
        });
        Ok(())
    };
    for doc in store.iter()? {
        texts.push(doc?.indexed_text());
        if texts.len() == chunk {
            flush(&mut texts, &mut done)?;
        }
    }
    if !texts.is_empty() {
        flush(&mut texts, &mut done)?;
    }
    ensure!(
        done == num_docs,
        "{}: holds {done} documents, the manifest says {num_docs}; rebuild the index",
        dir.join(crate::docstore::DOCS_FILE).display()
    );
    let header = writer.finish()?;
    let secs = start.elapsed().as_secs_f64();
    tracing::info!(
        "embedded {done} documents in {secs:.1}s ({:.1} docs/s)",
        done as f64 / secs.max(1e-9)
    );
    Ok(header)
}
