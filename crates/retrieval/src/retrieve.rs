//! Querying an index: BM25, dense, or their reciprocal-rank fusion, returning
//! `firstrank_core::Request`s (query + candidates with texts, best first) that
//! the reranker consumes as they are; plus writers for request JSONL and TREC
//! runs.
//!
//! Hybrid: reciprocal-rank fusion (Cormack et al. 2009),
//! `score(d) = Σ_runs 1 / (rrf_k + rank_run(d))` with 1-based ranks and
//! `rrf_k` = 60, over the top `fusion_depth` (default 1000) of each run, as
//! Pyserini's `fusion` does. Ties go to the lower corpus ordinal.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use firstrank_core::formats::format_request_jsonl;
use firstrank_core::{Query, Request};
use firstrank_models::embed::SentenceEncoder;

use crate::bm25::{Bm25Index, Bm25Params, Hit};
use crate::dense::DenseIndex;
use crate::docstore::DocStore;
use crate::index::{Manifest, BM25_DIR};

/// The first-stage method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Bm25,
    Dense,
    /// Reciprocal-rank fusion of BM25 and dense.
    Hybrid,
}

impl std::str::FromStr for Method {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "bm25" => Ok(Method::Bm25),
            "dense" => Ok(Method::Dense),
            "hybrid" => Ok(Method::Hybrid),
            other => bail!("unknown retrieval method `{other}`; expected bm25, dense or hybrid"),
        }
    }
}

/// How to retrieve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetrieveOptions {
    pub method: Method,
    /// Candidates per query.
    pub k: usize,
    /// RRF constant (60).
    pub rrf_k: f64,
    /// Depth of each run fused by RRF (at least `k` is used).
    pub fusion_depth: usize,
}

impl Default for RetrieveOptions {
    fn default() -> Self {
        RetrieveOptions {
            method: Method::Bm25,
            k: 100,
            rrf_k: 60.0,
            fusion_depth: 1000,
        }
    }
}

/// An opened index directory.
pub struct Retriever {
    dir: PathBuf,
    manifest: Manifest,
    docs: DocStore,
    bm25: Option<Bm25Index>,
    dense: Option<DenseIndex>,
    encoder: Option<SentenceEncoder>,
}

impl std::fmt::Debug for Retriever {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retriever")
            .field("dir", &self.dir)
            .field("manifest", &self.manifest)
            .finish_non_exhaustive()
    }
}

