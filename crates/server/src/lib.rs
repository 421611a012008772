//! firstrank-server: the reranking HTTP server behind `firstrank serve`.
//!
//! It speaks the rerank APIs search and RAG stacks already call (Cohere v1/v2,
//! Jina, llama.cpp, Hugging Face TEI) plus a batch endpoint taking rank_llm
//! request JSON, over any [`WindowScorer`] and [`WindowStrategy`]; model
//! loading stays in the CLI, so tests inject fast deterministic scorers.
//!
//! Routes (all JSON; errors are `{"error", "error_type", "message"}`):
//! `POST /rerank`, `POST /v1/rerank` (Jina/Cohere v1 shape, or TEI's when the
//! body has `texts`), `POST /v2/rerank` (Cohere v2), `POST /rerank/batch` and
//! `POST /v1/rerank/batch` (rank_llm requests in, result JSONL out),
//! `GET /health` (never needs the API key), `GET /info`, `GET /metrics`
//! (Prometheus), `GET /openapi.json`.
//!
//! Under load: the scorer runs on one worker thread fed by a bounded queue
//! (see [`engine`]); requests beyond the queue, beyond the work that fits in
//! the request timeout, or beyond `max_concurrent_requests` get 429 with
//! `Retry-After`. Bodies, documents, per-document bytes and tokens are
//! limited ([`Limits`]): 413 with a JSON error. Shutdown stops accepting
//! connections, lets in-flight requests finish, then stops the worker.

pub mod api;
pub mod engine;
pub mod error;
pub mod lexical;
pub mod metrics;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use firstrank_core::prompt::TokenCounter;
use firstrank_core::window::{RerankOutcome, WindowStrategy};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

pub use engine::BoxScorer;
use engine::Engine;
pub use error::ApiError;
use metrics::Metrics;

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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_documents: 100,
            max_document_bytes: 64 * 1024,
            max_total_tokens: 100_000,
            max_body_bytes: 2 * 1024 * 1024,
            max_batch_queries: 64,
        }
    }
}

/// Everything the server needs besides the scorer.
#[derive(Debug, Clone)]
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
    /// Bearer key required on every route but `/health`.
    pub api_key: Option<String>,
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
            api_key: None,
            initial_seconds_per_window: None,
        }
    }
}

struct AppState {
    config: ServerConfig,
    engine: Engine,
    metrics: Arc<Metrics>,
    counter: Option<SharedTokenCounter>,
    /// SHA-256 of the API key: comparing digests in constant time hides the length too.
    key_digest: Option<[u8; 32]>,
    permits: Arc<Semaphore>,
    next_id: AtomicU64,
    started: Instant,
}

/// A configured server: the worker is running; [`Server::serve`] accepts connections.
pub struct Server {
    state: Arc<AppState>,
}

impl Server {
    /// Starts the scoring worker. `counter` is the model's tokenizer; without
    /// one, tokens are estimated as bytes / 4.
    pub fn new(
        config: ServerConfig,
        scorer: BoxScorer,
        counter: Option<SharedTokenCounter>,
    ) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::default());
        let engine = Engine::start(
            scorer,
            config.strategy,
            config.queue_capacity,
            config.max_batch_queries,
            metrics.clone(),
            config.initial_seconds_per_window,
        )?;
        let key_digest = match &config.api_key {
            Some(k) if k.is_empty() => anyhow::bail!("the API key must not be empty"),
            Some(k) => Some(Sha256::digest(k.as_bytes()).into()),
            None => None,
        };
        Ok(Self {
            state: Arc::new(AppState {
                permits: Arc::new(Semaphore::new(config.max_concurrent_requests.max(1))),
                config,
                engine,
                metrics,
                counter,
                key_digest,
                next_id: AtomicU64::new(1),
                started: Instant::now(),
            }),
        })
    }

    /// The axum router (for embedding the endpoints in another server).
    pub fn router(&self) -> Router {
        let state = self.state.clone();
        let rerank = Router::new()
            .route("/rerank", post(rerank_v1))
            .route("/v1/rerank", post(rerank_v1))
            .route("/v2/rerank", post(rerank_v2))
            .route("/rerank/batch", post(batch))
            .route("/v1/rerank/batch", post(batch))
            .route_layer(middleware::from_fn_with_state(
                state.clone(),
                concurrency_guard,
            ));
        let protected = Router::new()
            .route("/info", get(info))
            .route("/metrics", get(metrics_text))
            .route("/openapi.json", get(openapi))
            .merge(rerank)
            .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
        Router::new()
            .route("/health", get(health))
            .merge(protected)
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(middleware::from_fn_with_state(state.clone(), observe))
            .with_state(state)
    }

    /// Serves on `listener` until `shutdown` resolves, then lets in-flight
    /// requests finish and stops the worker after the jobs it holds.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let app = self.router();
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await?;
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || state.engine.shutdown()).await?;
        Ok(())
    }

    /// Binds `addr` and serves until Ctrl-C or SIGTERM (blocking; builds its
    /// own runtime). Used by `firstrank serve`.
    pub fn run(self, addr: SocketAddr) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("firstrank-http")
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
            tracing::info!(
                "serving {} on http://{} (POST /rerank, /v1/rerank, /v2/rerank, /rerank/batch; GET /health, /metrics, /openapi.json)",
                self.state.config.model_name,
                listener.local_addr()?
            );
            self.serve(listener, shutdown_signal()).await
        })
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

