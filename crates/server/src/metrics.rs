//! Prometheus metrics, written by hand in the text exposition format.
//!
//! A handful of counters, gauges and one latency histogram do not justify a
//! metrics framework: atomics and one mutex-guarded map of (route, status)
//! counters and per-route histograms are enough, and the output format is a
//! few lines of text.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds (seconds) of the request latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

#[derive(Default, Clone)]
struct Histogram {
    /// Non-cumulative counts per bucket, plus the +Inf bucket at the end.
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; LATENCY_BUCKETS.len() + 1];
        }
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

#[derive(Default)]
struct PerRoute {
    requests: BTreeMap<(String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    rejected: BTreeMap<&'static str, u64>,
}

/// The server's metrics. Shared by the handlers and the worker.
#[derive(Default)]
pub struct Metrics {
    per_route: Mutex<PerRoute>,
    /// Jobs waiting in the queue (not yet taken by the worker).
    pub queue_depth: AtomicU64,
    /// Windows admitted and not yet finished (queued + being scored).
    pub pending_windows: AtomicU64,
    /// Tokens of the query and documents of admitted requests.
    pub tokens: AtomicU64,
    pub documents: AtomicU64,
    pub windows_scored: AtomicU64,
    pub batches: AtomicU64,
    /// Queries scored, summed over batches (queries per batch = this / batches).
    pub batched_queries: AtomicU64,
    /// Jobs dropped by the worker because their client timed out or left.
    pub abandoned_jobs: AtomicU64,
    pub scoring_seconds_micros: AtomicU64,
    /// Connections closed at accept because `max_connections` were open.
    pub refused_connections: AtomicU64,
    /// Scorer panics the worker caught.
    pub scorer_panics: AtomicU64,
}

impl Metrics {
    /// Records one finished HTTP request.
    pub fn observe_request(&self, route: &str, status: u16, seconds: f64) {
        let mut m = self.per_route.lock().unwrap_or_else(|e| e.into_inner());
        *m.requests.entry((route.to_string(), status)).or_default() += 1;
        m.latency
            .entry(route.to_string())
            .or_default()
            .observe(seconds);
    }

    /// Counts a request refused before scoring (`overloaded`, `payload_too_large`, ...).
    pub fn reject(&self, kind: &'static str) {
        let mut m = self.per_route.lock().unwrap_or_else(|e| e.into_inner());
        *m.rejected.entry(kind).or_default() += 1;
    }

    /// The metrics in Prometheus text format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let m = self.per_route.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(
            out,
            "# HELP firstrank_http_requests_total HTTP requests by route and status code."
        );
        let _ = writeln!(out, "# TYPE firstrank_http_requests_total counter");
        for ((route, status), n) in &m.requests {
            let _ = writeln!(
                out,
                "firstrank_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        let _ = writeln!(
            out,
            "# HELP firstrank_http_request_duration_seconds Request latency by route."
        );
        let _ = writeln!(
            out,
            "# TYPE firstrank_http_request_duration_seconds histogram"
        );
        for (route, h) in &m.latency {
            let route = escape(route);
            let mut cumulative = 0;
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += h.buckets[i];
                let _ = writeln!(
                    out,
                    "firstrank_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "firstrank_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "firstrank_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "firstrank_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP firstrank_rejected_requests_total Requests refused before scoring, by reason."
        );
        let _ = writeln!(out, "# TYPE firstrank_rejected_requests_total counter");
        for (kind, n) in &m.rejected {
            let _ = writeln!(
                out,
                "firstrank_rejected_requests_total{{reason=\"{kind}\"}} {n}"
            );
        }
        drop(m);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let simple: [(&str, &str, &str, u64); 10] = [
            (
                "firstrank_queue_depth",
                "gauge",
                "Rerank jobs waiting for the worker.",
                load(&self.queue_depth),
            ),
            (
                "firstrank_pending_windows",
                "gauge",
                "Windows admitted and not yet scored (queued or running).",
                load(&self.pending_windows),
            ),
            (
                "firstrank_tokens_processed_total",
                "counter",
                "Tokens (query + documents) of admitted requests.",
                load(&self.tokens),
            ),
            (
                "firstrank_documents_processed_total",
                "counter",
                "Documents of admitted requests.",
                load(&self.documents),
            ),
            (
                "firstrank_windows_scored_total",
                "counter",
                "Listwise windows scored by the model.",
                load(&self.windows_scored),
            ),
            (
                "firstrank_batches_total",
                "counter",
                "Batches the worker scored (queries scored together).",
                load(&self.batches),
            ),
            (
                "firstrank_batched_queries_total",
                "counter",
                "Queries scored, summed over batches.",
                load(&self.batched_queries),
            ),
            (
                "firstrank_abandoned_jobs_total",
                "counter",
                "Queued jobs dropped because the client timed out or disconnected.",
                load(&self.abandoned_jobs),
            ),
            (
                "firstrank_refused_connections_total",
                "counter",
                "Connections closed on arrival because --max-connections were open.",
                load(&self.refused_connections),
            ),
            (
                "firstrank_scorer_panics_total",
                "counter",
                "Panics of the scorer caught by the worker (each answered 500).",
                load(&self.scorer_panics),
            ),
        ];
        for (name, kind, help, value) in simple {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        }
        let secs = load(&self.scoring_seconds_micros) as f64 / 1e6;
        let _ = writeln!(
            out,
            "# HELP firstrank_scoring_seconds_total Seconds the worker spent scoring."
        );
        let _ = writeln!(out, "# TYPE firstrank_scoring_seconds_total counter");
        let _ = writeln!(out, "firstrank_scoring_seconds_total {secs}");
        out
    }
}

/// Escapes a label value (`\`, `"`, newline).
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_counts_add_up() {
        let m = Metrics::default();
        m.observe_request("/rerank", 200, 0.003);
        m.observe_request("/rerank", 200, 0.2);
        m.observe_request("/rerank", 429, 1000.0);
        let text = m.render();
        assert!(text.contains("firstrank_http_requests_total{route=\"/rerank\",status=\"200\"} 2"));
        assert!(text.contains("firstrank_http_requests_total{route=\"/rerank\",status=\"429\"} 1"));
        assert!(text.contains(
            "firstrank_http_request_duration_seconds_bucket{route=\"/rerank\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "firstrank_http_request_duration_seconds_bucket{route=\"/rerank\",le=\"0.25\"} 2"
        ));
        assert!(text.contains(
            "firstrank_http_request_duration_seconds_bucket{route=\"/rerank\",le=\"300\"} 2"
        ));
        assert!(text.contains(
            "firstrank_http_request_duration_seconds_bucket{route=\"/rerank\",le=\"+Inf\"} 3"
        ));
        assert!(text.contains("firstrank_http_request_duration_seconds_count{route=\"/rerank\"} 3"));
    }
}
