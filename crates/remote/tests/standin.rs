//! The remote backend against the local stand-in server: FIRST in vLLM's and
//! llama.cpp's shapes, missing identifiers, generation through the chat
//! endpoint, a 429 then success, a timeout, malformed JSON, no
//! log-probabilities, a 4xx that is not retried, concurrent requests.

use std::time::{Duration, Instant};

use firstrank_core::chat::ChatTemplate;
use firstrank_core::window::WindowScorer;
use firstrank_core::{Candidate, Query};
use firstrank_remote::standin::{self, Answer, Shape, StandIn};
use firstrank_remote::{RemoteConfig, RemoteMode, RemoteScorer};
use serde_json::json;

const PASSAGES: [&str; 6] = [
    "Paris is the capital of France.",
    "Adult fleas live two to three months on a host.",
    "The dog sleeps in the garden.",
    "Flea eggs hatch in two days; fleas live long without food.",
    "Museums of Paris open at nine.",
    "How long fleas live depends on temperature.",
];

fn query() -> Query {
    Query {
        qid: "q1".into(),
        text: "how long do fleas live".into(),
        instruction: None,
    }
}

fn window() -> Vec<Candidate> {
    PASSAGES
        .iter()
        .enumerate()
        .map(|(i, t)| Candidate {
            docid: format!("d{i}"),
            score: (10 - i) as f64,
            title: None,
            text: t.to_string(),
        })
        .collect()
}

fn scorer(
    server: &StandIn,
    mode: RemoteMode,
    edit: impl FnOnce(&mut RemoteConfig),
) -> RemoteScorer {
    let mut config = RemoteConfig::new(&server.base_url, "toy", mode);
    config.chat = Some(ChatTemplate::load("chatml").unwrap());
    config.retry_base = Duration::from_millis(10);
    edit(&mut config);
    RemoteScorer::new(config).unwrap()
}

/// The window's order under `scores` (stable, best first).
fn order(scores: &[f32]) -> Vec<usize> {
    let mut o: Vec<usize> = (0..scores.len()).collect();
    o.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    o
}

/// The toy model's order: query words found, ties to the earlier passage.
fn toy_order() -> Vec<usize> {
    let q = query().text;
    let mut o: Vec<usize> = (0..PASSAGES.len()).collect();
    o.sort_by_key(|&i| std::cmp::Reverse(standin::overlap(&q, PASSAGES[i])));
    o
}

#[test]
fn first_reads_the_identifier_logprobs_in_both_shapes() {
    for shape in [Shape::Vllm, Shape::LlamaCpp] {
        let server = StandIn::start(standin::toy_model(shape)).unwrap();
        let mut s = scorer(&server, RemoteMode::First, |_| {});
        let scores = s.score_window(&query(), &window()).unwrap();
        assert_eq!(order(&scores), toy_order(), "{shape:?}");
        let requests = server.requests();
        assert_eq!(requests.len(), 1);
        let (path, body) = &requests[0];
        assert_eq!(path, "completions");
        assert_eq!(body["max_tokens"], 1);
        assert_eq!(body["logprobs"], 6);
        assert_eq!(body["model"], "toy");
        let prompt = body["prompt"].as_str().unwrap();
        assert!(
            prompt.starts_with("<|im_start|>system\nYou are RankLLM"),
            "{prompt}"
        );
        assert!(prompt.ends_with("<|im_start|>assistant\n["), "{prompt}");
        assert!(prompt.contains("[B] Adult fleas live"), "{prompt}");
    }
}

#[test]
fn identifiers_missing_from_the_answer_rank_last_in_input_order_and_are_counted() {
    let server = StandIn::start(standin::toy_model(Shape::Vllm)).unwrap();
    let mut s = scorer(&server, RemoteMode::First, |c| c.top_logprobs = Some(2));
    let scores = s.score_window(&query(), &window()).unwrap();
    let got = order(&scores);
    let toy = toy_order();
    assert_eq!(got[..2], toy[..2]);
    let mut rest: Vec<usize> = toy[2..].to_vec();
    rest.sort();
    assert_eq!(got[2..], rest[..], "missing ones keep the input order");
    let summary = s.stats_summary().unwrap();
    assert!(summary.contains("4 identifiers missing"), "{summary}");
}

