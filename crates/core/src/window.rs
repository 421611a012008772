//! Window strategies: which slices of a ranked list a listwise model sees, in
//! which order, and how its scores reorder the list.
//!
//! The seam between strategy and model is [`WindowScorer`]: it takes one window
//! (a query and up to 20 candidates) and returns one score per candidate. The
//! strategies here know nothing of models; a model backend, an oracle built
//! from qrels or a test double all plug in the same way.
//!
//! A strategy is a *schedule* of half-open position ranges over the current
//! list. Each range is scored and stably sorted in place (ties keep the
//! incoming order) before the next range is taken, exactly like rank_llm's
//! `sliding_windows`: with window 20 and stride 10 over [0, 100) the ranges are
//! [80,100), [70,90), ..., [0,20), nine in all. Because the ranges depend only
//! on the list length, several queries can advance in lockstep and a backend
//! can batch their windows ([`WindowScorer::score_windows`]).

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::prompt::TokenCounter;
use crate::{Candidate, Error, Query, Request, Result};

/// Scores one listwise window. Implemented by model backends and test scorers.
pub trait WindowScorer {
    /// One score per candidate of `window`, in the same order; higher means more
    /// relevant. Ties are allowed: the strategy keeps the incoming order for them.
    fn score_window(&mut self, query: &Query, window: &[Candidate]) -> anyhow::Result<Vec<f32>>;

    /// Scores independent windows (normally of different queries) together.
    /// Backends that gain from batching override this; the default scores them
    /// one after another.
    fn score_windows(
        &mut self,
        windows: &[(&Query, &[Candidate])],
    ) -> anyhow::Result<Vec<Vec<f32>>> {
        windows
            .iter()
            .map(|(q, w)| self.score_window(q, w))
            .collect()
    }

    /// A one-line summary of the work done so far (token counts, forward
    /// passes), for the end of a run; `None` when the scorer keeps none.
    fn stats_summary(&self) -> Option<String> {
        None
    }

    /// What the scores mean beyond their order (the server's relevance
    /// scores follow it); listwise scores only order one window.
    fn score_scale(&self) -> ScoreScale {
        ScoreScale::WithinWindow
    }

    /// The tokenizer and the share of the model's input one passage gets,
    /// for cutting long documents into chunks (the `chunk` module); `None`
    /// when the scorer cannot say (chunking is then refused).
    fn passage_budget(&self) -> Option<(&dyn TokenCounter, PassageBudget)> {
        None
    }
}

/// How many tokens of one passage a model reads, for sizing chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassageBudget {
    /// Tokens of passage text the model reads.
    pub tokens: usize,
    /// The budget is shared with the query (a cross-encoder reads the pair
    /// in one sequence), so a chunk gets `tokens` minus the query's tokens.
    pub shared_with_query: bool,
}

/// The fewest tokens a chunk is given however long the query is (when the
/// budget is shared with it).
pub const MIN_CHUNK_TOKENS: usize = 16;

impl PassageBudget {
    /// Tokens per chunk for a query of `query_tokens` tokens.
    pub fn chunk_tokens(&self, query_tokens: usize) -> usize {
        if self.shared_with_query {
            self.tokens
                .saturating_sub(query_tokens)
                .max(MIN_CHUNK_TOKENS.min(self.tokens))
        } else {
            self.tokens.max(1)
        }
    }
}

/// What a scorer's numbers mean beyond ordering their window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreScale {
    /// Only the order within one window counts (FIRST's identifier logits,
    /// cosines): relevance scores are made from ranks.
    WithinWindow,
    /// A probability of relevance in [0, 1], comparable across documents and
    /// queries (a cross-encoder's sigmoid, a pointwise yes-probability).
    Probability,
    /// A logit whose sigmoid is that probability (a cross-encoder's raw
    /// classifier output).
    Logit,
}

