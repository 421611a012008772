//! The server against clients and scorers that misbehave: stalled
//! connections (header-read timeout, connection cap), a scorer that errors,
//! panics or keeps panicking (only its request fails; `/health` reports a
//! dead worker), a query longer than the limit (413 before any work), a
//! streamed body over the size limit, a shutdown bounded by
//! `shutdown_timeout` while a request is still being scored, 503
//! `shutting_down` for a request read after the signal, a large batch
//! that must not hold up single requests, and work cancelled between windows
//! when its client leaves.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use firstrank_core::window::{WindowScorer, WindowStrategy};
use firstrank_core::{Candidate, Query};
use firstrank_server::{Limits, Server, ServerConfig};
use serde_json::{json, Value};

/// Scores by length, except on queries that ask it to misbehave: `ERROR`
/// returns an error, `PANIC` panics, `SLOW` sleeps two seconds.
struct Unruly;

impl WindowScorer for Unruly {
    fn score_window(&mut self, query: &Query, window: &[Candidate]) -> anyhow::Result<Vec<f32>> {
        if query.text.contains("ERROR") {
            anyhow::bail!("the scorer failed on purpose");
        }
        if query.text.contains("PANIC") {
            panic!("the scorer panicked on purpose");
        }
        if query.text.contains("SLOW") {
            std::thread::sleep(Duration::from_secs(2));
        }
        Ok(window.iter().map(|c| c.text.len() as f32).collect())
    }
}

