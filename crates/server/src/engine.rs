//! The scoring engine: one dedicated worker thread owns the scorer, fed by a
//! bounded queue of jobs, with admission control in front of it.
//!
//! * **Bounded queue.** `submit` never waits: when the queue is full, or when
//!   the windows already admitted would take longer than the request timeout
//!   at the measured speed (an exponentially weighted mean of seconds per
//!   window), the request is refused with 429 and a `Retry-After` estimate.
//!   Overload therefore turns into fast 429s instead of timeouts or memory
//!   growth.
//! * **Batching.** The worker takes one job and then drains whatever else is
//!   queued, up to `max_batch_queries` queries, and reranks them together with
//!   core's `rerank_batch` (lockstep windows through
//!   `WindowScorer::score_windows`, the batching seam of the backends).
//! * **Abandonment.** Jobs whose client timed out or disconnected before the
//!   worker reached them are dropped unscored.
//! * **Isolation.** A failing batch is retried job by job so one bad request
//!   cannot fail its neighbours; a panic in the scorer becomes a 500 for the
//!   jobs of that batch, and the worker carries on; after
//!   [`MAX_CONSECUTIVE_PANICS`] panics in a row without a success the scorer
//!   is taken to be broken: the worker answers what it holds with 503 and
//!   stops, and [`Engine::state`] (hence `/health`) reports it, so an
//!   orchestrator restarts the process.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use firstrank_core::window::{rerank_batch, RerankOutcome, WindowScorer, WindowStrategy};
use firstrank_core::Request;
use tokio::sync::{mpsc, oneshot};

use crate::error::ApiError;
use crate::metrics::Metrics;

/// Scorer panics in a row (no success between) after which the worker stops.
pub const MAX_CONSECUTIVE_PANICS: u32 = 3;

/// Whether the engine can score: what `/health` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    Serving,
    /// Shutdown was asked; queued jobs are being finished.
    ShuttingDown,
    /// The worker thread has ended (a broken scorer, or after shutdown).
    Stopped,
}

/// What the worker answers for one job.
pub type JobResult = Result<Vec<RerankOutcome>, ApiError>;

struct Job {
    requests: Vec<Request>,
    windows: u64,
    deadline: Instant,
    reply: oneshot::Sender<JobResult>,
}

/// Handle to the worker, shared by the request handlers.
pub struct Engine {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    strategy: WindowStrategy,
    metrics: Arc<Metrics>,
    /// Mean seconds per window (f64 bits); 0 until the first batch is measured.
    secs_per_window: Arc<AtomicU64>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Cleared by the worker thread when it ends, however it ends.
    running: Arc<AtomicBool>,
}

