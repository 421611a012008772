//! The request and response types of the HTTP API, and the validated form a
//! rerank request takes after parsing.
//!
//! Response types are what the handlers serialize. Request types describe the
//! bodies the endpoints accept; the bodies themselves are checked field by
//! field by [`crate::parse`] (for messages that name the field), and a unit
//! test keeps these types and that parser in agreement. Every type here
//! derives `utoipa::ToSchema`, so the OpenAPI document ([`crate::openapi`])
//! is generated from them rather than kept by hand.

use firstrank_core::window::{RerankOutcome, ScoreScale};
use firstrank_core::{Candidate, Query, Request};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

// ---------------------------------------------------------------------------
// Validated requests (internal)

/// Which response shape a rerank request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Cohere v1 / Jina / llama.cpp: `documents` in, `results` object out.
    Jina,
    /// Cohere v2 (`/v2/rerank`): same fields, documents not returned by default.
    CohereV2,
    /// Hugging Face TEI: `texts` in, a bare array out.
    Tei,
}

/// One document to rerank, as given.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub text: String,
    pub title: Option<String>,
}

/// A validated rerank request.
#[derive(Debug, Clone)]
pub struct RerankInput {
    pub shape: Shape,
    pub query: String,
    pub docs: Vec<Doc>,
    pub top_n: Option<usize>,
    pub return_documents: bool,
    pub raw_scores: bool,
    /// TEI `truncate: true`: cut documents over the byte limit instead of a 413.
    pub truncate: bool,
    /// Cohere v2 `max_tokens_per_doc`: each document is cut to this many tokens.
    pub max_tokens_per_doc: Option<usize>,
    /// Cohere `max_chunks_per_doc`: a longer document is cut into up to this
    /// many chunks and stands by its best one (default 1: read as it comes).
    pub max_chunks_per_doc: Option<usize>,
    /// The pointwise mode's task instruction for this request.
    pub instruction: Option<String>,
}

impl RerankInput {
    /// The request handed to the window strategy: docids are the input
    /// indices, first-stage order is the input order.
    pub fn to_request(&self) -> Request {
        let n = self.docs.len();
        Request {
            query: Query {
                qid: "0".into(),
                text: self.query.clone(),
                instruction: self.instruction.clone(),
            },
            candidates: self
                .docs
                .iter()
                .enumerate()
                .map(|(i, d)| Candidate {
                    docid: i.to_string(),
                    score: (n - i) as f64,
                    title: d.title.clone(),
                    text: d.text.clone(),
                })
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------
// Request bodies (documented shapes)

/// A document: a string, or an object with `text` and an optional `title`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum DocumentIn {
    Text(String),
    Object {
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
    },
}

/// Cohere v1/v2, Jina and llama.cpp rerank request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RerankRequest {
    /// The query (non-empty).
    #[schema(min_length = 1)]
    pub query: String,
    /// The documents to rerank, in first-stage order.
    #[schema(min_items = 1)]
    pub documents: Vec<DocumentIn>,
    /// Return only the best `top_n` results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub top_n: Option<u64>,
    /// Include `document.text` in the results (default true on `/rerank` and
    /// `/v1/rerank`, false on `/v2/rerank`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_documents: Option<bool>,
    /// Add `raw_score` (the model's raw score) to each result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_scores: Option<bool>,
    /// Cut each document to this many tokens before scoring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub max_tokens_per_doc: Option<u64>,
    /// Cut a document longer than the model's passage budget into up to this
    /// many overlapping chunks; it is ranked by its best chunk (default 1: the
    /// document is cut to the budget). At most the window size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub max_chunks_per_doc: Option<u64>,
    /// The task instruction of a pointwise model's prompt (`--mode
    /// pointwise`; default: the server's `--instruction` or the template's).
    /// Other models ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction: Option<String>,
    /// Accepted and ignored: the server serves one model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// Hugging Face TEI rerank request (told apart by its `texts` field).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TeiRequest {
    #[schema(min_length = 1)]
    pub query: String,
    #[schema(min_items = 1)]
    pub texts: Vec<String>,
    /// Include `text` in the results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_text: Option<bool>,
    /// `score` is the raw model score instead of the rank-based one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_scores: Option<bool>,
    /// Cut documents over `--max-document-bytes` instead of answering 413.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncate: Option<bool>,
    /// Accepted for compatibility; only its type is checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncation_direction: Option<String>,
}

/// The body of `/rerank` and `/v1/rerank`: either shape.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum AnyRerankRequest {
    Rerank(RerankRequest),
    Tei(TeiRequest),
}

/// A string or an integer id.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Id {
    Text(String),
    Number(i64),
}

/// The query of a rank_llm request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RankLlmQuery {
    #[schema(min_length = 1)]
    pub text: String,
    pub qid: Id,
}

/// The passage of a rank_llm candidate: text in `contents`, `text`,
/// `segment`, `body` or `passage` (the first present), optional `title`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RankLlmDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

/// One candidate of a rank_llm request (docids unique within a query).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RankLlmCandidate {
    pub docid: Id,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    pub doc: RankLlmDoc,
}

/// A rank_llm request: one query and its candidates.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RankLlmRequest {
    pub query: RankLlmQuery,
    pub candidates: Vec<RankLlmCandidate>,
}

/// A batch as `{"requests": [...]}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchObject {
    pub requests: Vec<RankLlmRequest>,
}

/// The body of the batch routes (qids unique): a JSON array, `{"requests":
/// [...]}`, or one request object per line (`application/x-ndjson`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum BatchRequest {
    Array(Vec<RankLlmRequest>),
    Object(BatchObject),
}

// ---------------------------------------------------------------------------
// Responses

