//! Inference-time relevance feedback: ReFIT as FIRST uses it (Reddy et al.
//! 2024; Reddy et al. 2023, "Inference-time Re-ranker Relevance Feedback").
//! Per query, only the dense query vector `q` is learned, starting from the
//! encoder's embedding, over the embeddings `P` (k × d) of the top-k
//! candidates of a ranking; the learned vector then searches the dense index
//! again.
//!
//! The logits are `z = (s/2) · P q` with the score scaler
//! `s = range(teacher) / range(P q)`, `range = max − min`, computed at the
//! start of each stage (FIRST's `scaler`, so that the logits span about half
//! the teacher's range). Two stages, each optional, run in order:
//!
//! 1. **KL** (FIRST's cross-encoder stage): `KL(softmax(t) ‖ softmax(z))`
//!    against real-valued teacher scores `t`; Adam, lr 0.005, 100 steps.
//! 2. **Weighted RankNet** (FIRST's LLM stage): over every pair `(i, j)` with
//!    `t_i > t_j`, `w_ij · BCEWithLogits(z_i − z_j, 1) = w_ij · softplus(z_j − z_i)`
//!    with `w_ij = 1 / (r_i + r_j)`, `r` the 1-based ranks of the teacher
//!    order (ties: candidate order), averaged over the pairs; Adam, lr 0.001,
//!    20 steps. Only the teacher's order and its range matter.
//!
//! These are the defaults of FIRST's `distill.py` (lr 0.005 and 100 updates,
//! the LLM stage at lr/5 and updates/5; Adam with PyTorch's defaults β =
//! (0.9, 0.999), ε = 1e-8, no weight decay). [`FeedbackParams::default`] runs
//! the RankNet stage only (the KL stage needs a teacher with meaningful score
//! values, such as a cross-encoder's; FIRST runs it only when it has one).
//!
//! The problem is tiny (k = 100, d = 384: one 100 × 384 product per step), so
//! the losses have closed-form gradients and Adam is written out here (ten
//! lines) rather than built on candle's autograd and optimisers: no tensors,
//! no device, and the gradients are checked against finite differences in the
//! tests. The arithmetic is f64 (inputs and outputs are f32).
//!
//! **Renormalisation.** The learned `q` is rescaled to unit norm by default.
//! A positive scale does not change a ranking by inner product, so this only
//! affects the reported scores: with MiniLM's unit-norm passage embeddings
//! they stay cosines, comparable with the first stage's. (FIRST keeps the raw
//! vector; its retrieval order is the same.)
//!
//! **Teachers.** An order (a reranker's output, the ideal order from qrels)
//! becomes scores with [`teacher_from_order`]: position `i` of the order gets
//! the `i`-th best first-stage score of the candidate set. This is what
//! rank_llm's results carry (the reranked hits keep the first-stage scores by
//! position) and what FIRST's feedback read, so the scaler is the one FIRST
//! used: with a dense first stage `s` = 1.

use std::collections::HashMap;

use anyhow::{bail, ensure, Context, Result};
use firstrank_core::Query;

use crate::retrieve::{rrf, Method, RetrieveOptions, Retriever};

/// Adam's constants other than the learning rate (PyTorch's defaults).
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

/// Where the teacher scores of a feedback round come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The order a reranker produced (through [`teacher_from_order`]).
    Reranker,
    /// The dense scores of the original query vector (a self-distillation
    /// control: the teacher is the student's own starting point).
    Dense,
    /// The ideal order from qrels, ties in ranking order (an upper bound).
    Oracle,
    /// BM25 scores of the candidates (0 outside BM25's top `depth`).
    Bm25,
}

impl std::str::FromStr for Signal {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "reranker" => Ok(Signal::Reranker),
            "dense" => Ok(Signal::Dense),
            "oracle" => Ok(Signal::Oracle),
            "bm25" => Ok(Signal::Bm25),
            other => {
                bail!("unknown feedback signal `{other}`; expected reranker, dense, oracle or bm25")
            }
        }
    }
}

