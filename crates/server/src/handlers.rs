//! The HTTP handlers and middleware: reading and limiting bodies, auth,
//! the concurrency cap, and each route's handler (annotated for the OpenAPI
//! document, see [`crate::openapi`]). Routing itself is wired in `lib.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use firstrank_core::window::{RerankOutcome, ScoreScale};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use crate::config::{ServerConfig, SharedTokenCounter};
use crate::engine::{self, Engine, WorkerState};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::parse;
use crate::types::{
    self, AnyRerankRequest, AnyRerankResponse, BatchRequest, ErrorBody, HealthResponse,
    InfoResponse, RankLlmRequest, RerankRequest, RerankResponse,
};

/// What every handler shares.
pub(crate) struct AppState {
    pub(crate) config: ServerConfig,
    pub(crate) engine: Engine,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) counter: Option<SharedTokenCounter>,
    /// What the scorer's numbers mean: relevance scores follow it.
    pub(crate) scale: ScoreScale,
    /// SHA-256 of the API key: comparing digests in constant time hides the length too.
    pub(crate) key_digest: Option<[u8; 32]>,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) next_id: AtomicU64,
    pub(crate) started: Instant,
}

// ---------------------------------------------------------------------------
// Middleware

/// Counts every response by route and status and times it.
pub(crate) async fn observe(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
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
pub(crate) async fn require_key(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
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
pub(crate) async fn concurrency_guard(
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

/// Liveness and readiness: 200 while the scoring worker can serve, 503 when
/// it is shutting down or has stopped.
#[utoipa::path(get, path = "/health", tag = "status", security(()),
    responses((status = 200, description = "The worker can serve", body = HealthResponse),
              (status = 503, description = "The worker is shutting down or has stopped", body = HealthResponse)))]
pub(crate) async fn health(State(state): State<Arc<AppState>>) -> Response {
    let (code, status) = match state.engine.state() {
        WorkerState::Serving => (StatusCode::OK, "ok"),
        WorkerState::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        WorkerState::Stopped => (StatusCode::SERVICE_UNAVAILABLE, "worker_stopped"),
    };
    let body = axum::Json(HealthResponse {
        status: status.into(),
        model: state.config.model_name.clone(),
        queue_depth: state.metrics.queue_depth.load(Ordering::Relaxed),
        pending_windows: state.metrics.pending_windows.load(Ordering::Relaxed),
        scorer_panics: state.metrics.scorer_panics.load(Ordering::Relaxed),
        uptime_seconds: state.started.elapsed().as_secs(),
    });
    (code, body).into_response()
}

/// The model, window strategy, limits, queue settings and measured speed.
#[utoipa::path(get, path = "/info", tag = "status",
    responses((status = 200, body = InfoResponse), (status = 401, body = ErrorBody)))]
pub(crate) async fn info(State(state): State<Arc<AppState>>) -> Response {
    let c = &state.config;
    axum::Json(InfoResponse {
        model: c.model_name.clone(),
        version: env!("CARGO_PKG_VERSION"),
        strategy: serde_json::to_value(c.strategy).unwrap_or_default(),
        limits: serde_json::to_value(&c.limits).unwrap_or_default(),
        queue_capacity: c.queue_capacity,
        max_batch_queries: c.max_batch_queries,
        max_concurrent_requests: c.max_concurrent_requests,
        request_timeout_seconds: c.request_timeout.as_secs_f64(),
        batch_timeout_seconds: c.batch_timeout.as_secs_f64(),
        seconds_per_window: state.engine.secs_per_window(),
        tokenizer: if state.counter.is_some() {
            "model"
        } else {
            "estimate (bytes / 4)"
        },
    })
    .into_response()
}

/// Prometheus text format: request counts and latency histograms by route
/// and status, queue depth, pending windows, tokens, documents and windows
/// processed, rejections by reason.
#[utoipa::path(get, path = "/metrics", tag = "status",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain"),
        (status = 401, body = ErrorBody)))]
pub(crate) async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

pub(crate) async fn not_found() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; see GET /openapi.json",
    )
    .into_response()
}

pub(crate) async fn method_not_allowed() -> Response {
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

/// Rerank (Jina / Cohere v1 / llama.cpp shape; TEI's when the body has `texts`).
#[utoipa::path(post, path = "/rerank", tag = "rerank",
    request_body = AnyRerankRequest,
    responses(
        (status = 200, description = "Results, best first", body = AnyRerankResponse),
        (status = 400, description = "Not JSON (syntax, truncated, not UTF-8, empty)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 408, description = "Body not received within --body-read-timeout", body = ErrorBody),
        (status = 413, description = "Over a limit (body, documents, bytes, tokens, query longer than the model's context)", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON", body = ErrorBody),
        (status = 422, description = "Wrong type, missing or empty field", body = ErrorBody),
        (status = 429, description = "Overloaded; see Retry-After", body = ErrorBody),
        (status = 500, description = "Scoring failed", body = ErrorBody),
        (status = 503, description = "Not scored in time, shutting down, or the worker stopped", body = ErrorBody)))]
pub(crate) async fn rerank(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = rerank_inner(&state, &headers, body, false).await;
    respond(&state, r)
}

/// The same as `/rerank`.
#[utoipa::path(post, path = "/v1/rerank", tag = "rerank",
    request_body = AnyRerankRequest,
    responses(
        (status = 200, description = "Results, best first", body = AnyRerankResponse),
        (status = "4XX", description = "See /rerank", body = ErrorBody),
        (status = "5XX", description = "See /rerank", body = ErrorBody)))]
pub(crate) async fn rerank_v1(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = rerank_inner(&state, &headers, body, false).await;
    respond(&state, r)
}

