//! The scoring engine: one dedicated worker thread owns the scorer, fed by a
//! bounded queue of jobs, with admission control in front of it.
//!
//! * **Bounded queue.** `submit` never waits: when the queue is full, or when
//!   the windows already admitted would take longer than the request timeout
//!   at the measured speed (an exponentially weighted mean of seconds per
//!   window), the request is refused with 429 and a `Retry-After` estimate.
//!   Overload therefore turns into fast 429s instead of timeouts or memory
//!   growth.
//! * **Scheduling by window.** The worker holds every admitted job's queries
//!   as [`QueryRerank`]s and scores one window at a time for up to
//!   `max_batch_queries` of them together (`WindowScorer::score_windows`,
//!   the batching seam of the backends), picking round-robin across jobs: a
//!   `/rerank/batch` of 64 queries interleaves with single requests instead
//!   of holding the model until it is done.
//! * **Cancellation.** Before every batch, jobs whose client has gone or
//!   whose deadline has passed are dropped, also half-way through their
//!   windows.
//! * **Isolation.** A failing batch is retried window by window (for jobs
//!   still wanted) so one bad request cannot fail its neighbours; a panic in
//!   the scorer fails only the job whose window panicked, and the worker
//!   carries on; after
//!   [`MAX_CONSECUTIVE_PANICS`] panics in a row without a success the scorer
//!   is taken to be broken: the worker answers what it holds with 503 and
//!   stops, and [`Engine::state`] (hence `/health`) reports it, so an
//!   orchestrator restarts the process.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use firstrank_core::window::{QueryRerank, RerankOutcome, WindowScorer, WindowStrategy};
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
    /// Chunks a long document may be cut into (1: read as it comes).
    max_chunks: usize,
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
    /// Set when shutdown begins: new jobs are refused (503 `shutting_down`)
    /// and `/health` says so, while admitted jobs are still scored.
    draining: AtomicBool,
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
            draining: AtomicBool::new(false),
        })
    }

    /// Whether the worker can take jobs.
    pub fn state(&self) -> WorkerState {
        if !self.running.load(Ordering::SeqCst) {
            WorkerState::Stopped
        } else if self.draining.load(Ordering::SeqCst) {
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
        max_chunks: usize,
        timeout: Duration,
    ) -> Result<oneshot::Receiver<JobResult>, ApiError> {
        firstrank_core::chunk::validate_max_chunks(max_chunks, self.strategy.window)
            .map_err(|e| ApiError::invalid(e.to_string()))?;
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
            max_chunks,
            windows,
            deadline: Instant::now() + timeout,
            reply,
        };
        let guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let tx = guard
            .as_ref()
            .filter(|_| !self.draining.load(Ordering::SeqCst));
        let Some(tx) = tx else {
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
    /// Refuses new jobs from now on (503 `shutting_down`, also on `/health`);
    /// jobs already admitted are still scored.
    pub fn begin_shutdown(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn shutdown(&self) {
        self.begin_shutdown();
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

/// An admitted job being worked through: its queries, the outcomes of those
/// done, and its result once a window of it failed.
struct Running {
    job: Job,
    queries: Vec<Option<QueryRerank>>,
    outcomes: Vec<Option<RerankOutcome>>,
    failed: Option<ApiError>,
}

impl Running {
    /// Starts a job's queries, cutting long documents into chunks with the
    /// scorer's tokenizer when the job asks for it; a job that cannot be
    /// chunked starts failed (400).
    fn new(mut job: Job, strategy: &WindowStrategy, scorer: &dyn WindowScorer) -> Self {
        let requests = std::mem::take(&mut job.requests);
        let n = requests.len();
        let (queries, failed) = match firstrank_core::chunk::start_chunked(
            scorer,
            strategy,
            requests,
            job.max_chunks,
        ) {
            Ok(states) => (states.into_iter().map(Some).collect(), None),
            Err(e) => (
                (0..n).map(|_| None).collect(),
                Some(ApiError::invalid(format!("`max_chunks_per_doc`: {e:#}"))),
            ),
        };
        Self {
            queries,
            outcomes: (0..n).map(|_| None).collect(),
            job,
            failed,
        }
    }

    /// Windows the job's queries still have to score.
    fn windows_left(&self) -> u64 {
        self.queries
            .iter()
            .flatten()
            .map(|q| q.windows_left() as u64)
            .sum()
    }

    /// Moves finished queries to `outcomes`; whether the job is complete.
    fn settle(&mut self) -> bool {
        for (q, out) in self.queries.iter_mut().zip(&mut self.outcomes) {
            if q.as_ref().is_some_and(|q| q.windows_left() == 0) {
                *out = q.take().map(QueryRerank::finish);
            }
        }
        self.failed.is_some() || self.outcomes.iter().all(Option::is_some)
    }

    fn wanted(&self, now: Instant) -> bool {
        !self.job.reply.is_closed() && self.job.deadline > now
    }
}

/// One window picked for the next batch: (job index, query index).
type Pick = (usize, usize);

/// A scorer panic or error on one window.
enum WindowFailure {
    Failed(String),
    Panicked,
}

impl Worker {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut running: Vec<Running> = Vec::new();
        let mut turn = 0usize;
        loop {
            if running.is_empty() {
                match rx.blocking_recv() {
                    Some(job) => self.admit(job, &mut running),
                    None => return,
                }
            }
            while let Ok(job) = rx.try_recv() {
                self.admit(job, &mut running);
            }
            self.cancel_unwanted(&mut running);
            if running.is_empty() {
                continue;
            }
            let picks = self.pick(&running, turn);
            turn = turn.wrapping_add(1);
            self.score(&mut running, &picks);
            let mut i = 0;
            while i < running.len() {
                if running[i].settle() {
                    let r = running.remove(i);
                    self.answer(r);
                } else {
                    i += 1;
                }
            }
            if self.consecutive_panics >= MAX_CONSECUTIVE_PANICS {
                self.stop_broken(running, rx);
                return;
            }
        }
    }

    fn admit(&self, job: Job, running: &mut Vec<Running>) {
        self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
        let mut r = Running::new(job, &self.strategy, self.scorer.as_ref());
        // Choosing chunks adds windows the admission estimate did not know of.
        let extra = r.windows_left().saturating_sub(r.job.windows);
        if extra > 0 && r.failed.is_none() {
            r.job.windows += extra;
            self.metrics
                .pending_windows
                .fetch_add(extra, Ordering::Relaxed);
        }
        running.push(r);
    }

    /// Drops jobs whose client has gone or whose deadline has passed.
    fn cancel_unwanted(&self, running: &mut Vec<Running>) {
        let now = Instant::now();
        let mut i = 0;
        while i < running.len() {
            if running[i].wanted(now) {
                i += 1;
                continue;
            }
            let r = running.remove(i);
            self.metrics.abandoned_jobs.fetch_add(1, Ordering::Relaxed);
            self.finish(
                r.job,
                Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "timeout",
                    "not scored within the request timeout",
                )),
            );
        }
    }

    /// Up to `max_batch_queries` windows, one query per job per round,
    /// starting from a different job each turn.
    fn pick(&self, running: &[Running], turn: usize) -> Vec<Pick> {
        let mut picks = Vec::new();
        let n = running.len();
        let mut next_query = vec![0usize; n];
        loop {
            let before = picks.len();
            for k in 0..n {
                if picks.len() == self.max_batch_queries {
                    return picks;
                }
                let j = (turn + k) % n;
                let queries = &running[j].queries;
                while next_query[j] < queries.len() {
                    let q = next_query[j];
                    next_query[j] += 1;
                    if queries[q].as_ref().is_some_and(|q| q.windows_left() > 0) {
                        picks.push((j, q));
                        break;
                    }
                }
            }
            if picks.len() == before {
                return picks;
            }
        }
    }

    /// Scores the picked windows together; on failure, window by window for
    /// the jobs still wanted, so that only the failing job fails.
    fn score(&mut self, running: &mut [Running], picks: &[Pick]) {
        if picks.is_empty() {
            return;
        }
        let windows: Vec<Vec<firstrank_core::Candidate>> = picks
            .iter()
            .map(|&(j, q)| {
                running[j].queries[q]
                    .as_ref()
                    .and_then(QueryRerank::next_window)
                    .unwrap_or_default()
            })
            .collect();
        let result = {
            let batch: Vec<(&firstrank_core::Query, &[firstrank_core::Candidate])> = picks
                .iter()
                .zip(&windows)
                .map(|(&(j, q), w)| {
                    let query = running[j].queries[q]
                        .as_ref()
                        .expect("a picked query")
                        .query();
                    (query, w.as_slice())
                })
                .collect();
            self.score_batch(&batch)
        };
        match result {
            Ok(scores) => {
                for (&(j, q), s) in picks.iter().zip(scores) {
                    apply(&mut running[j], q, s);
                }
            }
            Err(failure) if picks.len() == 1 => {
                let (j, _) = picks[0];
                running[j].failed = Some(failure_error(&failure));
            }
            Err(_) => {
                let now = Instant::now();
                for (&(j, q), w) in picks.iter().zip(&windows) {
                    if running[j].failed.is_some() || !running[j].wanted(now) {
                        continue;
                    }
                    let result = {
                        let query = running[j].queries[q]
                            .as_ref()
                            .expect("a picked query")
                            .query();
                        self.score_batch(&[(query, w.as_slice())])
                    };
                    match result {
                        Ok(mut scores) => apply(&mut running[j], q, scores.remove(0)),
                        Err(failure) => running[j].failed = Some(failure_error(&failure)),
                    }
                }
            }
        }
    }

    /// One `score_windows` call, timed and guarded against panics.
    fn score_batch(
        &mut self,
        batch: &[(&firstrank_core::Query, &[firstrank_core::Candidate])],
    ) -> Result<Vec<Vec<f32>>, WindowFailure> {
        let started = Instant::now();
        let scorer = &mut self.scorer;
        let result = catch_unwind(AssertUnwindSafe(|| scorer.score_windows(batch)));
        let secs = started.elapsed().as_secs_f64();
        self.metrics
            .scoring_seconds_micros
            .fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
        match result {
            Ok(Ok(scores)) if scores.len() == batch.len() => {
                self.consecutive_panics = 0;
                let n = batch.len() as u64;
                self.metrics.batches.fetch_add(1, Ordering::Relaxed);
                self.metrics.batched_queries.fetch_add(n, Ordering::Relaxed);
                self.metrics.windows_scored.fetch_add(n, Ordering::Relaxed);
                let sample = secs / batch.len() as f64;
                let old = f64::from_bits(self.secs_per_window.load(Ordering::Relaxed));
                let new = if old > 0.0 {
                    0.7 * old + 0.3 * sample
                } else {
                    sample
                };
                self.secs_per_window
                    .store(new.max(1e-9).to_bits(), Ordering::Relaxed);
                Ok(scores)
            }
            Ok(Ok(scores)) => Err(WindowFailure::Failed(format!(
                "the scorer returned {} results for a batch of {} windows",
                scores.len(),
                batch.len()
            ))),
            Ok(Err(e)) => Err(WindowFailure::Failed(format!("{e:#}"))),
            Err(_) => {
                self.consecutive_panics += 1;
                self.metrics.scorer_panics.fetch_add(1, Ordering::Relaxed);
                tracing::error!("the scorer panicked; answering 500 and carrying on");
                Err(WindowFailure::Panicked)
            }
        }
    }

    /// Answers a job that is complete or failed.
    fn answer(&self, r: Running) {
        let result = match r.failed {
            Some(e) => Err(e),
            None => Ok(r.outcomes.into_iter().flatten().collect()),
        };
        self.finish(r.job, result);
    }

    /// Answers a job and releases its windows from the pending count.
    fn finish(&self, job: Job, result: JobResult) {
        self.metrics
            .pending_windows
            .fetch_sub(job.windows, Ordering::Relaxed);
        let _ = job.reply.send(result);
    }

    /// After too many panics in a row: answers everything held with 503 and
    /// lets the thread end.
    fn stop_broken(&self, running: Vec<Running>, mut rx: mpsc::Receiver<Job>) {
        tracing::error!(
            "the scorer panicked {} times in a row: taking it as broken and stopping the worker \
             (/health answers 503; restart the server)",
            self.consecutive_panics
        );
        rx.close();
        let unavailable = || {
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the scoring worker has stopped: the scorer kept panicking",
            ))
        };
        for r in running {
            self.finish(r.job, unavailable());
        }
        while let Ok(job) = rx.try_recv() {
            self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            self.finish(job, unavailable());
        }
    }
}

/// Applies a window's scores to query `q` of `r`; a bad result fails the job.
fn apply(r: &mut Running, q: usize, scores: Vec<f32>) {
    if let Some(query) = r.queries[q].as_mut() {
        if let Err(e) = query.apply(scores) {
            r.failed = Some(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "scoring_failed",
                format!("scoring failed: {e}"),
            ));
        }
    }
}

fn failure_error(failure: &WindowFailure) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "scoring_failed",
        match failure {
            WindowFailure::Failed(e) => format!("scoring failed: {e}"),
            WindowFailure::Panicked => "scoring failed: the scorer panicked".to_string(),
        },
    )
}