impl<S: WindowScorer + ?Sized> WindowScorer for &mut S {
    fn score_window(&mut self, query: &Query, window: &[Candidate]) -> anyhow::Result<Vec<f32>> {
        (**self).score_window(query, window)
    }
    fn score_windows(
        &mut self,
        windows: &[(&Query, &[Candidate])],
    ) -> anyhow::Result<Vec<Vec<f32>>> {
        (**self).score_windows(windows)
    }
    fn stats_summary(&self) -> Option<String> {
        (**self).stats_summary()
    }
    fn score_scale(&self) -> ScoreScale {
        (**self).score_scale()
    }
    fn passage_budget(&self) -> Option<(&dyn TokenCounter, PassageBudget)> {
        (**self).passage_budget()
    }
}

impl<S: WindowScorer + ?Sized> WindowScorer for Box<S> {
    fn score_window(&mut self, query: &Query, window: &[Candidate]) -> anyhow::Result<Vec<f32>> {
        (**self).score_window(query, window)
    }
    fn score_windows(
        &mut self,
        windows: &[(&Query, &[Candidate])],
    ) -> anyhow::Result<Vec<Vec<f32>>> {
        (**self).score_windows(windows)
    }
    fn stats_summary(&self) -> Option<String> {
        (**self).stats_summary()
    }
    fn score_scale(&self) -> ScoreScale {
        (**self).score_scale()
    }
    fn passage_budget(&self) -> Option<(&dyn TokenCounter, PassageBudget)> {
        (**self).passage_budget()
    }
}

/// How a ranked list is split into windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowStrategy {
    /// Candidates per window (20 in FIRST and RankZephyr).
    pub window: usize,
    /// How far the window moves up the list between steps (10).
    pub stride: usize,
    /// First rank (0-based) the strategy may reorder.
    pub rank_start: usize,
    /// One past the last rank (0-based) the strategy may reorder (100).
    pub rank_end: usize,
    /// How many times the whole bottom-to-top sweep is repeated.
    pub passes: usize,
}

impl Default for WindowStrategy {
    fn default() -> Self {
        Self::sliding(20, 10, 100)
    }
}

impl WindowStrategy {
    /// rank_llm's sliding window over ranks [0, rank_end).
    pub fn sliding(window: usize, stride: usize, rank_end: usize) -> Self {
        Self {
            window,
            stride,
            rank_start: 0,
            rank_end,
            passes: 1,
        }
    }

    /// One window over the top `k` candidates; the rest keep their order.
    pub fn single(k: usize) -> Self {
        Self {
            window: k,
            stride: k,
            rank_start: 0,
            rank_end: k,
            passes: 1,
        }
    }

    pub fn with_passes(mut self, passes: usize) -> Self {
        self.passes = passes;
        self
    }

    pub fn with_rank_start(mut self, rank_start: usize) -> Self {
        self.rank_start = rank_start;
        self
    }

    /// The strategy for a scorer whose scores mean `scale`: scores that are
    /// comparable across windows (a probability or a logit) need no sliding
    /// window, so the reorderable ranks become one window and every
    /// document is scored once; listwise scores keep the strategy as it is.
    pub fn for_scale(self, scale: ScoreScale) -> Self {
        if scale == ScoreScale::WithinWindow {
            return self;
        }
        let window = self.rank_end - self.rank_start.min(self.rank_end);
        Self {
            window: window.max(1),
            stride: window.max(1),
            passes: 1,
            ..self
        }
    }

    /// Rejects settings that would loop forever or score nothing.
    pub fn validate(&self) -> Result<()> {
        if self.window == 0 {
            return Err(Error::Invalid("window size must be at least 1".into()));
        }
        if self.stride == 0 || self.stride > self.window {
            return Err(Error::Invalid(format!(
                "stride must satisfy 0 < stride <= window (got stride {}, window {})",
                self.stride, self.window
            )));
        }
        if self.rank_start >= self.rank_end {
            return Err(Error::Invalid(format!(
                "rank range is empty: rank_start {} >= rank_end {}",
                self.rank_start, self.rank_end
            )));
        }
        if self.passes == 0 {
            return Err(Error::Invalid("passes must be at least 1".into()));
        }
        Ok(())
    }