/// Steps and learning rates of the two stages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeedbackParams {
    /// KL stage steps (0 = skip; FIRST: 100 when a cross-encoder teacher exists).
    pub kl_steps: usize,
    /// KL stage Adam learning rate (FIRST: 0.005).
    pub kl_lr: f64,
    /// RankNet stage steps (FIRST: 20).
    pub ranknet_steps: usize,
    /// RankNet stage Adam learning rate (FIRST: 0.001).
    pub ranknet_lr: f64,
    /// Rescale the learned vector to unit norm (does not change the ranking).
    pub renormalize: bool,
}

impl Default for FeedbackParams {
    fn default() -> Self {
        FeedbackParams {
            kl_steps: 0,
            kl_lr: 0.005,
            ranknet_steps: 20,
            ranknet_lr: 0.001,
            renormalize: true,
        }
    }
}

impl FeedbackParams {
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.kl_lr.is_finite() && self.kl_lr > 0.0,
            "kl_lr must be a positive number (got {})",
            self.kl_lr
        );
        ensure!(
            self.ranknet_lr.is_finite() && self.ranknet_lr > 0.0,
            "ranknet_lr must be a positive number (got {})",
            self.ranknet_lr
        );
        Ok(())
    }
}

/// What one stage did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StageReport {
    /// The score scaler `s` (logits are `s/2 · P q`).
    pub scale: f64,
    /// Loss before the first step and after the last.
    pub loss_start: f64,
    pub loss_end: f64,
    /// RankNet: pairs with `t_i > t_j`; KL: candidates.
    pub terms: usize,
}

/// The result of [`refine_query`].
#[derive(Debug, Clone, PartialEq)]
pub struct Refinement {
    pub query: Vec<f32>,
    /// `None` when the stage was off or had nothing to learn from (fewer than
    /// two candidates, a constant teacher, identical candidate scores).
    pub kl: Option<StageReport>,
    pub ranknet: Option<StageReport>,
    /// Cosine between the original and the learned vector.
    pub cosine_to_original: f64,
}

// ---------------------------------------------------------------------------
// Losses on the logits z, with their gradients dL/dz.

fn softplus(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// 1-based ranks of `teacher` sorted descending; ties keep candidate order.
pub fn teacher_ranks(teacher: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..teacher.len()).collect();
    order.sort_by(|&a, &b| teacher[b].total_cmp(&teacher[a]));
    let mut ranks = vec![0; teacher.len()];
    for (r, &i) in order.iter().enumerate() {
        ranks[i] = r + 1;
    }
    ranks
}

/// Weighted RankNet (see the module comment): `(loss, dL/dz, pairs)`. No
/// pairs (a constant teacher) gives loss 0 and a zero gradient.
pub fn ranknet_loss(z: &[f64], teacher: &[f64]) -> (f64, Vec<f64>, usize) {
    assert_eq!(z.len(), teacher.len());
    let ranks = teacher_ranks(teacher);
    let n = z.len();
    let mut loss = 0.0;
    let mut grad = vec![0.0; n];
    let mut pairs = 0usize;
    for i in 0..n {
        for j in 0..n {
            if teacher[i] > teacher[j] {
                let w = 1.0 / (ranks[i] + ranks[j]) as f64;
                let d = z[i] - z[j];
                loss += w * softplus(-d);
                // d/dd softplus(-d) = -sigmoid(-d)
                let g = w * sigmoid(-d);
                grad[i] -= g;
                grad[j] += g;
                pairs += 1;
            }
        }
    }
    if pairs == 0 {
        return (0.0, grad, 0);
    }
    let m = pairs as f64;
    grad.iter_mut().for_each(|g| *g /= m);
    (loss / m, grad, pairs)
}

fn log_softmax(x: &[f64]) -> Vec<f64> {
    let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + x.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
    x.iter().map(|v| v - lse).collect()
}

/// `KL(softmax(teacher) ‖ softmax(z))` (PyTorch's `KLDivLoss(batchmean,
/// log_target=True)` on one row): `(loss, dL/dz)`.
pub fn kl_loss(z: &[f64], teacher: &[f64]) -> (f64, Vec<f64>) {
    assert_eq!(z.len(), teacher.len());
    let lt = log_softmax(teacher);
    let lp = log_softmax(z);
    let loss = lt
        .iter()
        .zip(&lp)
        .map(|(t, p)| t.exp() * (t - p))
        .sum::<f64>();
    let grad = lt.iter().zip(&lp).map(|(t, p)| p.exp() - t.exp()).collect();
    (loss, grad)
}