impl Retriever {
    /// Opens `dir` and checks every index the manifest lists (see
    /// [`crate::index`]). Dense search also needs [`with_encoder`](Self::with_encoder).
    pub fn open(dir: &Path) -> Result<Self> {
        let manifest = Manifest::read(dir)?;
        let n = manifest.corpus.num_docs;
        let docs = DocStore::open(dir, n)?;
        let bm25 = match &manifest.bm25 {
            Some(info) => {
                let idx = Bm25Index::open(
                    &dir.join(BM25_DIR),
                    Bm25Params {
                        k1: info.k1,
                        b: info.b,
                    },
                )?;
                ensure!(
                    idx.num_docs() == n,
                    "{}: holds {} documents, the manifest says {n}; the index is corrupted, rebuild it",
                    dir.join(BM25_DIR).display(),
                    idx.num_docs()
                );
                Some(idx)
            }
            None => None,
        };
        let dense = match &manifest.dense {
            Some(info) => {
                let d = DenseIndex::open(dir, n)?;
                ensure!(
                    d.header().dim == info.dim && d.header().model == info.model,
                    "{}: dense.json ({}, dim {}) disagrees with the manifest ({}, dim {}); rebuild the dense index",
                    dir.display(),
                    d.header().model,
                    d.header().dim,
                    info.model,
                    info.dim
                );
                Some(d)
            }
            None => None,
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            docs,
            bm25,
            dense,
            encoder: None,
        })
    }

    /// Sets the query encoder; it must be the model the dense index was built
    /// with (checked by dimension; the name is in the manifest for the caller).
    pub fn with_encoder(mut self, encoder: SentenceEncoder) -> Result<Self> {
        if let Some(info) = &self.manifest.dense {
            ensure!(
                encoder.dim() == info.dim,
                "the query encoder has dimension {}, the dense index of {} ({}) has {}",
                encoder.dim(),
                self.dir.display(),
                info.model,
                info.dim
            );
        }
        self.encoder = Some(encoder);
        Ok(self)
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The dense index, if this index has one (used by [`crate::feedback`]).
    pub fn dense_index(&self) -> Option<&DenseIndex> {
        self.dense.as_ref()
    }

    /// The query encoder given to [`with_encoder`](Self::with_encoder).
    pub fn encoder(&self) -> Option<&SentenceEncoder> {
        self.encoder.as_ref()
    }

    pub fn docs(&self) -> &DocStore {
        &self.docs
    }

    fn bm25(&self) -> Result<&Bm25Index> {
        self.bm25.as_ref().with_context(|| {
            format!(
                "{}: this index has no BM25 part; rebuild it with BM25",
                self.dir.display()
            )
        })
    }

    fn dense_parts(&self) -> Result<(&DenseIndex, &SentenceEncoder)> {
        let d = self.dense.as_ref().with_context(|| {
            format!(
                "{}: this index has no dense part; add one (firstrank index --dense)",
                self.dir.display()
            )
        })?;
        let e = self
            .encoder
            .as_ref()
            .context("dense retrieval needs a query encoder (Retriever::with_encoder)")?;
        Ok((d, e))
    }

    /// BM25 hits (ordinal, score) per query.
    pub fn bm25_hits(&self, queries: &[Query], k: usize) -> Result<Vec<Vec<Hit>>> {
        let idx = self.bm25()?;
        queries.iter().map(|q| idx.search(&q.text, k)).collect()
    }

    /// Dense hits (ordinal, inner product) per query.
    pub fn dense_hits(&self, queries: &[Query], k: usize) -> Result<Vec<Vec<Hit>>> {
        let (d, e) = self.dense_parts()?;
        let texts: Vec<&str> = queries.iter().map(|q| q.text.as_str()).collect();
        let vecs = e.encode(&texts)?;
        d.search(&vecs, k)
    }

    /// Hits per query for `opts.method`, best first.
    pub fn hits(&self, queries: &[Query], opts: &RetrieveOptions) -> Result<Vec<Vec<(u64, f64)>>> {
        let widen = |h: Vec<Vec<Hit>>| -> Vec<Vec<(u64, f64)>> {
            h.into_iter()
                .map(|v| v.into_iter().map(|(o, s)| (o, s as f64)).collect())
                .collect()
        };
        Ok(match opts.method {
            Method::Bm25 => widen(self.bm25_hits(queries, opts.k)?),
            Method::Dense => widen(self.dense_hits(queries, opts.k)?),
            Method::Hybrid => {
                let depth = opts.fusion_depth.max(opts.k);
                let a = self.bm25_hits(queries, depth)?;
                let b = self.dense_hits(queries, depth)?;
                a.iter()
                    .zip(&b)
                    .map(|(x, y)| rrf(&[x, y], opts.rrf_k, opts.k))
                    .collect()
            }
        })
    }

    /// Retrieves candidates for every query, with their texts.
    pub fn retrieve(&self, queries: &[Query], opts: &RetrieveOptions) -> Result<Vec<Request>> {
        let hits = self.hits(queries, opts)?;
        self.requests_for_hits(queries, &hits)
    }

    /// Requests (query + candidates with texts) for hits.
    pub fn requests_for_hits(
        &self,
        queries: &[Query],
        hits: &[Vec<(u64, f64)>],
    ) -> Result<Vec<Request>> {
        queries
            .iter()
            .zip(hits)
            .map(|(q, hits)| {
                let candidates = hits
                    .iter()
                    .map(|&(ord, score)| self.docs.candidate(ord, score))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Request {
                    query: q.clone(),
                    candidates,
                })
            })
            .collect()
    }
}

/// Reciprocal-rank fusion of ranked lists (best first) into the top `k`.
pub fn rrf(runs: &[&Vec<Hit>], rrf_k: f64, k: usize) -> Vec<(u64, f64)> {
    let mut fused: HashMap<u64, f64> = HashMap::new();
    for run in runs {
        for (rank, (ord, _)) in run.iter().enumerate() {
            *fused.entry(*ord).or_default() += 1.0 / (rrf_k + (rank + 1) as f64);
        }
    }
    let mut out: Vec<(u64, f64)> = fused.into_iter().collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out.truncate(k);
    out
}

/// Writes rank_llm request JSONL (core's [`format_request_jsonl`] per query),
/// which `firstrank rerank` reads directly. Written atomically.
pub fn write_request_jsonl(path: &Path, requests: &[Request]) -> Result<()> {
    let mut w = firstrank_core::formats::AtomicWriter::create(path)?;
    for r in requests {
        w.write_all(format_request_jsonl(r)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    w.commit()?;
    Ok(())
}

/// Writes a TREC run (`qid Q0 docid rank score tag`), candidates in the given
/// order. Written atomically.
pub fn write_trec_run(path: &Path, requests: &[Request], tag: &str) -> Result<()> {
    ensure!(
        !tag.is_empty() && !tag.contains(char::is_whitespace),
        "run tag `{tag}` must be non-empty and contain no whitespace"
    );
    let mut w = firstrank_core::formats::AtomicWriter::create(path)?;
    for r in requests {
        ensure!(
            !r.query.qid.is_empty() && !r.query.qid.contains(char::is_whitespace),
            "qid `{}` cannot be written to a TREC run (empty or has whitespace)",
            r.query.qid
        );
        for (i, c) in r.candidates.iter().enumerate() {
            writeln!(
                w,
                "{} Q0 {} {} {} {}",
                r.query.qid,
                c.docid,
                i + 1,
                c.score,
                tag
            )
            .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    w.commit()?;
    Ok(())
}

/// The requests as a `firstrank_core::metrics::Run` for evaluation.
pub fn to_run(requests: &[Request]) -> firstrank_core::metrics::Run {
    requests
        .iter()
        .map(|r| {
            (
                r.query.qid.clone(),
                r.candidates
                    .iter()
                    .map(|c| (c.docid.clone(), c.score))
                    .collect(),
            )
        })
        .collect()
}