// ---------------------------------------------------------------------------
// Middleware

/// Counts every response by route and status and times it.
async fn observe(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let resp = next.run(req).await;
    state.metrics.observe_request(
        &route,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

/// Bearer API key, compared in constant time.
async fn require_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(want) = &state.key_digest {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(|k| k.trim());
        let ok = given.is_some_and(|k| {
            let got: [u8; 32] = Sha256::digest(k.as_bytes()).into();
            bool::from(got.ct_eq(want))
        });
        if !ok {
            state.metrics.reject("unauthorized");
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong API key: send `Authorization: Bearer <key>`",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Caps the requests held at once (bodies in memory, queued or scoring).
async fn concurrency_guard(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let Ok(_permit) = state.permits.clone().try_acquire_owned() else {
        state.metrics.reject("overloaded");
        return ApiError::overloaded(
            format!(
                "too many concurrent requests (limit {}); retry later",
                state.config.max_concurrent_requests
            ),
            1,
        )
        .into_response();
    };
    next.run(req).await
}

// ---------------------------------------------------------------------------
// Handlers

async fn health(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(serde_json::json!({
        "status": "ok",
        "model": state.config.model_name,
        "queue_depth": state.metrics.queue_depth.load(Ordering::Relaxed),
        "pending_windows": state.metrics.pending_windows.load(Ordering::Relaxed),
        "uptime_seconds": state.started.elapsed().as_secs(),
    }))
    .into_response()
}

async fn info(State(state): State<Arc<AppState>>) -> Response {
    let c = &state.config;
    axum::Json(serde_json::json!({
        "model": c.model_name,
        "version": env!("CARGO_PKG_VERSION"),
        "strategy": c.strategy,
        "limits": c.limits,
        "queue_capacity": c.queue_capacity,
        "max_batch_queries": c.max_batch_queries,
        "max_concurrent_requests": c.max_concurrent_requests,
        "request_timeout_seconds": c.request_timeout.as_secs_f64(),
        "batch_timeout_seconds": c.batch_timeout.as_secs_f64(),
        "seconds_per_window": state.engine.secs_per_window(),
        "tokenizer": if state.counter.is_some() { "model" } else { "estimate (bytes / 4)" },
    }))
    .into_response()
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// The OpenAPI 3.1 description of the routes (hand-written JSON file).
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI_JSON,
    )
        .into_response()
}

async fn not_found() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; see GET /openapi.json",
    )
    .into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route (rerank routes take POST with a JSON body)",
    )
    .into_response()
}

fn respond(state: &AppState, result: Result<Response, ApiError>) -> Response {
    match result {
        Ok(r) => r,
        Err(e) => {
            if e.status != StatusCode::UNAUTHORIZED {
                state.metrics.reject(e.kind);
            }
            if e.status.is_server_error() {
                tracing::warn!("{e}");
            }
            e.into_response()
        }
    }
}

async fn rerank_v1(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let r = rerank(&state, &headers, body, false).await;
    respond(&state, r)
}

async fn rerank_v2(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let r = rerank(&state, &headers, body, true).await;
    respond(&state, r)
}

async fn batch(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let r = batch_inner(&state, &headers, body).await;
    respond(&state, r)
}

/// Reads the body within the size and time limits.
async fn read_body(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let limit = state.config.limits.max_body_bytes;
    let too_large = || {
        ApiError::too_large(format!(
            "the request body is larger than the limit of {limit} bytes (--max-body-bytes)"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(
        state.config.body_read_timeout,
        axum::body::to_bytes(body, limit),
    )
    .await
    {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body was not received within {}s",
                state.config.body_read_timeout.as_secs()
            ),
        )),
        Ok(Err(e)) => {
            let mut source: Option<&dyn std::error::Error> = Some(&e);
            while let Some(s) = source {
                if s.to_string().contains("length limit") {
                    return Err(too_large());
                }
                source = s.source();
            }
            Err(ApiError::invalid_json(format!(
                "could not read the request body: {e}"
            )))
        }
        Ok(Ok(b)) => Ok(b),
    }
}

