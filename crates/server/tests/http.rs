//! The server over real HTTP on loopback: each request shape, top_n and
//! return_documents, the batch endpoint, auth, every bad input, overload
//! (429), timeouts, graceful shutdown, metrics and the OpenAPI document.
//! The scorer is a deterministic lexical-overlap scorer defined here (with an
//! optional delay per window to make the queue fill); one test, gated on
//! FIRSTRANK_FETCH_MODELS=1, uses the real default model.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use firstrank_core::window::{WindowScorer, WindowStrategy};
use firstrank_core::{Candidate, Query};
use firstrank_server::{Limits, Server, ServerConfig};
use serde_json::{json, Value};

/// Counts distinct query words in the document (title included); sleeps
/// `delay` per batch of windows; records the largest batch it was given.
#[derive(Clone, Default)]
struct Overlap {
    delay: Duration,
    max_batch: Arc<AtomicUsize>,
}

fn overlap(query: &str, text: &str) -> f32 {
    let norm = |s: &str| -> Vec<String> {
        s.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect()
    };
    let doc = norm(text);
    let mut q = norm(query);
    q.sort();
    q.dedup();
    q.iter().filter(|w| doc.contains(w)).count() as f32
}

impl WindowScorer for Overlap {
    fn score_window(&mut self, query: &Query, window: &[Candidate]) -> anyhow::Result<Vec<f32>> {
        Ok(window
            .iter()
            .map(|c| overlap(&query.text, &c.text))
            .collect())
    }
    fn score_windows(
        &mut self,
        windows: &[(&Query, &[Candidate])],
    ) -> anyhow::Result<Vec<Vec<f32>>> {
        self.max_batch.fetch_max(windows.len(), Ordering::SeqCst);
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        windows
            .iter()
            .map(|(q, w)| self.score_window(q, w))
            .collect()
    }
}

struct TestServer {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.handle.await?
    }
}

async fn start(config: ServerConfig, scorer: impl WindowScorer + Send + 'static) -> TestServer {
    let server = Server::new(config, Box::new(scorer), None).expect("server");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(server.serve(listener, async {
        let _ = rx.await;
    }));
    TestServer {
        base,
        stop: Some(tx),
        handle,
    }
}

