//! Property tests of the request parsing: arbitrary bytes and arbitrary JSON
//! never panic a parser, and over real HTTP a garbage body on any route gets
//! only 200 (when it happens to be valid), 400, 413, 415 or 422, never a 5xx.
//! The case count is proptest's (`PROPTEST_CASES`, 64 by default here).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use firstrank_core::window::WindowScorer;
use firstrank_core::{Candidate, Query};
use firstrank_server::parse::{parse_batch, parse_json, parse_rerank};
use firstrank_server::{Limits, Server, ServerConfig};
use proptest::prelude::*;
use serde_json::Value;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: firstrank_core::testing::property_cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Arbitrary JSON, a few levels deep, with the field names the shapes use.
fn json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("query".to_string()),
        Just("documents".to_string()),
        Just("texts".to_string()),
        Just("text".to_string()),
        Just("title".to_string()),
        Just("top_n".to_string()),
        Just("return_documents".to_string()),
        Just("max_tokens_per_doc".to_string()),
        Just("candidates".to_string()),
        Just("qid".to_string()),
        Just("docid".to_string()),
        Just("doc".to_string()),
        Just("contents".to_string()),
        Just("requests".to_string()),
        "[a-z]{1,6}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn small_limits() -> Limits {
    Limits {
        max_documents: 8,
        max_document_bytes: 256,
        max_body_bytes: 4096,
        max_batch_queries: 4,
        ..Limits::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parsers_never_panic_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let limits = small_limits();
        if let Ok(v) = parse_json(&bytes) {
            let _ = parse_rerank(v.clone(), false, &limits);
            let _ = parse_rerank(v, true, &limits);
        }
        let _ = parse_batch(&bytes, &limits);
    }

    #[test]
    fn parsers_never_panic_on_json(value in json()) {
        let limits = small_limits();
        let _ = parse_rerank(value.clone(), false, &limits);
        let _ = parse_rerank(value.clone(), true, &limits);
        let text = serde_json::to_vec(&value).unwrap();
        let _ = parse_batch(&text, &limits);
        let wrapped = serde_json::to_vec(&serde_json::json!([value])).unwrap();
        let _ = parse_batch(&wrapped, &limits);
    }
}

/// Scores by length (fast and deterministic).
struct ByLength;

impl WindowScorer for ByLength {
    fn score_window(&mut self, _q: &Query, window: &[Candidate]) -> anyhow::Result<Vec<f32>> {
        Ok(window.iter().map(|c| c.text.len() as f32).collect())
    }
}

/// One server for all cases, on its own runtime thread.
fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let config = ServerConfig {
                    limits: small_limits(),
                    ..ServerConfig::default()
                };
                let server = Server::new(config, Box::new(ByLength), None).unwrap();
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                server
                    .serve(listener, std::future::pending::<()>())
                    .await
                    .unwrap();
            });
        });
        rx.recv().unwrap()
    })
}

/// Posts `body` with `content_type` and returns the status code.
fn post(path: &str, content_type: Option<&str>, body: &[u8]) -> u16 {
    let mut c = TcpStream::connect(server()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    if let Some(t) = content_type {
        req.push_str(&format!("Content-Type: {t}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    c.write_all(&bytes).unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let head = String::from_utf8_lossy(&out[..out.len().min(12)]).into_owned();
    head.get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {:?}", String::from_utf8_lossy(&out)))
}

const ROUTES: [&str; 5] = [
    "/rerank",
    "/v1/rerank",
    "/v2/rerank",
    "/rerank/batch",
    "/v1/rerank/batch",
];

proptest! {
    #![proptest_config(config())]

    #[test]
    fn garbage_over_http_gets_only_client_errors(
        route in 0..ROUTES.len(),
        body in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..600),
            json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        ],
        content_type in prop_oneof![
            Just(None),
            Just(Some("application/json")),
            Just(Some("text/plain")),
            Just(Some("application/x-www-form-urlencoded")),
        ],
    ) {
        let status = post(ROUTES[route], content_type, &body);
        prop_assert!(
            [200, 400, 413, 415, 422].contains(&status),
            "{} answered {status} to {:?}",
            ROUTES[route],
            String::from_utf8_lossy(&body)
        );
        if content_type.is_some_and(|t| !t.contains("json")) {
            prop_assert_eq!(status, 415);
        }
    }
}
