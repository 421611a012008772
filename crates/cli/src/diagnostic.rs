//! Diagnostic scorers that need no model: an oracle driven by qrels and one
//! that reverses each window. They make the window strategies, formats and
//! metrics testable end to end; they are test tools, not rerankers.

use firstrank_core::qrels::Qrels;
use firstrank_core::window::WindowScorer;
use firstrank_core::{Candidate, Query};

/// Scores a candidate by its judged grade (unjudged = 0, like trec_eval's
/// unjudged = non-relevant). With a sliding window it must reach the nDCG of
/// the ideal reordering of the candidate list.
pub struct OracleScorer {
    pub qrels: Qrels,
}

impl WindowScorer for OracleScorer {
    fn score_window(&mut self, query: &Query, window: &[Candidate]) -> anyhow::Result<Vec<f32>> {
        Ok(window
            .iter()
            .map(|c| self.qrels.grade(&query.qid, &c.docid).unwrap_or(0).max(0) as f32)
            .collect())
    }
}

/// Puts each window in reverse incoming order.
pub struct ReverseScorer;

impl WindowScorer for ReverseScorer {
    fn score_window(&mut self, _query: &Query, window: &[Candidate]) -> anyhow::Result<Vec<f32>> {
        Ok((0..window.len()).map(|i| i as f32).collect())
    }
}
