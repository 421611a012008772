//! The server's configuration: per-request limits and everything else
//! [`crate::Server`] needs besides the scorer.

use std::sync::Arc;
use std::time::Duration;

use firstrank_core::prompt::TokenCounter;
use firstrank_core::window::WindowStrategy;

/// Counts tokens for the limits and the `usage` fields (the model's tokenizer).
pub type SharedTokenCounter = Arc<dyn TokenCounter + Send + Sync>;

/// Per-request limits. Over a limit: 413 with a JSON error naming it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Limits {
    /// Documents per rerank request (candidates per query in a batch).
    pub max_documents: usize,
    /// Bytes of one document (text + title) and of the query.
    pub max_document_bytes: usize,
    /// Tokens of the query plus all documents of one query.
    pub max_total_tokens: usize,
    /// Bytes of a request body.
    pub max_body_bytes: usize,
    /// Queries in one batch request.
    pub max_batch_queries: usize,
    /// Tokens of the query alone: the prompt shows it twice around the
    /// passages, so a query near the model's context leaves no room for them
    /// (the CLI sets it from the model's context).
    pub max_query_tokens: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_documents: 100,
            max_document_bytes: 64 * 1024,
            max_total_tokens: 100_000,
            max_body_bytes: 2 * 1024 * 1024,
            max_batch_queries: 64,
            max_query_tokens: 512,
        }
    }
}

/// Everything the server needs besides the scorer. Its `Debug` leaves the
/// API key out.
#[derive(Clone)]
pub struct ServerConfig {
    /// Reported as `model` in responses and on `/info`.
    pub model_name: String,
    pub strategy: WindowStrategy,
    pub limits: Limits,
    /// Jobs that may wait for the worker; beyond this, 429.
    pub queue_capacity: usize,
    /// Queries the worker scores together (lockstep windows).
    pub max_batch_queries: usize,
    /// Requests being read, validated, queued or scored at once; beyond, 429.
    pub max_concurrent_requests: usize,
    /// How long a rerank request may wait and run before a 503.
    pub request_timeout: Duration,
    /// The same for the batch endpoint.
    pub batch_timeout: Duration,
    /// How long reading a request body may take before a 408.
    pub body_read_timeout: Duration,
    /// How long a connection may take to send a request's headers (slow or
    /// stalled clients are closed after it, also when idle before the first).
    pub header_read_timeout: Duration,
    /// Open connections at once; beyond it new connections are closed at
    /// once (with a log line) until some finish. Keep it below the process's
    /// file-descriptor limit ([`crate::Server::run`] lowers it to fit).
    pub max_connections: usize,
    /// After a shutdown signal, how long in-flight requests may take to
    /// finish before their connections are dropped.
    pub shutdown_timeout: Duration,
    /// Bearer key required on every route but `/health`.
    pub api_key: Option<String>,
    /// Browser origins allowed to call the API (CORS); empty: no CORS
    /// headers, so browsers on other origins cannot read responses.
    pub cors_allow_origins: Vec<String>,
    /// Seconds one window takes, measured before serving (e.g. a warm-up
    /// window); admission control uses it until real batches are measured.
    /// Without it, requests are admitted up to the queue capacity until then.
    pub initial_seconds_per_window: Option<f64>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            model_name: "firstrank".into(),
            strategy: WindowStrategy::sliding(20, 10, usize::MAX),
            limits: Limits::default(),
            queue_capacity: 64,
            max_batch_queries: 4,
            max_concurrent_requests: 128,
            request_timeout: Duration::from_secs(120),
            batch_timeout: Duration::from_secs(600),
            body_read_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1000,
            shutdown_timeout: Duration::from_secs(30),
            api_key: None,
            cors_allow_origins: Vec::new(),
            initial_seconds_per_window: None,
        }
    }
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("model_name", &self.model_name)
            .field("strategy", &self.strategy)
            .field("limits", &self.limits)
            .field("queue_capacity", &self.queue_capacity)
            .field("max_batch_queries", &self.max_batch_queries)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("request_timeout", &self.request_timeout)
            .field("batch_timeout", &self.batch_timeout)
            .field("body_read_timeout", &self.body_read_timeout)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("max_connections", &self.max_connections)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("cors_allow_origins", &self.cors_allow_origins)
            .field(
                "initial_seconds_per_window",
                &self.initial_seconds_per_window,
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_redacts_the_api_key() {
        let config = ServerConfig {
            api_key: Some("hunter2-secret".into()),
            ..ServerConfig::default()
        };
        let text = format!("{config:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }
}