    /// The ranges scored, in order, for a list of `n` candidates. One sweep is
    /// rank_llm's: the last window ends at min(rank_end, n), each next one is
    /// `stride` higher, the first (possibly short) one starts at rank_start.
    pub fn schedule(&self, n: usize) -> Vec<Range<usize>> {
        let mut sweep = Vec::new();
        let end = self.rank_end.min(n);
        if end > self.rank_start && self.window > 0 && self.stride > 0 {
            let mut end_pos = end;
            let mut start_pos = end_pos.saturating_sub(self.window).max(self.rank_start);
            loop {
                sweep.push(start_pos..end_pos);
                if start_pos == self.rank_start {
                    break;
                }
                end_pos -= self.stride;
                start_pos = start_pos.saturating_sub(self.stride).max(self.rank_start);
                if end_pos <= start_pos {
                    break;
                }
            }
        }
        let mut all = Vec::with_capacity(sweep.len() * self.passes);
        for _ in 0..self.passes {
            all.extend(sweep.iter().cloned());
        }
        all
    }
}

/// What one window did: kept for the JSONL output and for diagnostics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowRecord {
    /// Position range of the window in the list at the time it was scored.
    pub start: usize,
    pub end: usize,
    /// The window's candidates in the order shown to the model (identifier
    /// A is the first).
    pub docids: Vec<String>,
    /// The scorer's raw score for each of `docids` (FIRST: identifier logits).
    pub scores: Vec<f32>,
}

/// One candidate after reranking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankedCandidate {
    pub candidate: Candidate,
    /// 0-based rank before reranking.
    pub original_rank: usize,
    /// Raw score from the last window that contained the candidate; `None` if
    /// no window reached it (ranks beyond rank_end).
    pub model_score: Option<f32>,
    /// For a document cut into chunks ([`QueryRerank::with_chunks`]): the
    /// 0-based index of the chunk that stood for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<usize>,
}

/// The reranked list of one query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerankOutcome {
    pub query: Query,
    pub ranked: Vec<RankedCandidate>,
    pub windows: Vec<WindowRecord>,
}

impl RerankOutcome {
    /// Scores for a TREC run: strictly decreasing with rank (n, n-1, ..., 1),
    /// so trec_eval's re-sort by score cannot scramble the order. The raw model
    /// scores stay in the JSONL output.
    pub fn rank_scores(&self) -> Vec<f64> {
        let n = self.ranked.len();
        (0..n).map(|i| (n - i) as f64).collect()
    }
}

/// One query being reranked window by window: its candidates in their
/// current order, its schedule and the windows scored so far. Several of them
/// advance in lockstep in [`rerank_batch`]; a scheduler (the server's worker)
/// can also interleave the windows of many queries from many requests, and
/// drop a query between two windows.
pub struct QueryRerank {
    query: Query,
    list: Vec<RankedCandidate>,
    /// Positions the schedule can reorder.
    reorderable: Range<usize>,
    /// Long documents whose best chunk is still to be chosen, each scored as
    /// one window before the schedule starts: (position, chunks).
    selections: Vec<(usize, Vec<String>)>,
    /// Whole texts of the documents a chunk stands for, restored by `finish`.
    full_texts: Vec<(usize, String)>,
    schedule: Vec<Range<usize>>,
    next: usize,
    windows: Vec<WindowRecord>,
}

impl QueryRerank {
    /// Starts `request` on the schedule of `strategy` (which the caller has
    /// validated).
    pub fn new(request: Request, strategy: &WindowStrategy) -> Self {
        let schedule = strategy.schedule(request.candidates.len());
        let list = request
            .candidates
            .into_iter()
            .enumerate()
            .map(|(original_rank, candidate)| RankedCandidate {
                candidate,
                original_rank,
                model_score: None,
                chunk: None,
            })
            .collect::<Vec<_>>();
        let end = strategy.rank_end.min(list.len());
        Self {
            query: request.query,
            reorderable: strategy.rank_start.min(end)..end,
            list,
            selections: Vec::new(),
            full_texts: Vec::new(),
            schedule,
            next: 0,
            windows: Vec::new(),
        }
    }