// ---------------------------------------------------------------------------
// The objective on q.

/// `P q` for row-major `p` (k × dim).
fn scores(q: &[f64], p: &[f64], dim: usize) -> Vec<f64> {
    p.chunks_exact(dim)
        .map(|row| row.iter().zip(q).map(|(a, b)| a * b).sum())
        .collect()
}

fn range(x: &[f64]) -> f64 {
    let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let min = x.iter().copied().fold(f64::INFINITY, f64::min);
    max - min
}

/// FIRST's scaler `s = range(teacher) / range(P q)`; `None` when either
/// range is zero (nothing to learn, or no direction to learn it in).
pub fn scaler(q: &[f64], p: &[f64], dim: usize, teacher: &[f64]) -> Option<f64> {
    let rt = range(teacher);
    let rs = range(&scores(q, p, dim));
    (rt > 0.0 && rs > 0.0 && rt.is_finite() && rs.is_finite()).then(|| rt / rs)
}

/// Which loss a stage minimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    Kl,
    RankNet,
}

/// The loss of `q` with logits `(scale/2) · P q`, and its gradient in `q`.
pub fn objective(
    loss: Loss,
    q: &[f64],
    p: &[f64],
    dim: usize,
    scale: f64,
    teacher: &[f64],
) -> (f64, Vec<f64>) {
    let c = scale / 2.0;
    let z: Vec<f64> = scores(q, p, dim).into_iter().map(|s| c * s).collect();
    let (value, gz) = match loss {
        Loss::Kl => kl_loss(&z, teacher),
        Loss::RankNet => {
            let (v, g, _) = ranknet_loss(&z, teacher);
            (v, g)
        }
    };
    // dL/dq = c · Σ_i dL/dz_i · p_i
    let mut gq = vec![0.0; dim];
    for (row, g) in p.chunks_exact(dim).zip(&gz) {
        if *g != 0.0 {
            for (acc, x) in gq.iter_mut().zip(row) {
                *acc += c * g * x;
            }
        }
    }
    (value, gq)
}

