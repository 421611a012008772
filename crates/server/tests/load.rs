//! Load with a memory bound: 32 clients for `FIRSTRANK_LOAD_SECS` seconds
//! (default 20) against a server whose scorer takes 2 ms per window, with
//! requests of mixed sizes, some over the document limit and some malformed.
//! Expected: no 5xx and no transport error, every 429 carries Retry-After,
//! the oversized ones get 413 and the malformed ones 400, and the peak RSS of
//! the whole test process (server and clients) stays under 100 MB. Prints the
//! figures BENCHMARKS.md's reliability entry reports.

use std::sync::Arc;
use std::time::{Duration, Instant};

use firstrank_core::window::{WindowScorer, WindowStrategy};
use firstrank_core::{Candidate, Query};
use firstrank_server::{Limits, Server, ServerConfig};
use serde_json::json;

/// Scores by length after a fixed pause per window (a stand-in for a model).
struct Slow;

impl WindowScorer for Slow {
    fn score_window(&mut self, _q: &Query, window: &[Candidate]) -> anyhow::Result<Vec<f32>> {
        std::thread::sleep(Duration::from_millis(2));
        Ok(window.iter().map(|c| c.text.len() as f32).collect())
    }
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[derive(Default)]
struct Tally {
    ok: u64,
    too_many: u64,
    too_many_without_retry_after: u64,
    too_large: u64,
    bad_json: u64,
    other_4xx: u64,
    server_5xx: u64,
    transport: u64,
    latencies: Vec<f64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_load_gets_no_5xx_and_stays_in_memory() {
    let secs: f64 = std::env::var("FIRSTRANK_LOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20.0);
    let config = ServerConfig {
        strategy: WindowStrategy::sliding(20, 10, usize::MAX),
        limits: Limits {
            max_documents: 100,
            ..Limits::default()
        },
        queue_capacity: 16,
        request_timeout: Duration::from_secs(5),
        ..ServerConfig::default()
    };
    let server = Server::new(config, Box::new(Slow), None).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/rerank", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let words = Arc::new([
        "river", "city", "paris", "solar", "cell", "piano", "court", "star",
    ]);
    let mut tasks = Vec::new();
    for c in 0..32u64 {
        let (client, url, words) = (client.clone(), url.clone(), words.clone());
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (c + 1).wrapping_mul(0x1000_0001);
            let mut next = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            while Instant::now() < deadline {
                let kind = next() % 20;
                let req = client.post(&url);
                let req = if kind == 0 {
                    // Malformed: truncated JSON.
                    req.header("content-type", "application/json")
                        .body("{\"query\": \"x\", \"documents\": [\"a\"")
                } else {
                    // 1..150 documents: over 100 is 413.
                    let n = if kind == 1 {
                        101 + next() % 50
                    } else {
                        1 + next() % 60
                    };
                    let docs: Vec<String> = (0..n)
                        .map(|_| {
                            (0..(5 + next() % 40))
                                .map(|_| words[(next() % words.len() as u64) as usize])
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                        .collect();
                    req.json(&json!({"query": "paris river", "documents": docs}))
                };
                let sent = Instant::now();
                match req.send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let retry_after = r.headers().contains_key("retry-after");
                        let _ = r.bytes().await;
                        t.latencies.push(sent.elapsed().as_secs_f64());
                        match status {
                            200 => t.ok += 1,
                            429 => {
                                t.too_many += 1;
                                if !retry_after {
                                    t.too_many_without_retry_after += 1;
                                }
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            413 => t.too_large += 1,
                            400 => t.bad_json += 1,
                            401..=499 => t.other_4xx += 1,
                            _ => t.server_5xx += 1,
                        }
                    }
                    Err(_) => t.transport += 1,
                }
            }
            t
        }));
    }
    let mut all = Tally::default();
    for task in tasks {
        let t = task.await.unwrap();
        all.ok += t.ok;
        all.too_many += t.too_many;
        all.too_many_without_retry_after += t.too_many_without_retry_after;
        all.too_large += t.too_large;
        all.bad_json += t.bad_json;
        all.other_4xx += t.other_4xx;
        all.server_5xx += t.server_5xx;
        all.transport += t.transport;
        all.latencies.extend(t.latencies);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = stop.send(());
    serving.await.unwrap().unwrap();
    all.latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        let i =
            ((all.latencies.len() as f64 * p) as usize).min(all.latencies.len().saturating_sub(1));
        all.latencies.get(i).copied().unwrap_or(0.0) * 1000.0
    };
    let rss = peak_rss_mb();
    eprintln!(
        "load: {} requests in {elapsed:.1} s: 200 {}, 429 {}, 413 {}, 400 {}, other 4xx {}, 5xx {}, transport errors {}; \
         latency p50 {:.1} ms, p99 {:.1} ms; peak RSS of the test process {rss:.0} MB",
        all.latencies.len(),
        all.ok,
        all.too_many,
        all.too_large,
        all.bad_json,
        all.other_4xx,
        all.server_5xx,
        all.transport,
        pct(0.5),
        pct(0.99),
    );
    assert_eq!(all.server_5xx, 0, "5xx under load");
    assert_eq!(all.transport, 0, "transport errors under load");
    assert_eq!(
        all.too_many_without_retry_after, 0,
        "429 without Retry-After"
    );
    assert_eq!(all.other_4xx, 0);
    assert!(all.ok > 100, "only {} requests succeeded", all.ok);
    assert!(
        all.too_large > 0 && all.bad_json > 0,
        "the bad requests were sent"
    );
    assert!(rss < 100.0, "peak RSS {rss:.0} MB");
}