#[test]
fn generation_goes_through_the_chat_endpoint() {
    let server = StandIn::start(standin::toy_model(Shape::Vllm)).unwrap();
    let mut s = scorer(&server, RemoteMode::Generation, |c| c.chat = None);
    let scores = s.score_window(&query(), &window()).unwrap();
    assert_eq!(order(&scores), toy_order());
    let (path, body) = &server.requests()[0];
    assert_eq!(path, "chat/completions");
    assert_eq!(body["messages"][0]["role"], "system");
    assert!(body["messages"][1]["content"]
        .as_str()
        .unwrap()
        .contains("[F] How long fleas live"));
}

#[test]
fn a_429_is_retried_after_retry_after_and_then_succeeds() {
    let toy = standin::toy_model(Shape::LlamaCpp);
    let server = StandIn::start(move |path, body, n| {
        if n == 0 {
            Answer::raw(429, r#"{"error": "busy"}"#).with_header("Retry-After", "0")
        } else {
            toy(path, body, n)
        }
    })
    .unwrap();
    let mut s = scorer(&server, RemoteMode::First, |_| {});
    let scores = s.score_window(&query(), &window()).unwrap();
    assert_eq!(order(&scores), toy_order());
    assert_eq!(server.requests().len(), 2);
    assert!(s.stats_summary().unwrap().contains("1 retried"));
}

#[test]
fn a_server_too_slow_for_the_timeout_fails_naming_the_endpoint() {
    let server = StandIn::start(|_, _, _| {
        Answer::json(json!({"choices": []})).after(Duration::from_millis(1500))
    })
    .unwrap();
    let mut s = scorer(&server, RemoteMode::First, |c| {
        c.timeout = Duration::from_millis(200);
        c.retries = 1;
    });
    let err = format!("{:#}", s.score_window(&query(), &window()).unwrap_err());
    assert!(
        err.contains(&format!("{}/completions", server.base_url)),
        "{err}"
    );
    assert!(err.contains("2 attempts"), "{err}");
}

#[test]
fn malformed_answers_are_clear_errors_and_4xx_is_not_retried() {
    for (answer, needle) in [
        (Answer::raw(200, "{not json"), "not valid JSON"),
        (
            Answer::json(json!({"choices": [{"text": "A"}]})),
            "no log-probabilities",
        ),
        (
            Answer::raw(400, r#"{"error": "prompt too long"}"#),
            "HTTP 400: {\"error\": \"prompt too long\"}",
        ),
    ] {
        let server = StandIn::start(move |_, _, _| answer.clone()).unwrap();
        let mut s = scorer(&server, RemoteMode::First, |_| {});
        let err = format!("{:#}", s.score_window(&query(), &window()).unwrap_err());
        assert!(err.contains(needle), "{err}");
        assert!(err.contains("/v1/completions"), "{err}");
        assert_eq!(server.requests().len(), 1, "{needle}: not retried");
    }
}

#[test]
fn windows_of_a_batch_are_requested_concurrently() {
    let toy = standin::toy_model(Shape::Vllm);
    let server =
        StandIn::start(move |p, b, n| toy(p, b, n).after(Duration::from_millis(400))).unwrap();
    let mut s = scorer(&server, RemoteMode::First, |c| c.concurrency = 4);
    let (q, w) = (query(), window());
    let batch: Vec<(&Query, &[Candidate])> = (0..4).map(|_| (&q, w.as_slice())).collect();
    let started = Instant::now();
    let scores = s.score_windows(&batch).unwrap();
    let took = started.elapsed();
    assert_eq!(scores.len(), 4);
    assert!(scores.iter().all(|s| order(s) == toy_order()));
    assert!(
        took < Duration::from_millis(1400),
        "4 requests of 0.4 s took {took:?}"
    );
}

#[test]
fn first_without_a_chat_template_or_with_a_bad_url_is_refused() {
    let config = RemoteConfig::new("http://127.0.0.1:9/v1", "m", RemoteMode::First);
    let err = RemoteScorer::new(config).err().unwrap().to_string();
    assert!(err.contains("--chat-template"), "{err}");
    let mut config = RemoteConfig::new("localhost:8000", "m", RemoteMode::Generation);
    config.chat = None;
    let err = RemoteScorer::new(config).err().unwrap().to_string();
    assert!(err.contains("http://"), "{err}");
}