/// Rerank, Cohere v2 shape (documents not returned unless `return_documents`).
#[utoipa::path(post, path = "/v2/rerank", tag = "rerank",
    request_body = RerankRequest,
    responses(
        (status = 200, description = "Results, best first", body = RerankResponse),
        (status = "4XX", description = "See /rerank", body = ErrorBody),
        (status = "5XX", description = "See /rerank", body = ErrorBody)))]
pub(crate) async fn rerank_v2(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = rerank_inner(&state, &headers, body, true).await;
    respond(&state, r)
}

/// Rerank many queries: rank_llm requests as a JSON array, `{"requests":
/// [...]}` or JSONL; answers rank_llm result JSONL, one line per query in
/// input order (query, reordered candidates with `model_score`,
/// `original_rank`, `first_stage_score`, the windows).
#[utoipa::path(post, path = "/rerank/batch", tag = "rerank",
    request_body(content(
        (BatchRequest = "application/json"),
        (RankLlmRequest = "application/x-ndjson"))),
    responses(
        (status = 200, description = "rank_llm result JSONL", body = String, content_type = "application/x-ndjson"),
        (status = "4XX", description = "See /rerank", body = ErrorBody),
        (status = "5XX", description = "See /rerank", body = ErrorBody)))]
pub(crate) async fn batch(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = batch_inner(&state, &headers, body).await;
    respond(&state, r)
}

/// The same as `/rerank/batch`.
#[utoipa::path(post, path = "/v1/rerank/batch", tag = "rerank",
    request_body(content(
        (BatchRequest = "application/json"),
        (RankLlmRequest = "application/x-ndjson"))),
    responses(
        (status = 200, description = "rank_llm result JSONL", body = String, content_type = "application/x-ndjson"),
        (status = "4XX", description = "See /rerank", body = ErrorBody),
        (status = "5XX", description = "See /rerank", body = ErrorBody)))]
pub(crate) async fn batch_v1(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = batch_inner(&state, &headers, body).await;
    respond(&state, r)
}

/// 415 when the request names a media type other than JSON (or JSON lines,
/// which the batch endpoint reads); a request without `Content-Type` is read
/// as JSON.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let media = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json = media == "application/json"
        || media.ends_with("+json")
        || media == "application/x-ndjson"
        || media == "application/jsonl"
        || media == "application/x-jsonlines";
    if json {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!(
            "the body must be JSON: send `Content-Type: application/json` (got `{}`)",
            value.to_str().unwrap_or("(not text)")
        ),
    ))
}

/// Reads the body within the size and time limits.
async fn read_body(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    check_content_type(headers)?;
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
                if s.is::<http_body_util::LengthLimitError>() {
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

/// Token counts of a request: the query's, and the query's plus the
/// documents' (after `max_tokens_per_doc`, which it applies).
struct TokenCount {
    query: usize,
    total: usize,
}

fn count_tokens(
    counter: Option<&SharedTokenCounter>,
    input: &mut types::RerankInput,
) -> Result<TokenCount, ApiError> {
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
    let query = count(&input.query)?;
    let mut total = query;
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
    Ok(TokenCount { query, total })
}

/// 413 before any scoring when a query, or a query with its documents, is
/// over the token limits.
fn check_tokens(state: &AppState, tokens: &TokenCount, what: &str) -> Result<(), ApiError> {
    let limits = &state.config.limits;
    if tokens.query > limits.max_query_tokens {
        return Err(ApiError::too_large(format!(
            "the query of {what} has {} tokens; the limit is {} (--max-query-tokens; the prompt shows the \
             query twice, and it must leave room for the passages in the model's context)",
            tokens.query, limits.max_query_tokens
        )));
    }
    if tokens.total > limits.max_total_tokens {
        return Err(ApiError::too_large(format!(
            "{what} has {} tokens (query + documents); the limit is {} (--max-total-tokens)",
            tokens.total, limits.max_total_tokens
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

async fn rerank_inner(
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
        let value = parse::parse_json(&bytes)?;
        drop(bytes);
        let mut input = parse::parse_rerank(value, v2, &limits)?;
        let tokens = count_tokens(counter.as_ref(), &mut input)?;
        Ok::<_, ApiError>((input, tokens))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    check_tokens(state, &tokens, "the request")?;
    let tokens = tokens.total;
    let timeout = state.config.request_timeout;
    let max_chunks = input.max_chunks_per_doc.unwrap_or(1);
    let rx = state
        .engine
        .submit(vec![input.to_request()], max_chunks, timeout)?;
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
    let body = types::render(
        &input,
        &outcome,
        state.scale,
        &state.config.model_name,
        &id,
        tokens,
    );
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
        let requests = parse::parse_batch(&bytes, &limits)?;
        let mut per_query = Vec::with_capacity(requests.len());
        for r in &requests {
            let mut input = types::RerankInput {
                shape: types::Shape::Jina,
                query: r.query.text.clone(),
                docs: r
                    .candidates
                    .iter()
                    .map(|c| types::Doc {
                        text: c.text.clone(),
                        title: c.title.clone(),
                    })
                    .collect(),
                top_n: None,
                return_documents: false,
                raw_scores: false,
                truncate: false,
                max_tokens_per_doc: None,
                max_chunks_per_doc: None,
                instruction: None,
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
        check_tokens(state, n, &format!("query `{qid}`"))?;
    }
    let total: usize = tokens.iter().map(|(_, n)| n.total).sum();
    let docs: usize = requests.iter().map(|r| r.candidates.len()).sum();
    let timeout = state.config.batch_timeout;
    let rx = state.engine.submit(requests, 1, timeout)?;
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