/// Token count of a request's query and documents; applies `max_tokens_per_doc`.
fn count_tokens(
    counter: Option<&SharedTokenCounter>,
    input: &mut api::RerankInput,
) -> Result<usize, ApiError> {
    let count = |s: &str| -> Result<usize, ApiError> {
        match counter {
            Some(c) => c.count_tokens(s).map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "tokenizer",
                    format!("tokenizer failed: {e:#}"),
                )
            }),
            None => Ok(s.len().div_ceil(4)),
        }
    };
    let mut total = count(&input.query)?;
    let cap = input.max_tokens_per_doc;
    for doc in &mut input.docs {
        let mut n = count(&doc.text)?;
        if let Some(m) = cap.filter(|&m| n > m) {
            doc.text = match counter {
                Some(c) => c.truncate_to_tokens(&doc.text, m).map_err(|e| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "tokenizer",
                        format!("tokenizer failed: {e:#}"),
                    )
                })?,
                None => {
                    let mut end = (m * 4).min(doc.text.len());
                    while !doc.text.is_char_boundary(end) {
                        end -= 1;
                    }
                    doc.text[..end].to_string()
                }
            };
            n = m;
        }
        total += n + doc.title.as_deref().map_or(Ok(0), count)?;
    }
    Ok(total)
}

fn check_tokens(state: &AppState, tokens: usize, what: &str) -> Result<(), ApiError> {
    let max = state.config.limits.max_total_tokens;
    if tokens > max {
        return Err(ApiError::too_large(format!(
            "{what} has {tokens} tokens (query + documents); the limit is {max} (--max-total-tokens)"
        )));
    }
    Ok(())
}

/// Waits for the worker's answer within the timeout.
async fn await_job(
    state: &AppState,
    rx: tokio::sync::oneshot::Receiver<engine::JobResult>,
    timeout: Duration,
) -> Result<Vec<RerankOutcome>, ApiError> {
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "worker_stopped",
            "the scoring worker stopped before answering",
        )),
        Err(_) => {
            let retry = state.engine.secs_per_window().map_or(1, |s| {
                (s * state.metrics.pending_windows.load(Ordering::Relaxed) as f64).ceil() as u64
            });
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!(
                    "the request was not scored within the timeout of {}s (--request-timeout); the server is overloaded",
                    timeout.as_secs_f64()
                ),
            )
            .with_retry_after(retry))
        }
    }
}

async fn rerank(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    body: Body,
    v2: bool,
) -> Result<Response, ApiError> {
    let bytes = read_body(state, headers, body).await?;
    let limits = state.config.limits.clone();
    let counter = state.counter.clone();
    // Parsing and tokenizing up to a few MB is CPU work: keep it off the I/O threads.
    let (input, tokens) = tokio::task::spawn_blocking(move || {
        let value = api::parse_json(&bytes)?;
        drop(bytes);
        let mut input = api::parse_rerank(value, v2, &limits)?;
        let tokens = count_tokens(counter.as_ref(), &mut input)?;
        Ok::<_, ApiError>((input, tokens))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    check_tokens(state, tokens, "the request")?;
    let timeout = state.config.request_timeout;
    let rx = state.engine.submit(vec![input.to_request()], timeout)?;
    state
        .metrics
        .tokens
        .fetch_add(tokens as u64, Ordering::Relaxed);
    state
        .metrics
        .documents
        .fetch_add(input.docs.len() as u64, Ordering::Relaxed);
    let mut outcomes = await_job(state, rx, timeout).await?;
    let outcome = outcomes.pop().ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "no result for the request",
        )
    })?;
    let id = format!(
        "firstrank-{}",
        state.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let body = api::render(&input, &outcome, &state.config.model_name, &id, tokens);
    Ok(axum::Json(body).into_response())
}

async fn batch_inner(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(state, headers, body).await?;
    let limits = state.config.limits.clone();
    let counter = state.counter.clone();
    let (requests, tokens) = tokio::task::spawn_blocking(move || {
        let requests = api::parse_batch(&bytes, &limits)?;
        let mut per_query = Vec::with_capacity(requests.len());
        for r in &requests {
            let mut input = api::RerankInput {
                shape: api::Shape::Jina,
                query: r.query.text.clone(),
                docs: r
                    .candidates
                    .iter()
                    .map(|c| api::Doc {
                        text: c.text.clone(),
                        title: c.title.clone(),
                    })
                    .collect(),
                top_n: None,
                return_documents: false,
                raw_scores: false,
                truncate: false,
                max_tokens_per_doc: None,
            };
            per_query.push((
                r.query.qid.clone(),
                count_tokens(counter.as_ref(), &mut input)?,
            ));
        }
        Ok::<_, ApiError>((requests, per_query))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    for (qid, n) in &tokens {
        check_tokens(state, *n, &format!("query `{qid}`"))?;
    }
    let total: usize = tokens.iter().map(|(_, n)| n).sum();
    let docs: usize = requests.iter().map(|r| r.candidates.len()).sum();
    let timeout = state.config.batch_timeout;
    let rx = state.engine.submit(requests, timeout)?;
    state
        .metrics
        .tokens
        .fetch_add(total as u64, Ordering::Relaxed);
    state
        .metrics
        .documents
        .fetch_add(docs as u64, Ordering::Relaxed);
    let outcomes = await_job(state, rx, timeout).await?;
    let mut out = String::new();
    for o in &outcomes {
        out.push_str(
            &firstrank_core::formats::output::format_jsonl(o).map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?,
        );
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        )],
        out,
    )
        .into_response())
}
