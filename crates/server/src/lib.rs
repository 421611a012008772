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
//! (Prometheus), `GET /openapi.json` (generated from [`types`], see [`openapi`]).
//!
//! Under load: the scorer runs on one worker thread fed by a bounded queue
//! (see [`engine`]); requests beyond the queue, beyond the work that fits in
//! the request timeout, or beyond `max_concurrent_requests` get 429 with
//! `Retry-After`. Bodies, documents, per-document bytes and tokens are
//! limited ([`Limits`]): 413 with a JSON error. Shutdown stops accepting
//! connections, lets in-flight requests finish, then stops the worker.
//!
//! Layout: [`config`] (settings), [`types`] (request/response types),
//! [`parse`] (validating bodies), [`handlers`] (the routes' handlers and
//! middleware), [`engine`] (the scoring worker), [`openapi`] (the generated
//! document); this file only wires them into a router and a listener.

pub mod config;
pub mod engine;
pub mod error;
pub mod handlers;
pub mod lexical;
pub mod metrics;
pub mod openapi;
pub mod parse;
pub mod types;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::middleware;
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

pub use config::{Limits, ServerConfig, SharedTokenCounter};
pub use engine::BoxScorer;
use engine::Engine;
pub use error::ApiError;
use handlers::AppState;
use metrics::Metrics;

/// A router under construction that remembers each route it was given, so
/// the list of served routes cannot drift from the router (the OpenAPI test
/// checks every one is documented).
struct Routes {
    router: Router<Arc<AppState>>,
    list: Vec<(&'static str, &'static str)>,
}

impl Routes {
    fn new() -> Self {
        Self {
            router: Router::new(),
            list: Vec::new(),
        }
    }

    fn add(
        mut self,
        method: &'static str,
        path: &'static str,
        handler: MethodRouter<Arc<AppState>>,
    ) -> Self {
        self.router = self.router.route(path, handler);
        self.list.push((method, path));
        self
    }
}

/// The router and the (method, path) of every route in it.
fn build_router(state: &Arc<AppState>) -> (Router, Vec<(&'static str, &'static str)>) {
    let rerank = Routes::new()
        .add("post", "/rerank", post(handlers::rerank))
        .add("post", "/v1/rerank", post(handlers::rerank_v1))
        .add("post", "/v2/rerank", post(handlers::rerank_v2))
        .add("post", "/rerank/batch", post(handlers::batch))
        .add("post", "/v1/rerank/batch", post(handlers::batch_v1));
    let protected = Routes::new()
        .add("get", "/info", get(handlers::info))
        .add("get", "/metrics", get(handlers::metrics_text))
        .add("get", "/openapi.json", get(openapi::serve));
    let open = Routes::new().add("get", "/health", get(handlers::health));
    let mut list = open.list;
    list.extend(protected.list);
    list.extend(&rerank.list);
    let rerank = rerank.router.route_layer(middleware::from_fn_with_state(
        state.clone(),
        handlers::concurrency_guard,
    ));
    let protected = protected
        .router
        .merge(rerank)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            handlers::require_key,
        ));
    let router = open
        .router
        .merge(protected)
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            handlers::observe,
        ))
        .with_state(state.clone());
    let router = match cors_layer(&state.config.cors_allow_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    (router, list)
}