/// A returned document.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DocumentOut {
    pub text: String,
}

/// One result of a Cohere/Jina response, best first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RerankResult {
    /// Position of the document in the request.
    pub index: usize,
    /// Listwise models: rank-based relevance in (0, 1], `(n - rank) / n`;
    /// cross-encoders: the model's probability of relevance.
    pub relevance_score: f64,
    /// The model's raw score from the last window that placed the document
    /// (only with `raw_scores`; null when it was never scored).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<f32>, nullable)]
    pub raw_score: Option<Option<f32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<DocumentOut>,
}

/// Token counts of a request.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

/// The Cohere v1/v2, Jina and llama.cpp response.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RerankResponse {
    pub id: String,
    pub model: String,
    /// Always `list`.
    pub object: &'static str,
    pub results: Vec<RerankResult>,
    pub usage: Usage,
    /// Cohere's `meta`: `api_version`, `billed_units`, `tokens`.
    #[schema(value_type = Object)]
    pub meta: Value,
}

/// One result of a TEI response, best first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TeiResult {
    pub index: usize,
    /// As `relevance_score` of the Cohere shape, or the raw model score
    /// with `raw_scores`.
    pub score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// What `/rerank` and `/v1/rerank` answer: the Cohere/Jina object, or TEI's
/// bare array when the request had `texts`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum AnyRerankResponse {
    Rerank(RerankResponse),
    Tei(Vec<TeiResult>),
}

/// The error body of every route.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The message (TEI's field).
    pub error: String,
    /// Stable kind: `invalid_json`, `invalid_request`, `payload_too_large`,
    /// `unsupported_media_type`, `overloaded`, `timeout`, `unauthorized`, ...
    pub error_type: String,
    /// The message again (what Cohere-style clients print).
    pub message: String,
}

/// `GET /health`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HealthResponse {
    /// `ok` when the scoring worker can serve, else why not.
    pub status: String,
    pub model: String,
    pub queue_depth: u64,
    pub pending_windows: u64,
    /// Scorer panics caught so far (each answered 500).
    pub scorer_panics: u64,
    pub uptime_seconds: u64,
}

/// `GET /info`: the model, strategy, limits and queue settings.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InfoResponse {
    pub model: String,
    pub version: &'static str,
    /// The window strategy (size, stride, passes, ...).
    #[schema(value_type = Object)]
    pub strategy: Value,
    #[schema(value_type = Object)]
    pub limits: Value,
    pub queue_capacity: usize,
    pub max_batch_queries: usize,
    pub max_concurrent_requests: usize,
    pub request_timeout_seconds: f64,
    pub batch_timeout_seconds: f64,
    /// Measured mean seconds per window (null before the first batch).
    pub seconds_per_window: Option<f64>,
    /// `model`, or `estimate (bytes / 4)` without the model's tokenizer.
    pub tokenizer: &'static str,
}

/// Rank-based relevance in (0, 1]: 1 for the top document, 1/n for the last.
pub fn rank_score(rank: usize, n: usize) -> f64 {
    (n - rank) as f64 / n as f64
}

/// The relevance score of the document at `rank` of `n`: the model's own
/// score where it is a probability (or a logit of one), else rank-based.
pub fn relevance(scale: ScoreScale, model_score: Option<f32>, rank: usize, n: usize) -> f64 {
    match (scale, model_score) {
        (ScoreScale::Probability, Some(p)) => f64::from(p),
        (ScoreScale::Logit, Some(x)) => 1.0 / (1.0 + (-f64::from(x)).exp()),
        // Never scored (beyond the strategy's reach): below every scored one.
        (ScoreScale::Probability | ScoreScale::Logit, None) => 0.0,
        (ScoreScale::WithinWindow, _) => rank_score(rank, n),
    }
}

/// The response for `input` given the reranked `outcome`; `scale` says what
/// the model's scores mean.
pub fn render(
    input: &RerankInput,
    outcome: &RerankOutcome,
    scale: ScoreScale,
    model: &str,
    id: &str,
    tokens: usize,
) -> AnyRerankResponse {
    let n = outcome.ranked.len();
    let keep = input.top_n.unwrap_or(n).min(n);
    // docids are the input indices (see RerankInput::to_request).
    let ranked = &outcome.ranked[..keep];
    match input.shape {
        Shape::Tei => AnyRerankResponse::Tei(
            ranked
                .iter()
                .enumerate()
                .map(|(r, c)| TeiResult {
                    index: c.original_rank,
                    score: if input.raw_scores {
                        c.model_score.map(f64::from)
                    } else {
                        Some(relevance(scale, c.model_score, r, n))
                    },
                    text: input
                        .return_documents
                        .then(|| input.docs[c.original_rank].text.clone()),
                })
                .collect(),
        ),
        Shape::Jina | Shape::CohereV2 => AnyRerankResponse::Rerank(RerankResponse {
            id: id.to_string(),
            model: model.to_string(),
            object: "list",
            results: ranked
                .iter()
                .enumerate()
                .map(|(r, c)| RerankResult {
                    index: c.original_rank,
                    relevance_score: relevance(scale, c.model_score, r, n),
                    raw_score: input.raw_scores.then_some(c.model_score),
                    document: input.return_documents.then(|| DocumentOut {
                        text: input.docs[c.original_rank].text.clone(),
                    }),
                })
                .collect(),
            usage: Usage {
                prompt_tokens: tokens,
                total_tokens: tokens,
            },
            meta: serde_json::json!({
                "api_version": {"version": if input.shape == Shape::CohereV2 { "2" } else { "1" }},
                "billed_units": {"search_units": 1},
                "tokens": {"input_tokens": tokens, "output_tokens": 0},
            }),
        }),
    }
}