/// Clears the running flag when the worker thread ends (also by a panic).
struct RunningGuard(Arc<AtomicBool>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// A boxed scorer the worker thread can own.
pub type BoxScorer = Box<dyn WindowScorer + Send>;

impl Engine {
    /// Starts the worker thread. `queue_capacity` jobs may wait; the worker
    /// scores up to `max_batch_queries` queries together.
    pub fn start(
        scorer: BoxScorer,
        strategy: WindowStrategy,
        queue_capacity: usize,
        max_batch_queries: usize,
        metrics: Arc<Metrics>,
        initial_secs_per_window: Option<f64>,
    ) -> anyhow::Result<Self> {
        strategy.validate()?;
        let (tx, rx) = mpsc::channel(queue_capacity.max(1));
        let initial = initial_secs_per_window.filter(|s| s.is_finite() && *s > 0.0);
        let secs_per_window = Arc::new(AtomicU64::new(initial.map_or(0, f64::to_bits)));
        let worker = Worker {
            scorer,
            strategy,
            max_batch_queries: max_batch_queries.max(1),
            metrics: metrics.clone(),
            secs_per_window: secs_per_window.clone(),
            consecutive_panics: 0,
        };
        let running = Arc::new(AtomicBool::new(true));
        let guard = RunningGuard(running.clone());
        let handle = std::thread::Builder::new()
            .name("firstrank-scorer".into())
            .spawn(move || {
                let _guard = guard;
                worker.run(rx)
            })?;
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            strategy,
            metrics,
            secs_per_window,
            worker: Mutex::new(Some(handle)),
            running,
        })
    }

    /// Whether the worker can take jobs.
    pub fn state(&self) -> WorkerState {
        if !self.running.load(Ordering::SeqCst) {
            WorkerState::Stopped
        } else if self.tx.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
            WorkerState::ShuttingDown
        } else {
            WorkerState::Serving
        }
    }

    /// Windows the strategy will score for these requests.
    pub fn windows_for(&self, requests: &[Request]) -> u64 {
        requests
            .iter()
            .map(|r| self.strategy.schedule(r.candidates.len()).len() as u64)
            .sum()
    }

    /// Measured seconds per window, if any batch has finished yet.
    pub fn secs_per_window(&self) -> Option<f64> {
        let v = f64::from_bits(self.secs_per_window.load(Ordering::Relaxed));
        (v > 0.0).then_some(v)
    }

    /// Queues a job or refuses it at once (429 when full or too far behind,
    /// 503 when shutting down). Returns the receiver of the result.
    pub fn submit(
        &self,
        requests: Vec<Request>,
        timeout: Duration,
    ) -> Result<oneshot::Receiver<JobResult>, ApiError> {
        let windows = self.windows_for(&requests);
        let pending = self.metrics.pending_windows.load(Ordering::Relaxed);
        let estimate = self.secs_per_window();
        if let Some(spw) = estimate {
            // A job alone longer than the timeout is still admitted on an idle
            // server (it may finish; otherwise it times out).
            let wait = (pending + windows) as f64 * spw;
            if pending > 0 && wait > timeout.as_secs_f64() {
                return Err(ApiError::overloaded(
                    format!(
                        "the server is busy: {pending} windows are ahead of this request (about {:.1}s of work \
                         at {:.2}s per window), longer than the request timeout of {}s; retry later",
                        pending as f64 * spw,
                        spw,
                        timeout.as_secs()
                    ),
                    (pending as f64 * spw).ceil() as u64,
                ));
            }
        }
        let (reply, rx) = oneshot::channel();
        let job = Job {
            requests,
            windows,
            deadline: Instant::now() + timeout,
            reply,
        };
        let guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = guard.as_ref() else {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down",
            )
            .with_retry_after(1));
        };
        // Counted before sending so the worker's decrement never underflows.
        self.metrics
            .pending_windows
            .fetch_add(windows, Ordering::Relaxed);
        self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        match tx.try_send(job) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.metrics
                    .pending_windows
                    .fetch_sub(windows, Ordering::Relaxed);
                self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                match e {
                    mpsc::error::TrySendError::Full(_) => {
                        let retry = estimate.map_or(1, |spw| (pending as f64 * spw).ceil() as u64);
                        Err(ApiError::overloaded(
                            "the request queue is full; retry later",
                            retry,
                        ))
                    }
                    mpsc::error::TrySendError::Closed(_) => Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "the scoring worker has stopped",
                    )),
                }
            }
        }
    }

    /// Stops accepting jobs; the worker finishes the queued ones and exits.
    /// Blocks until it has.
    pub fn shutdown(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }
}

struct Worker {
    scorer: BoxScorer,
    strategy: WindowStrategy,
    max_batch_queries: usize,
    metrics: Arc<Metrics>,
    secs_per_window: Arc<AtomicU64>,
    consecutive_panics: u32,
}