/// The CORS layer for an allow-list of origins (None when empty): GET and
/// POST with the JSON and auth headers; preflight answered by the layer.
fn cors_layer(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{header, HeaderValue, Method};
    if origins.is_empty() {
        return None;
    }
    let allowed: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    Some(
        tower_http::cors::CorsLayer::new()
            .allow_origin(allowed)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION]),
    )
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
        let scale = scorer.score_scale();
        let engine = Engine::start(
            scorer,
            config.strategy,
            config.queue_capacity,
            config.max_batch_queries,
            metrics.clone(),
            config.initial_seconds_per_window,
        )?;
        for origin in &config.cors_allow_origins {
            anyhow::ensure!(
                axum::http::HeaderValue::from_str(origin).is_ok()
                    && (origin.starts_with("http://") || origin.starts_with("https://")),
                "CORS origin `{origin}` is not an origin like https://app.example.com"
            );
        }
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
                scale,
                key_digest,
                next_id: AtomicU64::new(1),
                started: Instant::now(),
            }),
        })
    }

    /// The (method, path) of every route the router serves, methods in
    /// lower case as OpenAPI writes them.
    pub fn routes(&self) -> Vec<(&'static str, &'static str)> {
        build_router(&self.state).1
    }

    /// The axum router (for embedding the endpoints in another server).
    pub fn router(&self) -> Router {
        build_router(&self.state).0
    }

    /// Serves on `listener` until `shutdown` resolves, then lets in-flight
    /// requests finish (at most [`ServerConfig::shutdown_timeout`]) and stops
    /// the worker after the jobs it holds.
    ///
    /// The accept loop is hyper's HTTP/1 connection driver with the slow-client
    /// defences axum's `serve` lacks: a header-read timeout (a connection that
    /// has not sent a request's headers in time is closed), a cap on open
    /// connections (beyond it new ones are closed at once, so stalled clients
    /// cannot exhaust file descriptors and lock out `/health`), and accept
    /// errors (such as running out of descriptors) retried after a pause
    /// instead of spinning.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let app = self.router();
        let config = &self.state.config;
        let connections = Arc::new(Semaphore::new(config.max_connections.max(1)));
        let graceful = GracefulShutdown::new();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .keep_alive(true);
        let mut shutdown = std::pin::pin!(shutdown);
        let mut cap_logged: Option<Instant> = None;
        loop {
            let stream = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(e) => {
                        tracing::warn!("accepting a connection failed: {e}; retrying in 100 ms");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                self.state
                    .metrics
                    .refused_connections
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if cap_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(
                        "{} connections are open (--max-connections): closing new ones until some finish",
                        config.max_connections
                    );
                    cap_logged = Some(Instant::now());
                }
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let conn =
                http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                let _ = conn.await;
                drop(permit);
            });
        }
        drop(listener);
        // Requests still being read when the signal came get 503
        // `shutting_down` (with Retry-After) instead of new work.
        self.state.engine.begin_shutdown();
        let drain_until = tokio::time::Instant::now() + config.shutdown_timeout;
        let open = graceful.count();
        if tokio::time::timeout_at(drain_until, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                "connections still open {}s after the shutdown signal (--shutdown-timeout; {open} were open at the signal): dropping them",
                config.shutdown_timeout.as_secs()
            );
        }
        // The worker finishes the jobs it holds, within what is left of the
        // bound; past it, serve returns and the process may exit under it.
        let state = self.state.clone();
        let worker = tokio::task::spawn_blocking(move || state.engine.shutdown());
        if tokio::time::timeout_at(drain_until, worker).await.is_err() {
            tracing::warn!("the scoring worker was still busy at the end of --shutdown-timeout");
        }
        Ok(())
    }

    /// Binds `addr` and serves until Ctrl-C or SIGTERM (blocking; builds its
    /// own runtime). Used by `firstrank serve`.
    pub fn run(mut self, addr: SocketAddr) -> anyhow::Result<()> {
        self.fit_connections_to_descriptor_limit();
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
        })?;
        // A worker still scoring after the drain bound is not waited for.
        runtime.shutdown_timeout(Duration::from_millis(100));
        Ok(())
    }
}

impl Server {
    /// Lowers the connection cap below the process's open-file limit (less a
    /// reserve for the model, logs and the listener), so that a flood of
    /// connections meets the cap before the kernel's limit.
    fn fit_connections_to_descriptor_limit(&mut self) {
        const RESERVE: usize = 64;
        let Some(limit) = descriptor_limit() else {
            return;
        };
        let fits = limit.saturating_sub(RESERVE).max(1);
        let Some(state) = Arc::get_mut(&mut self.state) else {
            return;
        };
        if state.config.max_connections > fits {
            tracing::warn!(
                "--max-connections {} is above what the open-file limit of {limit} allows: capping connections at {fits}",
                state.config.max_connections
            );
            state.config.max_connections = fits;
        }
    }
}

/// The soft limit on open file descriptors (unix).
#[cfg(unix)]
fn descriptor_limit() -> Option<usize> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0;
    (ok && rl.rlim_cur != libc::RLIM_INFINITY).then_some(rl.rlim_cur as usize)
}

#[cfg(not(unix))]
fn descriptor_limit() -> Option<usize> {
    None
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