    /// Gives long documents chunks to choose from (`chunks[i]` for candidate
    /// `i`, as the `chunk` module's `chunk_request` cuts them; one chunk means the
    /// document is read whole). Before the schedule, each document with
    /// several chunks in the reorderable ranks gets one window of its chunks;
    /// the best-scoring chunk (the first of equals) then stands for the
    /// document in every window, and [`QueryRerank::finish`] gives back the
    /// whole text. Call before any window is scored.
    pub fn with_chunks(mut self, chunks: Vec<Vec<String>>) -> Result<Self> {
        if chunks.len() != self.list.len() {
            return Err(Error::Invalid(format!(
                "chunks given for {} documents of query {}, which has {}",
                chunks.len(),
                self.query.qid,
                self.list.len()
            )));
        }
        if self.next > 0 || !self.windows.is_empty() {
            return Err(Error::Invalid(format!(
                "chunks given for query {} after its windows started",
                self.query.qid
            )));
        }
        self.selections = chunks
            .into_iter()
            .enumerate()
            .filter(|(i, c)| c.len() > 1 && self.reorderable.contains(i))
            .collect();
        Ok(self)
    }

    pub fn query(&self) -> &Query {
        &self.query
    }

    /// Windows not yet scored (chunk choices included).
    pub fn windows_left(&self) -> usize {
        self.selections.len() + self.schedule.len() - self.next
    }

    fn current(&self) -> Option<Range<usize>> {
        self.schedule.get(self.next).cloned()
    }

    /// The candidates of the next window, in their current order (cloned, so
    /// the scorer borrows nothing mutable); None when the query is done. While
    /// chunks are being chosen, the window is one document's chunks.
    pub fn next_window(&self) -> Option<Vec<Candidate>> {
        if let Some((position, chunks)) = self.selections.first() {
            let doc = &self.list[*position].candidate;
            return Some(
                chunks
                    .iter()
                    .map(|text| Candidate {
                        text: text.clone(),
                        ..doc.clone()
                    })
                    .collect(),
            );
        }
        let range = self.current()?;
        Some(
            self.list[range]
                .iter()
                .map(|c| c.candidate.clone())
                .collect(),
        )
    }

    /// Applies the scores of the next window: a stable sort, descending (or,
    /// for a document's chunks, the choice of its best one).
    pub fn apply(&mut self, scores: Vec<f32>) -> Result<()> {
        if !self.selections.is_empty() {
            return self.choose_chunk(scores);
        }
        let Some(range) = self.current() else {
            return Err(Error::Invalid(format!(
                "scores given for query {} after its last window",
                self.query.qid
            )));
        };
        let len = range.len();
        if scores.len() != len {
            return Err(Error::Invalid(format!(
                "scorer returned {} scores for a window of {} candidates (query {})",
                scores.len(),
                len,
                self.query.qid
            )));
        }
        if let Some(bad) = scores.iter().position(|s| s.is_nan()) {
            return Err(Error::Invalid(format!(
                "scorer returned NaN for candidate {} of window [{}, {}) (query {})",
                bad, range.start, range.end, self.query.qid
            )));
        }
        let window = &mut self.list[range.clone()];
        self.windows.push(WindowRecord {
            start: range.start,
            end: range.end,
            docids: window.iter().map(|c| c.candidate.docid.clone()).collect(),
            scores: scores.clone(),
        });
        let mut order: Vec<usize> = (0..len).collect();
        // Stable: equal scores keep the incoming order.
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        let reordered: Vec<RankedCandidate> = order
            .iter()
            .map(|&i| {
                let mut c = window[i].clone();
                c.model_score = Some(scores[i]);
                c
            })
            .collect();
        window.clone_from_slice(&reordered);
        self.next += 1;
        Ok(())
    }