struct Running {
    base: String,
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(config: ServerConfig) -> Running {
    start_with(config, Box::new(Unruly)).await
}

async fn start_with(config: ServerConfig, scorer: Box<dyn WindowScorer + Send>) -> Running {
    let server = Server::new(config, scorer, None).expect("server");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(server.serve(listener, async {
        let _ = rx.await;
    }));
    Running {
        base: format!("http://{addr}"),
        addr,
        stop: Some(tx),
        handle,
    }
}

fn config() -> ServerConfig {
    ServerConfig {
        strategy: WindowStrategy::sliding(4, 2, usize::MAX),
        ..ServerConfig::default()
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn rerank(base: &str, query: &str) -> (u16, Value) {
    let r = client()
        .post(format!("{base}/v1/rerank"))
        .json(&json!({"query": query, "documents": ["a", "bbb", "cc"]}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn metrics_text(base: &str) -> String {
    client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn health(base: &str) -> (u16, Value) {
    let r = client().get(format!("{base}/health")).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn a_failing_scorer_fails_only_its_request_and_a_broken_one_shows_on_health() {
    let s = start(config()).await;
    let b = &s.base;
    assert_eq!(rerank(b, "fine").await.0, 200);
    let (code, body) = rerank(b, "ERROR please").await;
    assert_eq!(code, 500, "{body}");
    assert_eq!(body["error_type"], "scoring_failed");
    assert_eq!(rerank(b, "fine").await.0, 200);

    // One panic: a 500 for that request, the worker carries on.
    let (code, body) = rerank(b, "PANIC once").await;
    assert_eq!(code, 500, "{body}");
    assert_eq!(rerank(b, "fine").await.0, 200);
    let (code, h) = health(b).await;
    assert_eq!((code, h["status"].as_str()), (200, Some("ok")), "{h}");
    assert_eq!(h["scorer_panics"], 1);

    // Neighbours of a failing request in one combined batch still get 200.
    let (bad, good) = tokio::join!(rerank(b, "ERROR again"), rerank(b, "fine too"));
    assert_eq!((bad.0, good.0), (500, 200), "{} {}", bad.1, good.1);

    // Panics in a row: the scorer is taken as broken, the worker stops.
    for _ in 0..firstrank_server::engine::MAX_CONSECUTIVE_PANICS {
        assert_eq!(rerank(b, "PANIC again").await.0, 500);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let h = loop {
        let (code, h) = health(b).await;
        if code == 503 || Instant::now() > deadline {
            break (code, h);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(h.0, 503, "{}", h.1);
    assert_eq!(h.1["status"], "worker_stopped");
    let (code, body) = rerank(b, "fine").await;
    assert_eq!(code, 503, "{body}");
    let metrics = metrics_text(b).await;
    assert!(
        metrics.contains("firstrank_scorer_panics_total 4"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_query_over_the_token_limit_is_413_before_any_work() {
    let s = start(ServerConfig {
        limits: Limits {
            max_query_tokens: 16,
            ..Limits::default()
        },
        ..config()
    })
    .await;
    // Without a tokenizer, tokens are bytes / 4: 100 bytes are 25 tokens.
    let (code, body) = rerank(&s.base, &"x".repeat(100)).await;
    assert_eq!(code, 413, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("--max-query-tokens"), "{message}");
    let batch = json!({"query": {"text": "y".repeat(100), "qid": "q1"},
                       "candidates": [{"docid": "d", "score": 1.0, "doc": {"contents": "a"}}]});
    let r = client()
        .post(format!("{}/rerank/batch", s.base))
        .json(&json!([batch]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let h = health(&s.base).await.1;
    assert_eq!(h["pending_windows"], 0, "{h}");
    assert_eq!(rerank(&s.base, "short").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_over_the_limit_is_413() {
    let s = start(ServerConfig {
        limits: Limits {
            max_body_bytes: 1024,
            ..Limits::default()
        },
        ..config()
    })
    .await;
    let addr = s.addr;
    // Chunked, so no Content-Length announces the size: 8 chunks of 256 bytes.
    let response = tokio::task::spawn_blocking(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut req = b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
        for _ in 0..8 {
            req.extend_from_slice(b"100\r\n");
            req.extend_from_slice(&[b'a'; 256]);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\n");
        let _ = c.write_all(&req);
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        out
    })
    .await
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("payload_too_large"), "{response}");
}

/// Opens `n` connections that send half a request's headers and stall.
fn stall(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|_| {
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
            c.write_all(b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-")
                .ok()?;
            Some(c)
        })
        .collect()
}

/// A plain `GET /health` with a short timeout: whether it got a 200.
fn health_answers(addr: std::net::SocketAddr) -> bool {
    let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
    if c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    c.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_are_capped_and_closed_after_the_header_timeout() {
    let s = start(ServerConfig {
        header_read_timeout: Duration::from_secs(1),
        max_connections: 40,
        shutdown_timeout: Duration::from_secs(2),
        ..config()
    })
    .await;
    let addr = s.addr;
    // One connection that never sends a byte, opened before the cap fills.
    let mut idle = TcpStream::connect(addr).unwrap();
    let started = Instant::now();
    let stalled = tokio::task::spawn_blocking(move || stall(addr, 120))
        .await
        .unwrap();
    assert!(stalled.len() >= 100, "only {} connections", stalled.len());
    // Past the cap /health is closed on arrival; within about the header
    // timeout the stalled ones are closed and it answers again.
    let answered = tokio::task::spawn_blocking(move || loop {
        if health_answers(addr) {
            return Some(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(10) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    })
    .await
    .unwrap();
    let took = answered.expect("/health did not answer within 10 s of the stall");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The server closed the stalled connections (read gives EOF, not a hang).
    let mut first = stalled.into_iter().next().unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    let closed = first.read_to_end(&mut rest).is_ok();
    assert!(closed, "a stalled connection was still open");
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(
        idle.read_to_end(&mut rest).is_ok(),
        "an idle connection was still open"
    );
    assert_eq!(rerank(&s.base, "fine").await.0, 200);
    let metrics = metrics_text(&s.base).await;
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("firstrank_refused_connections_total "))
        .and_then(|v| v.parse().ok())
        .expect("the refused-connections counter");
    assert!(refused >= 60, "{refused} connections refused at the cap");
    shutdown_within(s, Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_while_a_request_is_still_being_scored() {
    let s = start(ServerConfig {
        shutdown_timeout: Duration::from_millis(300),
        ..config()
    })
    .await;
    let base = s.base.clone();
    let slow = tokio::spawn(async move { rerank(&base, "SLOW and SLOW").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The scorer sleeps 2 s per window; the drain bound is 0.3 s.
    shutdown_within(s, Duration::from_millis(1500)).await;
    let _ = slow.await;
}

/// A request whose body is still arriving when the shutdown signal comes
/// is refused with 503 `shutting_down` and a Retry-After (a load balancer
/// retries it elsewhere), while the request already being scored finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_read_after_the_shutdown_signal_get_503_shutting_down() {
    let s = start(ServerConfig {
        shutdown_timeout: Duration::from_secs(10),
        ..config()
    })
    .await;
    let base = s.base.clone();
    let slow = tokio::spawn(async move { rerank(&base, "SLOW").await });
    let body = json!({"query": "late", "documents": ["a", "bb"]}).to_string();
    let mut late = TcpStream::connect(s.addr).unwrap();
    write!(
        late,
        "POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let Running { stop, handle, .. } = s;
    let _ = stop.unwrap().send(());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = tokio::task::spawn_blocking(move || {
        late.write_all(body.as_bytes()).unwrap();
        late.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut answer = String::new();
        let _ = late.read_to_string(&mut answer);
        answer
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("shutting_down"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    // The request admitted before the signal was scored to the end.
    let (code, done) = slow.await.unwrap();
    assert_eq!(code, 200, "{done}");
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("serve returned")
        .unwrap()
        .unwrap();
}

async fn shutdown_within(mut s: Running, bound: Duration) {
    let started = Instant::now();
    let _ = s.stop.take().unwrap().send(());
    tokio::time::timeout(bound, s.handle)
        .await
        .unwrap_or_else(|_| panic!("serve did not return within {bound:?} of the shutdown"))
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < bound);
}

/// Sleeps 100 ms per window and counts the windows it scored.
struct Counting(Arc<AtomicUsize>);

impl WindowScorer for Counting {
    fn score_window(&mut self, _q: &Query, window: &[Candidate]) -> anyhow::Result<Vec<f32>> {
        std::thread::sleep(Duration::from_millis(100));
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(window.iter().map(|c| c.text.len() as f32).collect())
    }
    fn score_windows(
        &mut self,
        windows: &[(&Query, &[Candidate])],
    ) -> anyhow::Result<Vec<Vec<f32>>> {
        windows
            .iter()
            .map(|(q, w)| self.score_window(q, w))
            .collect()
    }
}

async fn start_counting(config: ServerConfig) -> (Running, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let running = start_with(config, Box::new(Counting(count.clone()))).await;
    (running, count)
}

/// A batch of `n` queries with one window (4 documents) each.
fn batch_body(n: usize) -> Value {
    let requests: Vec<Value> = (0..n)
        .map(|i| {
            json!({"query": {"text": "q", "qid": format!("q{i}")},
                   "candidates": (0..4).map(|d| json!({"docid": format!("d{d}"), "score": 1.0,
                                                      "doc": {"contents": "x".repeat(d + 1)}}))
                                       .collect::<Vec<_>>()})
        })
        .collect();
    json!(requests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_interleaves_with_single_requests() {
    let (s, _) = start_counting(ServerConfig {
        max_batch_queries: 2,
        ..config()
    })
    .await;
    let base = s.base.clone();
    // 20 windows at 2 per batch of 100 ms each: about 1 s alone.
    let started = Instant::now();
    let batch = tokio::spawn(async move {
        let r = client()
            .post(format!("{base}/rerank/batch"))
            .json(&batch_body(20))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (code, _) = rerank(&s.base, "single").await;
    let single = started.elapsed();
    assert_eq!(code, 200);
    let (code, whole) = batch.await.unwrap();
    assert_eq!(code, 200);
    assert!(
        single + Duration::from_millis(300) < whole,
        "the single request ({single:?}) waited for the batch ({whole:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_of_a_client_that_left_is_cancelled_between_windows() {
    let (s, count) = start_counting(ServerConfig {
        max_batch_queries: 1,
        ..config()
    })
    .await;
    let base = s.base.clone();
    // 30 windows at 100 ms each; the client gives up after 350 ms.
    let gone = tokio::spawn(async move {
        reqwest::Client::builder()
            .timeout(Duration::from_millis(350))
            .build()
            .unwrap()
            .post(format!("{base}/rerank/batch"))
            .json(&batch_body(30))
            .send()
            .await
    });
    assert!(gone.await.unwrap().is_err(), "the client should time out");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let scored = count.load(Ordering::SeqCst);
    assert!(scored < 12, "{scored} windows scored after the client left");
    // The worker is free again.
    assert_eq!(rerank(&s.base, "after").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_not_sent_in_time_gets_408() {
    let s = start(ServerConfig {
        body_read_timeout: Duration::from_millis(300),
        ..config()
    })
    .await;
    let addr = s.addr;
    let response = tokio::task::spawn_blocking(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(
            b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"query\"",
        )
        .unwrap();
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        out
    })
    .await
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("body_timeout"), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_concurrency_cap_get_429_with_retry_after() {
    let (s, _) = start_counting(ServerConfig {
        max_concurrent_requests: 1,
        ..config()
    })
    .await;
    let send = |base: String| async move {
        let r = client()
            .post(format!("{base}/rerank/batch"))
            .json(&batch_body(3))
            .send()
            .await
            .unwrap();
        let retry = r.headers().contains_key("retry-after");
        (r.status().as_u16(), retry)
    };
    let (a, b, c) = tokio::join!(
        send(s.base.clone()),
        send(s.base.clone()),
        send(s.base.clone())
    );
    let all = [a, b, c];
    assert!(all.iter().any(|r| r.0 == 200), "{all:?}");
    assert!(all.contains(&(429, true)), "{all:?}");
}

#[tokio::test]
async fn cors_headers_only_for_allowed_origins() {
    let s = start(ServerConfig {
        cors_allow_origins: vec!["https://app.example.com".into()],
        ..config()
    })
    .await;
    let get = |origin: &'static str| {
        let base = s.base.clone();
        async move {
            client()
                .get(format!("{base}/health"))
                .header("origin", origin)
                .send()
                .await
                .unwrap()
        }
    };
    let allowed = get("https://app.example.com").await;
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let other = get("https://evil.example.com").await;
    assert!(!other.headers().contains_key("access-control-allow-origin"));
    let preflight = client()
        .request(reqwest::Method::OPTIONS, format!("{}/v1/rerank", s.base))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert!(preflight.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    // Off by default.
    let plain = start(config()).await;
    let r = client()
        .get(format!("{}/health", plain.base))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    // A malformed origin is refused at start.
    let bad = ServerConfig {
        cors_allow_origins: vec!["app.example.com".into()],
        ..config()
    };
    assert!(Server::new(bad, Box::new(Unruly), None).is_err());
}