/// Adam (Kingma & Ba) with bias correction, as `torch.optim.Adam`.
struct Adam {
    lr: f64,
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl Adam {
    fn new(lr: f64, dim: usize) -> Self {
        Adam {
            lr,
            m: vec![0.0; dim],
            v: vec![0.0; dim],
            t: 0,
        }
    }

    fn step(&mut self, x: &mut [f64], g: &[f64]) {
        self.t += 1;
        let c1 = 1.0 - BETA1.powi(self.t);
        let c2 = 1.0 - BETA2.powi(self.t);
        for i in 0..x.len() {
            self.m[i] = BETA1 * self.m[i] + (1.0 - BETA1) * g[i];
            self.v[i] = BETA2 * self.v[i] + (1.0 - BETA2) * g[i] * g[i];
            let m_hat = self.m[i] / c1;
            let v_hat = self.v[i] / c2;
            x[i] -= self.lr * m_hat / (v_hat.sqrt() + EPS);
        }
    }
}

fn run_stage(
    loss: Loss,
    q: &mut [f64],
    p: &[f64],
    dim: usize,
    teacher: &[f64],
    steps: usize,
    lr: f64,
) -> Option<StageReport> {
    if steps == 0 {
        return None;
    }
    let scale = scaler(q, p, dim, teacher)?;
    let terms = match loss {
        Loss::Kl => teacher.len(),
        Loss::RankNet => {
            let z = vec![0.0; teacher.len()];
            ranknet_loss(&z, teacher).2
        }
    };
    let mut adam = Adam::new(lr, dim);
    let mut loss_start = f64::NAN;
    for step in 0..steps {
        let (value, g) = objective(loss, q, p, dim, scale, teacher);
        if step == 0 {
            loss_start = value;
        }
        adam.step(q, &g);
    }
    let loss_end = objective(loss, q, p, dim, scale, teacher).0;
    Some(StageReport {
        scale,
        loss_start,
        loss_end,
        terms,
    })
}

fn norm(x: &[f64]) -> f64 {
    x.iter().map(|v| v * v).sum::<f64>().sqrt()
}

/// Learns a new query vector from `query` (dim d), the candidates'
/// embeddings `passages` (k × d, row-major) and one teacher score per
/// candidate (higher = better), running the stages `params` asks for.
pub fn refine_query(
    query: &[f32],
    passages: &[f32],
    teacher: &[f32],
    params: &FeedbackParams,
) -> Result<Refinement> {
    params.validate()?;
    let dim = query.len();
    ensure!(dim > 0, "empty query vector");
    ensure!(
        passages.len() == teacher.len() * dim,
        "{} passage values for {} candidates of dimension {dim}",
        passages.len(),
        teacher.len()
    );
    ensure!(
        query.iter().chain(passages).all(|x| x.is_finite()),
        "query or passage embedding holds a non-finite value"
    );
    if let Some(i) = teacher.iter().position(|t| !t.is_finite()) {
        bail!("teacher score of candidate {i} is {}", teacher[i]);
    }
    let q0: Vec<f64> = query.iter().map(|&x| x as f64).collect();
    let p: Vec<f64> = passages.iter().map(|&x| x as f64).collect();
    let t: Vec<f64> = teacher.iter().map(|&x| x as f64).collect();
    let mut q = q0.clone();
    let (kl, ranknet) = if t.len() < 2 {
        (None, None)
    } else {
        let kl = run_stage(Loss::Kl, &mut q, &p, dim, &t, params.kl_steps, params.kl_lr);
        let rn = run_stage(
            Loss::RankNet,
            &mut q,
            &p,
            dim,
            &t,
            params.ranknet_steps,
            params.ranknet_lr,
        );
        (kl, rn)
    };
    let n = norm(&q);
    ensure!(
        n.is_finite() && n > 0.0,
        "feedback produced a degenerate query vector"
    );
    if params.renormalize {
        q.iter_mut().for_each(|x| *x /= n);
    }
    let cosine = q.iter().zip(&q0).map(|(a, b)| a * b).sum::<f64>() / (norm(&q) * norm(&q0));
    Ok(Refinement {
        query: q.into_iter().map(|x| x as f32).collect(),
        kl,
        ranknet,
        cosine_to_original: cosine,
    })
}

/// Teacher scores for an order: `first_stage_in_order[i]` is the first-stage
/// score of the candidate the order puts at position `i`; position `i` gets
/// the `i`-th best of those scores (rank_llm's reranked hits keep the
/// first-stage scores by position). Strictly decreasing when the first-stage
/// scores are distinct.
pub fn teacher_from_order(first_stage_in_order: &[f64]) -> Vec<f32> {
    let mut s: Vec<f64> = first_stage_in_order.to_vec();
    s.sort_by(|a, b| b.total_cmp(a));
    s.into_iter().map(|x| x as f32).collect()
}

/// Positions of the candidates sorted by grade, best first; equal grades keep
/// the given order (the ideal reordering a perfect reranker would produce).
pub fn oracle_order(grades: &[i32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..grades.len()).collect();
    order.sort_by(|&a, &b| grades[b].cmp(&grades[a]));
    order
}

// ---------------------------------------------------------------------------
// Retrieval with explicit query vectors.

impl Retriever {
    /// Query embeddings from the encoder given to
    /// [`with_encoder`](Self::with_encoder). A query longer than the
    /// encoder's `max_seq_length` word pieces (256 for all-MiniLM-L6-v2,
    /// `[CLS]` and `[SEP]` included) is cut there, as sentence-transformers
    /// does silently; here a warning names the query.
    pub fn encode_queries(&self, queries: &[Query]) -> Result<Vec<Vec<f32>>> {
        let enc = self
            .encoder()
            .context("dense retrieval needs a query encoder (Retriever::with_encoder)")?;
        for q in queries {
            let n = enc.tokenize(&q.text)?.len();
            if n >= enc.max_seq_length() {
                tracing::warn!(
                    "query {}: reaches the dense encoder's limit of {} word pieces; the rest is cut off (as sentence-transformers does)",
                    q.qid,
                    enc.max_seq_length()
                );
            }
        }
        let texts: Vec<&str> = queries.iter().map(|q| q.text.as_str()).collect();
        enc.encode(&texts)
    }