impl Worker {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(first) = rx.blocking_recv() {
            self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            let mut queries = first.requests.len();
            let mut jobs = vec![first];
            while queries < self.max_batch_queries {
                match rx.try_recv() {
                    Ok(job) => {
                        self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                        queries += job.requests.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            let (live, dead): (Vec<Job>, Vec<Job>) = jobs
                .into_iter()
                .partition(|j| !j.reply.is_closed() && j.deadline > now);
            for j in dead {
                self.metrics.abandoned_jobs.fetch_add(1, Ordering::Relaxed);
                self.finish(
                    j,
                    Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "timeout",
                        "timed out in the queue",
                    )),
                );
            }
            if live.is_empty() {
                continue;
            }
            self.score_jobs(live);
            if self.consecutive_panics >= MAX_CONSECUTIVE_PANICS {
                tracing::error!(
                    "the scorer panicked {} times in a row: taking it as broken and stopping the worker \
                     (/health answers 503; restart the server)",
                    self.consecutive_panics
                );
                rx.close();
                while let Ok(job) = rx.try_recv() {
                    self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                    self.finish(
                        job,
                        Err(ApiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "unavailable",
                            "the scoring worker has stopped: the scorer kept panicking",
                        )),
                    );
                }
                return;
            }
        }
    }

    /// Answers a job and releases its windows from the pending count.
    fn finish(&self, job: Job, result: JobResult) {
        self.metrics
            .pending_windows
            .fetch_sub(job.windows, Ordering::Relaxed);
        let _ = job.reply.send(result);
    }

    /// Reranks `requests` in lockstep chunks of `max_batch_queries`.
    fn rerank(&mut self, requests: Vec<Request>) -> JobResult {
        let started = Instant::now();
        let mut outcomes = Vec::with_capacity(requests.len());
        let mut rest = requests;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(self.max_batch_queries));
            let chunk = std::mem::replace(&mut rest, tail);
            let n = chunk.len() as u64;
            let scorer = &mut self.scorer;
            let strategy = &self.strategy;
            let result = catch_unwind(AssertUnwindSafe(|| {
                rerank_batch(scorer.as_mut(), strategy, chunk)
            }));
            let out = match result {
                Ok(Ok(out)) => out,
                Ok(Err(e)) => {
                    return Err(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "scoring_failed",
                        format!("scoring failed: {e}"),
                    ))
                }
                Err(_) => {
                    self.consecutive_panics += 1;
                    self.metrics.scorer_panics.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("the scorer panicked; answering 500 and carrying on");
                    return Err(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "scoring_failed",
                        "scoring failed: the scorer panicked",
                    ));
                }
            };
            self.consecutive_panics = 0;
            let windows: u64 = out.iter().map(|o| o.windows.len() as u64).sum();
            self.metrics.batches.fetch_add(1, Ordering::Relaxed);
            self.metrics.batched_queries.fetch_add(n, Ordering::Relaxed);
            self.metrics
                .windows_scored
                .fetch_add(windows, Ordering::Relaxed);
            outcomes.extend(out);
        }
        let secs = started.elapsed().as_secs_f64();
        self.metrics
            .scoring_seconds_micros
            .fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
        let windows: usize = outcomes.iter().map(|o| o.windows.len()).sum();
        if windows > 0 {
            let sample = secs / windows as f64;
            let old = f64::from_bits(self.secs_per_window.load(Ordering::Relaxed));
            let new = if old > 0.0 {
                0.7 * old + 0.3 * sample
            } else {
                sample
            };
            self.secs_per_window
                .store(new.max(1e-9).to_bits(), Ordering::Relaxed);
        }
        Ok(outcomes)
    }

    fn score_jobs(&mut self, jobs: Vec<Job>) {
        if jobs.len() == 1 {
            let mut jobs = jobs;
            let mut job = jobs.pop().expect("one job");
            let result = self.rerank(std::mem::take(&mut job.requests));
            self.finish(job, result);
            return;
        }
        let counts: Vec<usize> = jobs.iter().map(|j| j.requests.len()).collect();
        let mut jobs = jobs;
        let all: Vec<Request> = jobs.iter().flat_map(|j| j.requests.clone()).collect();
        match self.rerank(all) {
            Ok(outcomes) => {
                let mut it = outcomes.into_iter();
                for (job, n) in jobs.into_iter().zip(counts) {
                    let mine: Vec<RerankOutcome> = it.by_ref().take(n).collect();
                    self.finish(job, Ok(mine));
                }
            }
            Err(_) => {
                // Retry one by one so only the failing job gets the error.
                for mut job in jobs.drain(..) {
                    let result = self.rerank(std::mem::take(&mut job.requests));
                    self.finish(job, result);
                }
            }
        }
    }
}
