//! Exact dense retrieval: every corpus embedding in one row-major
//! little-endian f32 matrix (`dense.f32`, row i = document ordinal i),
//! described by `dense.json` (`{"version", "model", "dim", "count",
//! "normalized"}`), memory-mapped and searched by brute-force inner product.
//!
//! Search computes the scores of a chunk of rows against every query at once
//! (rows are read from memory once per query batch) on all cores with
//! `std::thread::scope`, keeping the best `k` per query; ties go to the lower
//! ordinal. With unit-norm embeddings the inner product is the cosine.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::bm25::{top_k, Hit};

pub const MATRIX_FILE: &str = "dense.f32";
pub const HEADER_FILE: &str = "dense.json";
pub const DENSE_VERSION: u32 = 1;

/// `dense.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DenseHeader {
    pub version: u32,
    /// The encoder, as given at indexing time (e.g. `all-MiniLM-L6-v2`).
    pub model: String,
    pub dim: usize,
    pub count: u64,
    /// Whether rows have unit L2 norm.
    pub normalized: bool,
}

/// Appends rows to `dense.f32`; [`finish`](Self::finish) writes `dense.json`.
pub struct DenseWriter {
    out: BufWriter<File>,
    dir: PathBuf,
    model: String,
    dim: usize,
    count: u64,
}

impl DenseWriter {
    pub fn create(dir: &Path, model: &str, dim: usize) -> Result<Self> {
        let p = dir.join(MATRIX_FILE);
        let f = File::create(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(Self {
            out: BufWriter::with_capacity(1 << 20, f),
            dir: dir.to_path_buf(),
            model: model.to_owned(),
            dim,
            count: 0,
        })
    }

    pub fn add(&mut self, row: &[f32]) -> Result<()> {
        ensure!(
            row.len() == self.dim,
            "embedding of dimension {} where the index has {}",
            row.len(),
            self.dim
        );
        for x in row {
            self.out.write_all(&x.to_le_bytes())?;
        }
        self.count += 1;
        Ok(())
    }

    pub fn finish(mut self) -> Result<DenseHeader> {
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        let header = DenseHeader {
            version: DENSE_VERSION,
            model: self.model,
            dim: self.dim,
            count: self.count,
            normalized: true,
        };
        let p = self.dir.join(HEADER_FILE);
        std::fs::write(&p, serde_json::to_vec_pretty(&header)?)
            .with_context(|| format!("writing {}", p.display()))?;
        Ok(header)
    }
}

/// A memory-mapped embedding matrix.
#[derive(Debug)]
pub struct DenseIndex {
    header: DenseHeader,
    map: Option<memmap2::Mmap>,
}

impl DenseIndex {
    /// Opens `dense.json` + `dense.f32` and checks them against each other
    /// and against `expected_docs`.
    pub fn open(dir: &Path, expected_docs: u64) -> Result<Self> {
        let hp = dir.join(HEADER_FILE);
        let text =
            std::fs::read_to_string(&hp).with_context(|| format!("reading {}", hp.display()))?;
        let header: DenseHeader = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: corrupted dense index header; rebuild the dense index",
                hp.display()
            )
        })?;
        ensure!(
            header.version == DENSE_VERSION,
            "{}: dense index format version {}, this firstrank reads version {DENSE_VERSION}; rebuild the dense index",
            hp.display(),
            header.version
        );
        ensure!(
            header.count == expected_docs,
            "{}: {} embeddings for a corpus of {expected_docs} documents; rebuild the dense index",
            hp.display(),
            header.count
        );
        ensure!(header.dim > 0, "{}: dim is 0", hp.display());
        let mp = dir.join(MATRIX_FILE);
        let file = File::open(&mp).with_context(|| format!("opening {}", mp.display()))?;
        let len = file.metadata()?.len();
        let want = header.count * header.dim as u64 * 4;
        if len != want {
            bail!(
                "{}: {len} bytes, expected {want} ({} rows × {} dims × 4); the dense index is corrupted, rebuild it",
                mp.display(),
                header.count,
                header.dim
            );
        }
        if !cfg!(target_endian = "little") {
            bail!("dense indexes are little-endian f32; this machine is big-endian");
        }
        let map = if len == 0 {
            None
        } else {
            // SAFETY: the file is opened read-only and firstrank never writes
            // an index in place (a rebuild writes a new directory); a file
            // truncated underneath the map by another process would fault.
            Some(
                unsafe { memmap2::Mmap::map(&file) }
                    .with_context(|| format!("mapping {}", mp.display()))?,
            )
        };
        Ok(Self { header, map })
    }

    pub fn header(&self) -> &DenseHeader {
        &self.header
    }

    /// The matrix as f32 rows (the map is page-aligned, so the cast is aligned).
    fn matrix(&self) -> &[f32] {
        match &self.map {
            None => &[],
            Some(m) => {
                // SAFETY: any bit pattern is a valid f32; alignment checked below.
                let (pre, body, post) = unsafe { m.align_to::<f32>() };
                assert!(pre.is_empty() && post.is_empty(), "mmap is page-aligned");
                body
            }
        }
    }

    /// Row `ord`.
    pub fn row(&self, ord: u64) -> Option<&[f32]> {
        let d = self.header.dim;
        let start = ord as usize * d;
        self.matrix().get(start..start + d)
    }

    /// The `k` best documents for each query vector, best first.
    pub fn search(&self, queries: &[Vec<f32>], k: usize) -> Result<Vec<Vec<Hit>>> {
        for q in queries {
            ensure!(
                q.len() == self.header.dim,
                "query embedding of dimension {} for an index of dimension {}",
                q.len(),
                self.header.dim
            );
        }
        Ok(search_matrix(self.matrix(), self.header.dim, queries, k))
    }
}