    /// The dense index's rows for `ords`, concatenated (k × dim).
    pub fn embeddings(&self, ords: &[u64]) -> Result<Vec<f32>> {
        let d = self
            .dense_index()
            .context("relevance feedback needs the index's dense part (firstrank index --dense)")?;
        let mut out = Vec::with_capacity(ords.len() * d.header().dim);
        for &o in ords {
            out.extend_from_slice(
                d.row(o)
                    .with_context(|| format!("document ordinal {o} is not in the dense index"))?,
            );
        }
        Ok(out)
    }

    /// Hits per query, best first, for given query vectors: `Dense` searches
    /// with them, `Hybrid` fuses that search with BM25 on the query texts.
    pub fn hits_for_vectors(
        &self,
        queries: &[Query],
        vectors: &[Vec<f32>],
        opts: &RetrieveOptions,
    ) -> Result<Vec<Vec<(u64, f64)>>> {
        ensure!(
            queries.len() == vectors.len(),
            "{} query vectors for {} queries",
            vectors.len(),
            queries.len()
        );
        let d = self
            .dense_index()
            .context("dense retrieval needs the index's dense part (firstrank index --dense)")?;
        Ok(match opts.method {
            Method::Bm25 => {
                bail!("a query vector cannot drive BM25; retrieve with method dense or hybrid")
            }
            Method::Dense => d
                .search(vectors, opts.k)?
                .into_iter()
                .map(|v| v.into_iter().map(|(o, s)| (o, s as f64)).collect())
                .collect(),
            Method::Hybrid => {
                let depth = opts.fusion_depth.max(opts.k);
                let a = self.bm25_hits(queries, depth)?;
                let b = d.search(vectors, depth)?;
                a.iter()
                    .zip(&b)
                    .map(|(x, y)| rrf(&[x, y], opts.rrf_k, opts.k))
                    .collect()
            }
        })
    }