    fn choose_chunk(&mut self, scores: Vec<f32>) -> Result<()> {
        let (position, chunks) = self.selections.remove(0);
        let doc = &mut self.list[position];
        if scores.len() != chunks.len() {
            return Err(Error::Invalid(format!(
                "scorer returned {} scores for the {} chunks of document {} (query {})",
                scores.len(),
                chunks.len(),
                doc.candidate.docid,
                self.query.qid
            )));
        }
        if scores.iter().any(|s| s.is_nan()) {
            return Err(Error::Invalid(format!(
                "scorer returned NaN for a chunk of document {} (query {})",
                doc.candidate.docid, self.query.qid
            )));
        }
        let mut best = 0;
        for (i, s) in scores.iter().enumerate() {
            if *s > scores[best] {
                best = i;
            }
        }
        let whole = std::mem::replace(&mut doc.candidate.text, chunks[best].clone());
        doc.chunk = Some(best);
        self.full_texts.push((position, whole));
        Ok(())
    }

    /// The result (meant for a query whose windows are all scored). Documents
    /// a chunk stood for get their whole text back.
    pub fn finish(mut self) -> RerankOutcome {
        for (original_rank, whole) in std::mem::take(&mut self.full_texts) {
            if let Some(doc) = self
                .list
                .iter_mut()
                .find(|c| c.original_rank == original_rank)
            {
                doc.candidate.text = whole;
            }
        }
        RerankOutcome {
            query: self.query,
            ranked: self.list,
            windows: self.windows,
        }
    }
}

/// Reranks one query.
pub fn rerank<S: WindowScorer + ?Sized>(
    scorer: &mut S,
    strategy: &WindowStrategy,
    request: Request,
) -> Result<RerankOutcome> {
    let mut out = rerank_batch(scorer, strategy, vec![request])?;
    Ok(out.pop().expect("one request in, one outcome out"))
}

/// Reranks several queries in lockstep: step k of every query's schedule is
/// handed to the scorer as one batch. Results come back in input order.
pub fn rerank_batch<S: WindowScorer + ?Sized>(
    scorer: &mut S,
    strategy: &WindowStrategy,
    requests: Vec<Request>,
) -> Result<Vec<RerankOutcome>> {
    strategy.validate()?;
    let states = requests
        .into_iter()
        .map(|r| QueryRerank::new(r, strategy))
        .collect();
    rerank_lockstep(scorer, states)
}