async fn start_default() -> TestServer {
    start(ServerConfig::default(), Overlap::default()).await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

const QUERY: &str = "capital of France";
/// By distinct query words present: [1] 3, [2] 2, [3] 1, [0] 0.
const DOCS: [&str; 4] = [
    "Berlin is a large city",
    "Paris is the capital of France",
    "the capital of Spain is Madrid",
    "France has many rivers",
];
const EXPECTED: [usize; 4] = [1, 2, 3, 0];

async fn post(base: &str, path: &str, body: &Value) -> (u16, Value) {
    let r = client()
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn indices(results: &Value) -> Vec<usize> {
    results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["index"].as_u64().unwrap() as usize)
        .collect()
}

#[tokio::test]
async fn jina_cohere_v1_shape_is_ordered_cut_to_top_n_with_documents() {
    let s = start_default().await;
    for path in ["/rerank", "/v1/rerank"] {
        let (status, body) = post(
            &s.base,
            path,
            &json!({"model": "rerank-english-v3.0", "query": QUERY, "documents": DOCS}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(indices(&body["results"]), EXPECTED);
        let scores: Vec<f64> = body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["relevance_score"].as_f64().unwrap())
            .collect();
        assert_eq!(scores, vec![1.0, 0.75, 0.5, 0.25]);
        // Jina returns documents by default.
        assert_eq!(body["results"][0]["document"]["text"], DOCS[1]);
        assert_eq!(body["model"], "firstrank");
        assert_eq!(body["object"], "list");
        assert!(body["usage"]["total_tokens"].as_u64().unwrap() > 0);
        assert!(body["results"][0].get("raw_score").is_none());
    }
    // top_n, return_documents false, object documents, raw_scores.
    let docs: Vec<Value> = DOCS.iter().map(|d| json!({"text": d})).collect();
    let (status, body) = post(
        &s.base,
        "/v1/rerank",
        &json!({"query": QUERY, "documents": docs, "top_n": 2, "return_documents": false, "raw_scores": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(indices(&body["results"]), EXPECTED[..2]);
    assert!(body["results"][0].get("document").is_none());
    assert_eq!(body["results"][0]["raw_score"], 3.0);
    assert_eq!(body["results"][1]["raw_score"], 2.0);
    // top_n larger than the list returns everything.
    let (_, body) = post(
        &s.base,
        "/rerank",
        &json!({"query": QUERY, "documents": DOCS, "top_n": 50}),
    )
    .await;
    assert_eq!(indices(&body["results"]), EXPECTED);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn cohere_v2_shape_omits_documents_unless_asked() {
    let s = start_default().await;
    let (status, body) = post(
        &s.base,
        "/v2/rerank",
        &json!({"model": "rerank-v3.5", "query": QUERY, "documents": DOCS, "top_n": 3}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(indices(&body["results"]), EXPECTED[..3]);
    assert!(body["results"][0].get("document").is_none());
    assert!(body["id"].as_str().unwrap().starts_with("firstrank-"));
    assert_eq!(body["meta"]["api_version"]["version"], "2");
    let (_, body) = post(
        &s.base,
        "/v2/rerank",
        &json!({"query": QUERY, "documents": DOCS, "return_documents": true}),
    )
    .await;
    assert_eq!(body["results"][3]["document"]["text"], DOCS[0]);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn tei_shape_answers_a_sorted_array() {
    let s = start_default().await;
    for path in ["/rerank", "/v1/rerank"] {
        let (status, body) = post(&s.base, path, &json!({"query": QUERY, "texts": DOCS})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(indices(&body), EXPECTED);
        assert_eq!(body[0]["score"], 1.0);
        assert_eq!(body[3]["score"], 0.25);
        assert!(body[0].get("text").is_none());
    }
    let (_, body) = post(
        &s.base,
        "/rerank",
        &json!({"query": QUERY, "texts": DOCS, "return_text": true, "raw_scores": true, "truncate": true}),
    )
    .await;
    assert_eq!(body[0]["text"], DOCS[1]);
    let raw: Vec<f64> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["score"].as_f64().unwrap())
        .collect();
    assert_eq!(raw, vec![3.0, 2.0, 1.0, 0.0]);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn sliding_windows_rank_a_long_list_and_scores_stay_comparable() {
    // 45 documents, windows of 5 with stride 2: many windows; the overlap
    // scorer's best documents must still reach the top.
    let config = ServerConfig {
        strategy: WindowStrategy::sliding(5, 2, usize::MAX),
        ..ServerConfig::default()
    };
    let s = start(config, Overlap::default()).await;
    let mut docs: Vec<String> = (0..45)
        .map(|i| format!("filler passage number {i}"))
        .collect();
    docs[40] = "Paris is the capital of France".into();
    docs[30] = "capital of Spain".into();
    let (status, body) = post(
        &s.base,
        "/rerank",
        &json!({"query": QUERY, "documents": docs, "top_n": 2}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(indices(&body["results"]), vec![40, 30]);
    assert!((body["results"][1]["relevance_score"].as_f64().unwrap() - 44.0 / 45.0).abs() < 1e-12);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn max_chunks_per_doc_ranks_a_long_document_by_its_best_chunk() {
    use firstrank_server::lexical::LexicalScorer;
    // The scorer reads 10 words of a document; document 1 is relevant only
    // in its second 10 words.
    let scorer = LexicalScorer {
        passage_words: Some(10),
        ..Default::default()
    };
    let server = start(ServerConfig::default(), scorer).await;
    let filler = ["paris"; 10].join(" ");
    let long = format!("{filler} fleas live fleas live two weeks {filler}");
    let body = |chunks: Option<u64>| {
        let mut b = json!({
            "query": "how long do fleas live",
            "documents": ["fleas are small", long, "a dog"],
        });
        if let Some(n) = chunks {
            b["max_chunks_per_doc"] = json!(n);
        }
        b
    };
    let (status, whole) = post(&server.base, "/v2/rerank", &body(None)).await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(indices(&whole["results"])[0], 0);
    let (status, chunked) = post(&server.base, "/v2/rerank", &body(Some(3))).await;
    assert_eq!(status, 200, "{chunked}");
    assert_eq!(indices(&chunked["results"]), vec![1, 0, 2]);
    // More chunks than a window holds is a 422 naming the field.
    let (status, err) = post(&server.base, "/v2/rerank", &body(Some(21))).await;
    assert_eq!(status, 422, "{err}");
    assert!(err.to_string().contains("max_chunks_per_doc"), "{err}");
    server.shutdown().await.unwrap();

    // A scorer that cannot cut documents refuses chunking with a 422.
    let server = start_default().await;
    let (status, err) = post(&server.base, "/v2/rerank", &body(Some(3))).await;
    assert_eq!(status, 422, "{err}");
    assert!(err.to_string().contains("max_chunks_per_doc"), "{err}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn batch_endpoint_takes_rank_llm_requests_and_answers_result_jsonl() {
    let s = start_default().await;
    let req = |qid: &str, q: &str| json!({"query": {"text": q, "qid": qid}, "candidates": DOCS.iter().enumerate().map(|(i, d)| json!({"docid": format!("d{i}"), "score": 10 - i, "doc": {"contents": d}})).collect::<Vec<_>>()});
    let body = json!([req("q1", QUERY), req("q2", "Madrid Spain")]);
    for path in ["/rerank/batch", "/v1/rerank/batch"] {
        let r = client()
            .post(format!("{}{path}", s.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/x-ndjson");
        let text = r.text().await.unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["query"]["qid"], "q1");
        let order: Vec<&str> = lines[0]["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["docid"].as_str().unwrap())
            .collect();
        assert_eq!(order, vec!["d1", "d2", "d3", "d0"]);
        assert_eq!(lines[1]["candidates"][0]["docid"], "d2");
        assert_eq!(lines[0]["candidates"][0]["model_score"], 3.0);
    }
    // JSONL bodies work too.
    let jsonl = format!("{}\n{}\n", req("a", QUERY), req("b", QUERY));
    let r = client()
        .post(format!("{}/rerank/batch", s.base))
        .body(jsonl)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap().lines().count(), 2);
    s.shutdown().await.unwrap();
}

/// Sends raw bytes and checks the status and that the body is a JSON error.
async fn expect_error(
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Vec<u8>,
    status: u16,
    kind: &str,
) {
    let r = client()
        .request(method, format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let got = r.status().as_u16();
    assert_eq!(
        r.headers().get("content-type").map(|v| v.to_str().unwrap()),
        Some("application/json"),
        "{path} -> {got}"
    );
    let v: Value = r.json().await.unwrap();
    let shown = String::from_utf8_lossy(&body[..body.len().min(120)]).to_string();
    assert_eq!(got, status, "{path} {shown}: {v}");
    assert_eq!(v["error_type"], kind, "{path} {shown}: {v}");
    assert!(!v["error"].as_str().unwrap().is_empty());
    assert_eq!(v["error"], v["message"]);
}

#[tokio::test]
async fn every_bad_input_gets_a_4xx_with_a_json_error() {
    let config = ServerConfig {
        limits: Limits {
            max_total_tokens: 20_000,
            ..Limits::default()
        },
        ..ServerConfig::default()
    };
    let s = start(config, Overlap::default()).await;
    let b = &s.base;
    let j = |v: Value| serde_json::to_vec(&v).unwrap();
    use reqwest::Method as M;
    // Not JSON: 400.
    expect_error(
        b,
        M::POST,
        "/rerank",
        b"{\"query\": \"q\", \"documents\": [".to_vec(),
        400,
        "invalid_json",
    )
    .await;
    expect_error(
        b,
        M::POST,
        "/rerank",
        b"not json at all".to_vec(),
        400,
        "invalid_json",
    )
    .await;
    expect_error(b, M::POST, "/rerank", Vec::new(), 400, "invalid_json").await;
    expect_error(
        b,
        M::POST,
        "/v2/rerank",
        b"{\"query\": \"caf\xe9\", \"documents\": [\"a\"]}".to_vec(),
        400,
        "invalid_json",
    )
    .await;
    expect_error(
        b,
        M::POST,
        "/rerank/batch",
        b"\xff\xfe[]".to_vec(),
        400,
        "invalid_json",
    )
    .await;
    // Wrong types, missing or empty fields: 422.
    for body in [
        json!([1, 2]),
        json!({"documents": ["a"]}),
        json!({"query": 7, "documents": ["a"]}),
        json!({"query": "", "documents": ["a"]}),
        json!({"query": "   ", "documents": ["a"]}),
        json!({"query": "q"}),
        json!({"query": "q", "documents": "a"}),
        json!({"query": "q", "documents": []}),
        json!({"query": "q", "documents": [1]}),
        json!({"query": "q", "documents": [{"title": "no text"}]}),
        json!({"query": "q", "documents": ["a"], "top_n": 0}),
        json!({"query": "q", "documents": ["a"], "top_n": -1}),
        json!({"query": "q", "documents": ["a"], "return_documents": "yes"}),
        json!({"query": "q", "documents": ["a"], "model": 3}),
        json!({"query": "q", "texts": []}),
        json!({"query": "q", "texts": [{"text": "a"}]}),
    ] {
        expect_error(
            b,
            M::POST,
            "/rerank",
            j(body.clone()),
            422,
            "invalid_request",
        )
        .await;
        expect_error(b, M::POST, "/v2/rerank", j(body), 422, "invalid_request").await;
    }
    for body in [
        json!([]),
        json!([{"query": "q", "candidates": []}]),
        json!([{"query": {"text": "q"}, "candidates": []}]),
        json!([{"query": {"text": "q", "qid": 1}, "candidates": [{"docid": "a", "doc": {}}]}]),
        json!({"requests": 5}),
    ] {
        expect_error(b, M::POST, "/rerank/batch", j(body), 422, "invalid_request").await;
    }
    // Limits: 413.
    let many: Vec<String> = (0..10_000).map(|i| format!("doc {i}")).collect();
    expect_error(
        b,
        M::POST,
        "/rerank",
        j(json!({"query": "q", "documents": many})),
        413,
        "payload_too_large",
    )
    .await;
    let huge = "x".repeat(5 * 1024 * 1024);
    expect_error(
        b,
        M::POST,
        "/rerank",
        j(json!({"query": "q", "documents": [huge]})),
        413,
        "payload_too_large",
    )
    .await;
    let big_doc = "word ".repeat(14_000); // 70 kB > 64 KiB per document
    expect_error(
        b,
        M::POST,
        "/rerank",
        j(json!({"query": "q", "documents": [big_doc.clone()]})),
        413,
        "payload_too_large",
    )
    .await;
    let tokens: Vec<String> = (0..100).map(|_| "y".repeat(1000)).collect(); // ~25k estimated tokens > 20k
    expect_error(
        b,
        M::POST,
        "/rerank",
        j(json!({"query": "q", "documents": tokens})),
        413,
        "payload_too_large",
    )
    .await;
    // TEI's truncate cuts an over-long document instead.
    let (status, _) = post(
        b,
        "/rerank",
        &json!({"query": "q", "texts": [big_doc.clone()], "truncate": true}),
    )
    .await;
    assert_eq!(status, 200);
    // Routes and methods.
    expect_error(b, M::GET, "/rerank", Vec::new(), 405, "method_not_allowed").await;
    expect_error(b, M::POST, "/v3/rerank", j(json!({})), 404, "not_found").await;
    expect_error(b, M::GET, "/etc/passwd", Vec::new(), 404, "not_found").await;
    // Still healthy after all that.
    let h: Value = client()
        .get(format!("{b}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], "ok");
    let (status, _) = post(b, "/rerank", &json!({"query": QUERY, "documents": DOCS})).await;
    assert_eq!(status, 200);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn api_key_is_required_except_on_health() {
    let config = ServerConfig {
        api_key: Some("s3cret-key".into()),
        ..ServerConfig::default()
    };
    let s = start(config, Overlap::default()).await;
    let body = json!({"query": QUERY, "documents": DOCS});
    let send = |key: Option<&'static str>, path: &'static str| {
        let mut r = client().post(format!("{}{path}", s.base)).json(&body);
        if let Some(k) = key {
            r = r.header("authorization", k);
        }
        r.send()
    };
    for (key, status) in [
        (None, 401),
        (Some("Bearer wrong"), 401),
        (Some("Bearer s3cret-ke"), 401),
        (Some("Bearer s3cret-key-and-more"), 401),
        (Some("s3cret-key"), 401),
        (Some("Bearer s3cret-key"), 200),
    ] {
        let r = send(key, "/v2/rerank").await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{key:?}");
        if status == 401 {
            assert_eq!(r.headers()["www-authenticate"], "Bearer");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error_type"], "unauthorized");
        }
    }
    let r = client()
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .get(format!("{}/health", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_saturated_queue_answers_429_with_retry_after_and_no_5xx() {
    let config = ServerConfig {
        queue_capacity: 1,
        max_batch_queries: 1,
        ..ServerConfig::default()
    };
    let scorer = Overlap {
        delay: Duration::from_millis(300),
        ..Overlap::default()
    };
    let s = start(config, scorer).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let base = s.base.clone();
        tasks.push(tokio::spawn(async move {
            let r = client()
                .post(format!("{base}/rerank"))
                .json(&json!({"query": QUERY, "documents": DOCS}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            let v: Value = r.json().await.unwrap();
            (status, retry, v)
        }));
    }
    let mut ok = 0;
    let mut busy = 0;
    for t in tasks {
        let (status, retry, v) = t.await.unwrap();
        match status {
            200 => {
                ok += 1;
                assert_eq!(indices(&v["results"]), EXPECTED);
            }
            429 => {
                busy += 1;
                assert!(retry.unwrap() >= 1);
                assert_eq!(v["error_type"], "overloaded");
            }
            other => panic!("unexpected status {other}: {v}"),
        }
    }
    // One running + one queued at most when the burst arrives.
    assert!(ok >= 1 && busy >= 1, "ok {ok}, 429 {busy}");
    assert_eq!(ok + busy, 8);
    let m = client()
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("firstrank_rejected_requests_total{reason=\"overloaded\"}"),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "firstrank_http_requests_total{{route=\"/rerank\",status=\"429\"}} {busy}"
        )),
        "{m}"
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn work_that_cannot_finish_within_the_timeout_is_refused_up_front() {
    // Measured speed 10 s per window, timeout 5 s: the first request is
    // admitted on an idle server; a second one behind it would wait about
    // 10 s, so it gets 429 at once instead of a timeout later.
    let config = ServerConfig {
        initial_seconds_per_window: Some(10.0),
        request_timeout: Duration::from_secs(5),
        ..ServerConfig::default()
    };
    let scorer = Overlap {
        delay: Duration::from_millis(600),
        ..Overlap::default()
    };
    let s = start(config, scorer).await;
    let base = s.base.clone();
    let first = tokio::spawn(async move {
        post(
            &base,
            "/rerank",
            &json!({"query": QUERY, "documents": DOCS}),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = std::time::Instant::now();
    let r = client()
        .post(format!("{}/rerank", s.base))
        .json(&json!({"query": QUERY, "documents": DOCS}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "429 must be immediate"
    );
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 10, "Retry-After {retry}");
    let (status, v) = first.await.unwrap();
    assert_eq!(status, 200, "{v}");
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn queued_requests_are_scored_together() {
    let config = ServerConfig {
        max_batch_queries: 8,
        ..ServerConfig::default()
    };
    let scorer = Overlap {
        delay: Duration::from_millis(300),
        ..Overlap::default()
    };
    let max_batch = scorer.max_batch.clone();
    let s = start(config, scorer).await;
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let base = s.base.clone();
        tasks.push(tokio::spawn(async move {
            post(
                &base,
                "/rerank",
                &json!({"query": QUERY, "documents": DOCS}),
            )
            .await
        }));
    }
    for t in tasks {
        let (status, v) = t.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(indices(&v["results"]), EXPECTED);
    }
    // The first request occupies the worker; the others queue and are drained together.
    assert!(
        max_batch.load(Ordering::SeqCst) >= 2,
        "largest batch {}",
        max_batch.load(Ordering::SeqCst)
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_request_not_scored_in_time_gets_503_timeout() {
    let config = ServerConfig {
        request_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let scorer = Overlap {
        delay: Duration::from_millis(1500),
        ..Overlap::default()
    };
    let s = start(config, scorer).await;
    let started = std::time::Instant::now();
    let (status, v) = post(
        &s.base,
        "/rerank",
        &json!({"query": QUERY, "documents": DOCS}),
    )
    .await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error_type"], "timeout");
    assert!(started.elapsed() < Duration::from_millis(1400));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let scorer = Overlap {
        delay: Duration::from_millis(700),
        ..Overlap::default()
    };
    let s = start(ServerConfig::default(), scorer).await;
    let base = s.base.clone();
    let inflight = tokio::spawn(async move {
        post(
            &base,
            "/rerank",
            &json!({"query": QUERY, "documents": DOCS}),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let base = s.base.clone();
    s.shutdown().await.unwrap();
    let (status, v) = inflight.await.unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(indices(&v["results"]), EXPECTED);
    // The listener is closed now.
    assert!(client().get(format!("{base}/health")).send().await.is_err());
}

#[tokio::test]
async fn metrics_health_info_and_openapi() {
    let s = start_default().await;
    for _ in 0..3 {
        post(
            &s.base,
            "/rerank",
            &json!({"query": QUERY, "documents": DOCS}),
        )
        .await;
    }
    post(&s.base, "/rerank", &json!({"query": ""})).await;
    let r = client()
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let m = r.text().await.unwrap();
    for needle in [
        "firstrank_http_requests_total{route=\"/rerank\",status=\"200\"} 3",
        "firstrank_http_requests_total{route=\"/rerank\",status=\"422\"} 1",
        "firstrank_http_request_duration_seconds_count{route=\"/rerank\"} 4",
        "firstrank_http_request_duration_seconds_bucket{route=\"/rerank\",le=\"+Inf\"} 4",
        "firstrank_queue_depth 0",
        "firstrank_documents_processed_total 12",
        "firstrank_windows_scored_total 3",
        "# TYPE firstrank_tokens_processed_total counter",
    ] {
        assert!(m.contains(needle), "missing `{needle}` in\n{m}");
    }
    let h: Value = client()
        .get(format!("{}/health", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], "ok");
    let i: Value = client()
        .get(format!("{}/info", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(i["limits"]["max_documents"], 100);
    assert!(i["seconds_per_window"].as_f64().unwrap() > 0.0);
    let o: Value = client()
        .get(format!("{}/openapi.json", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(o["openapi"], "3.1.0");
    for p in [
        "/rerank",
        "/v1/rerank",
        "/v2/rerank",
        "/rerank/batch",
        "/v1/rerank/batch",
        "/health",
        "/info",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(
            o["paths"].get(p).is_some(),
            "{p} missing from the OpenAPI document"
        );
    }
    s.shutdown().await.unwrap();
}

/// The default model through HTTP gives the same ranking as the library call.
#[tokio::test]
async fn default_model_over_http_matches_the_library() {
    if std::env::var("FIRSTRANK_FETCH_MODELS").as_deref() != Ok("1") {
        firstrank_core::testing::skip_or_fail(
            "the default-model server test needs FIRSTRANK_FETCH_MODELS=1",
        );
        return;
    }
    use firstrank_models::reranker::{LlmReranker, RerankerConfig};
    let path = firstrank_models::fetch::ensure_model("smollm2").expect("fetching smollm2");
    let path = path.to_str().unwrap().to_string();
    let load = || {
        LlmReranker::load(&path, RerankerConfig::default(), &candle_device())
            .expect("loading smollm2")
    };
    let strategy = WindowStrategy::sliding(20, 10, usize::MAX);
    let docs = [
        "The Eiffel Tower is in Paris, the capital of France.",
        "Bananas are rich in potassium.",
        "Paris has been the capital of France since the 10th century.",
    ];
    // Library path.
    let mut direct = load();
    let request = firstrank_core::Request {
        query: Query {
            qid: "0".into(),
            text: "What is the capital of France?".into(),
            instruction: None,
        },
        candidates: docs
            .iter()
            .enumerate()
            .map(|(i, d)| Candidate {
                docid: i.to_string(),
                score: (3 - i) as f64,
                title: None,
                text: d.to_string(),
            })
            .collect(),
    };
    let expected = firstrank_core::window::rerank(&mut direct, &strategy, request).unwrap();
    let expected_order: Vec<usize> = expected.ranked.iter().map(|c| c.original_rank).collect();
    let expected_raw: Vec<f64> = expected
        .ranked
        .iter()
        .map(|c| c.model_score.unwrap() as f64)
        .collect();
    drop(direct);
    // HTTP path.
    let model = load();
    let counter: firstrank_server::SharedTokenCounter = Arc::new(model.tokenizer().clone());
    let config = ServerConfig {
        strategy,
        model_name: "smollm2".into(),
        ..ServerConfig::default()
    };
    let server = Server::new(config, Box::new(model), Some(counter)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(server.serve(listener, async {
        let _ = rx.await;
    }));
    let (status, v) = post(
        &base,
        "/v2/rerank",
        &json!({"query": "What is the capital of France?", "documents": docs, "raw_scores": true}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(indices(&v["results"]), expected_order);
    assert_eq!(v["model"], "smollm2");
    for (r, raw) in v["results"].as_array().unwrap().iter().zip(&expected_raw) {
        assert!(
            (r["raw_score"].as_f64().unwrap() - raw).abs() < 1e-4,
            "{r} vs {raw}"
        );
    }
    assert!(v["usage"]["total_tokens"].as_u64().unwrap() > 20);
    let (status, tei) = post(
        &base,
        "/rerank",
        &json!({"query": "What is the capital of France?", "texts": docs}),
    )
    .await;
    assert_eq!(status, 200, "{tei}");
    assert_eq!(indices(&tei), expected_order);
    let _ = tx.send(());
    handle.await.unwrap().unwrap();
}

fn candle_device() -> candle_core::Device {
    candle_core::Device::Cpu
}

/// The OpenAPI document is generated from the code: every route the router
/// serves is in it under its method, and every documented operation is
/// served (not 404 or 405).
#[tokio::test]
async fn every_route_is_in_the_openapi_document() {
    let server = Server::new(ServerConfig::default(), Box::new(Overlap::default()), None).unwrap();
    let routes = server.routes();
    assert!(routes.len() >= 9, "{routes:?}");
    let doc = serde_json::to_value(firstrank_server::openapi::document()).unwrap();
    for (method, path) in &routes {
        assert!(
            doc["paths"][path].get(method).is_some(),
            "{method} {path} is served but not in the OpenAPI document"
        );
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(server.serve(listener, async {
        let _ = rx.await;
    }));
    let served: Value = client()
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served, doc, "/openapi.json serves the generated document");
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            assert!(
                routes.contains(&(method.as_str(), path.as_str())),
                "{method} {path} is documented but not in the router's route list"
            );
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = client()
                .request(m, format!("{base}{path}"))
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            assert!(
                ![404, 405].contains(&r.status().as_u16()),
                "{method} {path} answers {}",
                r.status()
            );
        }
    }
    // Health is documented as needing no key; the rest use the bearer scheme.
    assert_eq!(doc["paths"]["/health"]["get"]["security"], json!([{}]));
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["schemas"]["RerankRequest"].is_object());
    let _ = tx.send(());
    handle.await.unwrap().unwrap();
}