    /// BM25 scores of `ords` for `query` (0 for documents outside BM25's top
    /// `depth`), for the `bm25` feedback signal.
    pub fn bm25_scores(&self, query: &Query, ords: &[u64], depth: usize) -> Result<Vec<f32>> {
        let hits = self.bm25_hits(std::slice::from_ref(query), depth)?;
        let by_ord: HashMap<u64, f32> = hits.into_iter().flatten().collect();
        Ok(ords
            .iter()
            .map(|o| by_ord.get(o).copied().unwrap_or(0.0))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random stream (no rand dependency).
    fn stream(seed: u64) -> impl FnMut() -> f64 {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        }
    }

    fn unit(mut v: Vec<f64>) -> Vec<f64> {
        let n = norm(&v);
        v.iter_mut().for_each(|x| *x /= n);
        v
    }

    /// k unit-norm passages and a unit query, all of dimension dim.
    fn problem(k: usize, dim: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
        let mut r = stream(seed);
        let q = unit((0..dim).map(|_| r()).collect());
        let p: Vec<f64> = (0..k)
            .flat_map(|_| unit((0..dim).map(|_| r()).collect()))
            .collect();
        (q, p)
    }

    fn check_gradient(loss: Loss, teacher: &[f64], seed: u64) {
        let (k, dim) = (teacher.len(), 24);
        let (q, p) = problem(k, dim, seed);
        let scale = scaler(&q, &p, dim, teacher).unwrap();
        let (_, g) = objective(loss, &q, &p, dim, scale, teacher);
        let h = 1e-6;
        let mut max_err: f64 = 0.0;
        let gnorm = norm(&g);
        assert!(
            gnorm > 1e-6,
            "{loss:?}: gradient is zero, the check would be vacuous"
        );
        for i in 0..dim {
            let mut a = q.clone();
            let mut b = q.clone();
            a[i] += h;
            b[i] -= h;
            let fd = (objective(loss, &a, &p, dim, scale, teacher).0
                - objective(loss, &b, &p, dim, scale, teacher).0)
                / (2.0 * h);
            max_err = max_err.max((fd - g[i]).abs());
        }
        assert!(
            max_err < 1e-6 * gnorm.max(1.0),
            "{loss:?}: max |finite difference − analytic| = {max_err:e} (|g| = {gnorm:e})"
        );
    }

    #[test]
    fn ranknet_gradient_matches_finite_differences() {
        // Graded teacher with ties (ties give no pair but still set ranks).
        let teacher: Vec<f64> = (0..30).map(|i| ((i * 7) % 4) as f64).collect();
        check_gradient(Loss::RankNet, &teacher, 1);
        // Strict order, as an order signal gives.
        let teacher: Vec<f64> = (0..30).map(|i| 1.0 - i as f64 * 0.01).collect();
        check_gradient(Loss::RankNet, &teacher, 2);
    }

    #[test]
    fn kl_gradient_matches_finite_differences() {
        let mut r = stream(3);
        let teacher: Vec<f64> = (0..30).map(|_| 5.0 * r()).collect();
        check_gradient(Loss::Kl, &teacher, 4);
    }

    #[test]
    fn ranknet_loss_by_hand() {
        // Two candidates, teacher prefers 0: one pair, ranks 1 and 2, w = 1/3.
        let (l, g, pairs) = ranknet_loss(&[0.5, 0.0], &[2.0, 1.0]);
        assert_eq!(pairs, 1);
        let want = (1.0 / 3.0) * (1.0 + (-0.5f64).exp()).ln();
        assert!((l - want).abs() < 1e-12);
        let s = 1.0 / (1.0 + 0.5f64.exp());
        assert!((g[0] + s / 3.0).abs() < 1e-12 && (g[1] - s / 3.0).abs() < 1e-12);
        // A constant teacher has no pairs.
        let (l, g, pairs) = ranknet_loss(&[0.5, 0.0], &[1.0, 1.0]);
        assert_eq!((l, pairs), (0.0, 0));
        assert!(g.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn kl_is_zero_at_the_teacher() {
        let t = [1.0, -0.5, 2.0, 0.0];
        let (l, g) = kl_loss(&t, &t);
        assert!(l.abs() < 1e-12);
        assert!(g.iter().all(|x| x.abs() < 1e-12));
        // Shifting logits by a constant does not change softmax.
        let shifted: Vec<f64> = t.iter().map(|x| x + 3.0).collect();
        assert!(kl_loss(&shifted, &t).0.abs() < 1e-12);
    }

    /// Feedback toward an oracle order raises the relevant candidates above
    /// the others: the learned vector scores them higher, relative to the
    /// rest, than the original did.
    #[test]
    fn oracle_feedback_promotes_relevant_candidates() {
        let (k, dim) = (100, 64);
        let (q, p) = problem(k, dim, 7);
        let q32: Vec<f32> = q.iter().map(|&x| x as f32).collect();
        let p32: Vec<f32> = p.iter().map(|&x| x as f32).collect();
        let first = scores(&q, &p, dim);
        // Candidates in first-stage order.
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by(|&a, &b| first[b].total_cmp(&first[a]));
        let p_sorted: Vec<f32> = order
            .iter()
            .flat_map(|&i| p32[i * dim..(i + 1) * dim].to_vec())
            .collect();
        let first_sorted: Vec<f64> = order.iter().map(|&i| first[i]).collect();
        // Relevant: every 5th candidate of the bottom half of the first stage.
        let grades: Vec<i32> = (0..k).map(|i| i32::from(i >= 50 && i % 5 == 0)).collect();
        let ideal = oracle_order(&grades);
        assert!(ideal[..10].iter().all(|&i| grades[i] == 1));
        let t_ideal =
            teacher_from_order(&ideal.iter().map(|&i| first_sorted[i]).collect::<Vec<_>>());
        // Teacher aligned with the candidates (candidate ideal[r] has score t_ideal[r]).
        let mut teacher = vec![0f32; k];
        for (r, &i) in ideal.iter().enumerate() {
            teacher[i] = t_ideal[r];
        }
        let params = FeedbackParams::default();
        let out = refine_query(&q32, &p_sorted, &teacher, &params).unwrap();
        let rn = out.ranknet.unwrap();
        assert!(rn.loss_end < rn.loss_start, "{rn:?}");
        let margin = |qv: &[f64]| {
            let s = scores(
                qv,
                &p_sorted.iter().map(|&x| x as f64).collect::<Vec<_>>(),
                dim,
            );
            let mean = |rel: i32| {
                let v: Vec<f64> = (0..k).filter(|&i| grades[i] == rel).map(|i| s[i]).collect();
                v.iter().sum::<f64>() / v.len() as f64
            };
            mean(1) - mean(0)
        };
        let learned: Vec<f64> = out.query.iter().map(|&x| x as f64).collect();
        let (before, after) = (margin(&q), margin(&learned));
        assert!(
            before < 0.0,
            "relevant set starts below the rest ({before})"
        );
        assert!(after > before + 0.02, "margin {before} -> {after}");
        assert!((norm(&learned) - 1.0).abs() < 1e-6, "renormalised");
        // The relevant candidates' mean rank under the new vector improves.
        let mean_rank = |qv: &[f64]| {
            let s = scores(
                qv,
                &p_sorted.iter().map(|&x| x as f64).collect::<Vec<_>>(),
                dim,
            );
            let mut o: Vec<usize> = (0..k).collect();
            o.sort_by(|&a, &b| s[b].total_cmp(&s[a]));
            let ranks: Vec<usize> = (0..k).filter(|&r| grades[o[r]] == 1).collect();
            ranks.iter().sum::<usize>() as f64 / ranks.len() as f64
        };
        let (r0, r1) = (mean_rank(&q), mean_rank(&learned));
        assert!(r1 < r0 - 5.0, "mean rank of the relevant {r0} -> {r1}");
    }

    #[test]
    fn degenerate_inputs_leave_the_query_alone() {
        let q = [0.6f32, 0.8];
        // One candidate: nothing to order.
        let out = refine_query(&q, &[1.0, 0.0], &[1.0], &FeedbackParams::default()).unwrap();
        assert!(out.ranknet.is_none());
        assert!((out.cosine_to_original - 1.0).abs() < 1e-9);
        // Constant teacher: no scaler, no stage.
        let out = refine_query(
            &q,
            &[1.0, 0.0, 0.0, 1.0],
            &[2.0, 2.0],
            &FeedbackParams::default(),
        )
        .unwrap();
        assert!(out.ranknet.is_none());
        // Bad shapes and values are errors, not panics.
        assert!(refine_query(
            &q,
            &[1.0, 0.0, 0.0],
            &[1.0, 0.0],
            &FeedbackParams::default()
        )
        .is_err());
        assert!(refine_query(
            &q,
            &[1.0, 0.0, 0.0, 1.0],
            &[f32::NAN, 0.0],
            &FeedbackParams::default()
        )
        .is_err());
        let bad = FeedbackParams {
            ranknet_lr: 0.0,
            ..FeedbackParams::default()
        };
        assert!(refine_query(&q, &[1.0, 0.0, 0.0, 1.0], &[1.0, 0.0], &bad).is_err());
    }

    #[test]
    fn teacher_helpers() {
        assert_eq!(teacher_from_order(&[0.2, 0.9, 0.5]), vec![0.9, 0.5, 0.2]);
        assert_eq!(oracle_order(&[0, 2, 1, 2, 0]), vec![1, 3, 2, 0, 4]);
        assert_eq!(teacher_ranks(&[1.0, 3.0, 1.0, 2.0]), vec![3, 1, 4, 2]);
        assert_eq!("oracle".parse::<Signal>().unwrap(), Signal::Oracle);
        let e = "magic".parse::<Signal>().unwrap_err().to_string();
        assert!(
            e.contains("magic") && e.contains("reranker, dense, oracle or bm25"),
            "{e}"
        );
    }
}