/// Brute-force top-k inner product of `queries` against the rows of `m`.
pub fn search_matrix(m: &[f32], dim: usize, queries: &[Vec<f32>], k: usize) -> Vec<Vec<Hit>> {
    let rows = m.len() / dim;
    if queries.is_empty() {
        return Vec::new();
    }
    if k == 0 || rows == 0 {
        return vec![Vec::new(); queries.len()];
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(rows.div_ceil(4096).max(1));
    let per = rows.div_ceil(threads);
    let partial: Vec<Vec<Vec<Hit>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let lo = (t * per).min(rows);
                let hi = ((t + 1) * per).min(rows);
                s.spawn(move || scan(m, dim, lo, hi, queries, k))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("dense search thread panicked"))
            .collect()
    });
    (0..queries.len())
        .map(|qi| {
            let all: Vec<Hit> = partial.iter().flat_map(|p| p[qi].iter().copied()).collect();
            top_k(all, k)
        })
        .collect()
}

/// Scores rows `lo..hi` in blocks, keeping each query's best `k`.
fn scan(
    m: &[f32],
    dim: usize,
    lo: usize,
    hi: usize,
    queries: &[Vec<f32>],
    k: usize,
) -> Vec<Vec<Hit>> {
    const BLOCK: usize = 1024;
    let mut best: Vec<Vec<Hit>> = vec![Vec::with_capacity(2 * k); queries.len()];
    let mut start = lo;
    while start < hi {
        let end = (start + BLOCK).min(hi);
        for r in start..end {
            let row = &m[r * dim..(r + 1) * dim];
            for (q, b) in queries.iter().zip(best.iter_mut()) {
                b.push((r as u64, dot(row, q)));
            }
        }
        for b in best.iter_mut() {
            if b.len() >= 2 * k.max(BLOCK / 2) {
                let kept = top_k(std::mem::take(b), k);
                *b = kept;
            }
        }
        start = end;
    }
    best.into_iter().map(|b| top_k(b, k)).collect()
}

/// Inner product with 8 independent accumulators (vectorises well).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for i in 0..chunks {
        for j in 0..8 {
            acc[j] += a[i * 8 + j] * b[i * 8 + j];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive() {
        let a: Vec<f32> = (0..21).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..21).map(|i| (i as f32 * 0.11).cos()).collect();
        let naive: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert!((dot(&a, &b) as f64 - naive).abs() < 1e-5);
    }
}
