//! The data every stage passes around: a query and its first-stage candidates.

use serde::{Deserialize, Serialize};

/// A search query. `qid` is kept as text: TREC qids are usually numeric but
/// nothing downstream relies on that.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Query {
    pub qid: String,
    pub text: String,
    /// A task instruction for the pointwise mode's prompt (the API's
    /// `instruction`); `None` uses the scorer's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction: Option<String>,
}

/// One first-stage candidate passage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub docid: String,
    /// First-stage retrieval score (BM25, dense, ...).
    pub score: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub text: String,
}

/// A query with its candidates in first-stage order (best first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub query: Query,
    pub candidates: Vec<Candidate>,
}