/// [`rerank_batch`] over queries already started (e.g. given chunks with
/// [`QueryRerank::with_chunks`]); their strategy must have been validated.
pub fn rerank_lockstep<S: WindowScorer + ?Sized>(
    scorer: &mut S,
    mut states: Vec<QueryRerank>,
) -> Result<Vec<RerankOutcome>> {
    loop {
        let active: Vec<(usize, Vec<Candidate>)> = states
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.next_window().map(|w| (i, w)))
            .collect();
        if active.is_empty() {
            break;
        }
        let batch: Vec<(&Query, &[Candidate])> = active
            .iter()
            .map(|(i, w)| (&states[*i].query, w.as_slice()))
            .collect();
        let scores = scorer
            .score_windows(&batch)
            .map_err(|e| Error::Invalid(format!("scoring failed: {e:#}")))?;
        if scores.len() != active.len() {
            return Err(Error::Invalid(format!(
                "scorer returned {} results for a batch of {} windows",
                scores.len(),
                active.len()
            )));
        }
        for ((i, _), s) in active.into_iter().zip(scores) {
            states[i].apply(s)?;
        }
    }
    Ok(states.into_iter().map(QueryRerank::finish).collect())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A query with `n` candidates `d0`.. in first-stage order (also for
    /// the chunk module's tests).
    pub(crate) fn request(n: usize) -> Request {
        Request {
            query: Query {
                qid: "q1".into(),
                text: "query".into(),
                instruction: None,
            },
            candidates: (0..n)
                .map(|i| Candidate {
                    docid: format!("d{i}"),
                    score: (n - i) as f64,
                    title: None,
                    text: format!("passage {i}"),
                })
                .collect(),
        }
    }

    /// Scores each candidate by a fixed hidden relevance, counting calls.
    struct Hidden {
        relevance: HashMap<String, f32>,
        calls: usize,
        max_window: usize,
    }

    impl WindowScorer for Hidden {
        fn score_window(&mut self, _q: &Query, window: &[Candidate]) -> anyhow::Result<Vec<f32>> {
            self.calls += 1;
            self.max_window = self.max_window.max(window.len());
            Ok(window.iter().map(|c| self.relevance[&c.docid]).collect())
        }
    }

    fn ranges(v: &[std::ops::Range<usize>]) -> Vec<(usize, usize)> {
        v.iter().map(|r| (r.start, r.end)).collect()
    }

    #[test]
    fn sliding_window_over_100_is_ranklm_nine_windows_bottom_up() {
        let s = WindowStrategy::sliding(20, 10, 100);
        let expected: Vec<(usize, usize)> = (0..9).rev().map(|k| (k * 10, k * 10 + 20)).collect();
        assert_eq!(ranges(&s.schedule(100)), expected);
        assert_eq!(expected.first(), Some(&(80, 100)));
        assert_eq!(expected.last(), Some(&(0, 20)));
    }

    #[test]
    fn short_lists_end_with_a_short_window_and_no_redundant_one() {
        let s = WindowStrategy::sliding(20, 10, 100);
        // 95 candidates: last window ends at 95, first one is short [0, 15).
        let got = ranges(&s.schedule(95));
        assert_eq!(got.first(), Some(&(75, 95)));
        assert_eq!(got.last(), Some(&(0, 15)));
        assert_eq!(got.len(), 9);
        // Shorter than one window: a single short window.
        assert_eq!(ranges(&s.schedule(15)), vec![(0, 15)]);
        assert_eq!(ranges(&s.schedule(1)), vec![(0, 1)]);
        assert!(s.schedule(0).is_empty());
        // Exactly 30: [10,30), [0,20) -- no trailing [0,10).
        assert_eq!(ranges(&s.schedule(30)), vec![(10, 30), (0, 20)]);
    }

    #[test]
    fn single_window_and_passes_and_rank_start() {
        assert_eq!(
            ranges(&WindowStrategy::single(20).schedule(100)),
            vec![(0, 20)]
        );
        assert_eq!(
            ranges(&WindowStrategy::single(20).schedule(7)),
            vec![(0, 7)]
        );
        let two = WindowStrategy::sliding(20, 10, 100)
            .with_passes(2)
            .schedule(100);
        assert_eq!(two.len(), 18);
        assert_eq!(ranges(&two[9..10]), vec![(80, 100)]);
        let from10 = WindowStrategy::sliding(20, 10, 50)
            .with_rank_start(10)
            .schedule(100);
        assert_eq!(ranges(&from10), vec![(30, 50), (20, 40), (10, 30)]);
    }

    #[test]
    fn absolute_scores_get_one_window_over_the_reorderable_ranks() {
        let s = WindowStrategy::sliding(20, 10, 100).with_passes(2);
        assert_eq!(s.for_scale(ScoreScale::WithinWindow), s);
        let one = s.for_scale(ScoreScale::Probability);
        assert_eq!(ranges(&one.schedule(100)), vec![(0, 100)]);
        assert_eq!(ranges(&one.schedule(30)), vec![(0, 30)]);
        let from5 = WindowStrategy::sliding(20, 10, 50).with_rank_start(5);
        assert_eq!(
            ranges(&from5.for_scale(ScoreScale::Logit).schedule(100)),
            vec![(5, 50)]
        );
    }

    #[test]
    fn invalid_strategies_are_rejected() {
        assert!(WindowStrategy::sliding(20, 0, 100).validate().is_err());
        assert!(WindowStrategy::sliding(20, 30, 100).validate().is_err());
        assert!(WindowStrategy::sliding(0, 0, 100).validate().is_err());
        assert!(WindowStrategy::sliding(20, 10, 0).validate().is_err());
        assert!(WindowStrategy::sliding(20, 10, 100)
            .with_passes(0)
            .validate()
            .is_err());
    }

    #[test]
    fn oracle_sliding_window_carries_the_true_top_ten_to_the_top() {
        // Relevance is a fixed pseudo-random permutation of 0..100.
        let n = 100;
        let mut relevance = HashMap::new();
        for i in 0..n {
            relevance.insert(format!("d{i}"), ((i * 37 + 11) % n) as f32);
        }
        let mut scorer = Hidden {
            relevance: relevance.clone(),
            calls: 0,
            max_window: 0,
        };
        let out = rerank(&mut scorer, &WindowStrategy::default(), request(n)).unwrap();
        assert_eq!(scorer.calls, 9);
        assert_eq!(scorer.max_window, 20);
        assert_eq!(out.windows.len(), 9);
        let top10: Vec<f32> = out.ranked[..10]
            .iter()
            .map(|c| relevance[&c.candidate.docid])
            .collect();
        assert_eq!(top10, (90..100).rev().map(|v| v as f32).collect::<Vec<_>>());
        // Every candidate is still there exactly once.
        let mut ids: Vec<_> = out
            .ranked
            .iter()
            .map(|c| c.candidate.docid.clone())
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n);
        // Rank scores strictly decrease.
        let s = out.rank_scores();
        assert!(s.windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn ties_keep_the_incoming_order() {
        struct Flat;
        impl WindowScorer for Flat {
            fn score_window(&mut self, _q: &Query, w: &[Candidate]) -> anyhow::Result<Vec<f32>> {
                Ok(vec![1.0; w.len()])
            }
        }
        let out = rerank(&mut Flat, &WindowStrategy::default(), request(100)).unwrap();
        let ids: Vec<_> = out.ranked.iter().map(|c| c.original_rank).collect();
        assert_eq!(ids, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn window_records_hold_raw_scores_in_model_order() {
        struct Reverse;
        impl WindowScorer for Reverse {
            fn score_window(&mut self, _q: &Query, w: &[Candidate]) -> anyhow::Result<Vec<f32>> {
                Ok((0..w.len()).map(|i| i as f32).collect())
            }
        }
        let out = rerank(&mut Reverse, &WindowStrategy::single(5), request(8)).unwrap();
        let order: Vec<_> = out.ranked.iter().map(|c| c.original_rank).collect();
        assert_eq!(order, vec![4, 3, 2, 1, 0, 5, 6, 7]);
        assert_eq!(out.windows[0].docids, vec!["d0", "d1", "d2", "d3", "d4"]);
        assert_eq!(out.windows[0].scores, vec![0.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(out.ranked[0].model_score, Some(4.0));
        assert_eq!(out.ranked[7].model_score, None);
    }

    #[test]
    fn bad_scorer_output_is_an_error_not_a_panic() {
        struct Wrong(usize);
        impl WindowScorer for Wrong {
            fn score_window(&mut self, _q: &Query, w: &[Candidate]) -> anyhow::Result<Vec<f32>> {
                Ok(if self.0 == 0 {
                    vec![0.0; w.len() + 1]
                } else {
                    vec![f32::NAN; w.len()]
                })
            }
        }
        assert!(rerank(&mut Wrong(0), &WindowStrategy::default(), request(30)).is_err());
        assert!(rerank(&mut Wrong(1), &WindowStrategy::default(), request(30)).is_err());
    }

    #[test]
    fn chunks_for_the_wrong_number_of_documents_are_refused() {
        let state = QueryRerank::new(request(3), &WindowStrategy::single(3));
        assert!(state.with_chunks(vec![vec![]; 2]).is_err());
    }

    #[test]
    fn batched_queries_match_one_by_one() {
        let mut relevance = HashMap::new();
        for i in 0..100 {
            relevance.insert(format!("d{i}"), ((i * 53 + 7) % 100) as f32);
        }
        let mk = || Hidden {
            relevance: relevance.clone(),
            calls: 0,
            max_window: 0,
        };
        let reqs = vec![request(100), request(45), request(3), request(0)];
        let mut batched = mk();
        let together =
            rerank_batch(&mut batched, &WindowStrategy::default(), reqs.clone()).unwrap();
        let mut single = mk();
        let apart: Vec<_> = reqs
            .into_iter()
            .map(|r| rerank(&mut single, &WindowStrategy::default(), r).unwrap())
            .collect();
        assert_eq!(together, apart);
        assert_eq!(batched.calls, single.calls);
    }
}
