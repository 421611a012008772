//! Property tests of every input parser: arbitrary bytes never panic (each
//! parser answers Ok or a clear error), and valid inputs round-trip through
//! the writers. The case count is proptest's (`PROPTEST_CASES`, 64 here by
//! default so that CI stays quick; raise it for a longer search).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use firstrank_core::formats::output::{format_jsonl, format_trec};
use firstrank_core::formats::{
    open_requests, read_corpus_subset, read_topics, read_trec_run, read_trec_run_strict, InputSpec,
};
use firstrank_core::qrels::Qrels;
use firstrank_core::window::{rerank, WindowScorer, WindowStrategy};
use firstrank_core::{Candidate, Query, Request};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: firstrank_core::testing::property_cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Bytes that look a little like each format: arbitrary bytes mixed with the
/// formats' own punctuation, so that the parsers get past their first check.
fn noisy_bytes() -> impl Strategy<Value = Vec<u8>> {
    let pieces = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..8),
        Just(b"{\"query\": ".to_vec()),
        Just(b"{\"text\": \"q\", \"qid\": \"1\"}".to_vec()),
        Just(b"\"candidates\": [".to_vec()),
        Just(b"{\"docid\": \"d\", \"score\": 1, \"doc\": {\"contents\": \"x\"}}".to_vec()),
        Just(b"\"hits\": [{\"content\": \"c\", \"qid\": 1, \"docid\": \"d\", \"rank\": 1, \"score\": 2}]".to_vec()),
        Just(b"1 Q0 d1 1 2.5 tag\n".to_vec()),
        Just(b"1 0 d1 2\n".to_vec()),
        Just(b"q1\tquery text\n".to_vec()),
        Just(b"]}\n".to_vec()),
        Just(b",".to_vec()),
        Just(b"\xEF\xBB\xBF".to_vec()),
        Just(b"\xff\xfe".to_vec()),
        Just(b"NaN inf -0 1e999 ".to_vec()),
    ];
    proptest::collection::vec(pieces, 0..12).prop_map(|v| v.concat())
}

/// Runs every file parser on `bytes`; none may panic.
fn parse_everything(bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "input", bytes);
    if let Ok(requests) = open_requests(&InputSpec::Auto(f.clone())) {
        for r in requests.take(1000) {
            let _ = r;
        }
    }
    let _ = read_trec_run(&f);
    let _ = read_trec_run_strict(&f);
    let _ = read_topics(&f);
    let wanted: HashSet<String> = ["d1".to_string(), "d".to_string()].into();
    let _ = read_corpus_subset(&f, &wanted);
    let _ = Qrels::load(&f);
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = Qrels::parse(text, Path::new("qrels"));
    }
    // As a first stage with texts: the same bytes as run, topics and corpus.
    let spec = InputSpec::RunWithTexts {
        run: f.clone(),
        topics: f.clone(),
        corpus: f.clone(),
    };
    if let Ok(requests) = open_requests(&spec) {
        for r in requests.take(1000) {
            let _ = r;
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_a_parser(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        parse_everything(&bytes);
    }

    #[test]
    fn format_like_noise_never_panics_a_parser(bytes in noisy_bytes()) {
        parse_everything(&bytes);
    }
}

/// Orders by text length, longest first (any deterministic scorer will do).
struct ByLength;

impl WindowScorer for ByLength {
    fn score_window(&mut self, _q: &Query, window: &[Candidate]) -> anyhow::Result<Vec<f32>> {
        Ok(window
            .iter()
            .map(|c| c.text.chars().count() as f32)
            .collect())
    }
}

fn request() -> impl Strategy<Value = Request> {
    let text = "[a-zA-Z0-9 .,;:!?'()&%$#@-]{0,30}[a-z]|[a-z]{1,3} [é☃λ中]{1,4} [a-z]{1,3}";
    (
        "[a-z0-9]{1,6}",
        text,
        proptest::collection::btree_set("[A-Za-z0-9_-]{1,8}", 1..12),
        proptest::collection::vec((text, proptest::option::of(text), -1e6f64..1e6), 12),
    )
        .prop_map(|(qid, query, docids, texts)| Request {
            query: Query {
                qid,
                text: query,
                instruction: None,
            },
            candidates: docids
                .into_iter()
                .zip(texts)
                .map(|(docid, (text, title, score))| Candidate {
                    docid,
                    score,
                    title,
                    text,
                })
                .collect(),
        })
}

proptest! {
    #![proptest_config(config())]

    /// A result JSONL reads back as a request with the reranked candidates,
    /// texts and titles intact; the TREC run reads back in the same order.
    #[test]
    fn results_round_trip_through_jsonl_and_trec(req in request()) {
        let outcome = rerank(&mut ByLength, &WindowStrategy::sliding(4, 2, 100), req).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let jsonl = write(dir.path(), "out.jsonl", format_jsonl(&outcome).unwrap().as_bytes());
        let back: Vec<Request> = open_requests(&InputSpec::Auto(jsonl))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        prop_assert_eq!(back.len(), 1);
        prop_assert_eq!(&back[0].query, &outcome.query);
        let ranked: Vec<(&str, &str, Option<&str>)> = outcome
            .ranked
            .iter()
            .map(|r| (r.candidate.docid.as_str(), r.candidate.text.as_str(), r.candidate.title.as_deref()))
            .collect();
        let read: Vec<(&str, &str, Option<&str>)> = back[0]
            .candidates
            .iter()
            .map(|c| (c.docid.as_str(), c.text.as_str(), c.title.as_deref()))
            .collect();
        prop_assert_eq!(read, ranked.clone());

        let trec = write(dir.path(), "out.trec", format_trec(&outcome, "t").unwrap().as_bytes());
        let run = read_trec_run_strict(&trec).unwrap();
        let order: Vec<&str> = run[&outcome.query.qid].iter().map(|e| e.docid.as_str()).collect();
        let want: Vec<&str> = ranked.iter().map(|r| r.0).collect();
        prop_assert_eq!(order, want);
    }

    /// Judgments written as qrels lines read back as the same grades.
    #[test]
    fn qrels_round_trip(judgments in proptest::collection::btree_map(
        ("[a-z0-9]{1,4}", "[A-Za-z0-9_.-]{1,8}"), -2i32..5, 0..40)) {
        let text: String = judgments
            .iter()
            .map(|((q, d), g)| format!("{q} 0 {d} {g}\n"))
            .collect();
        let qrels = Qrels::parse(&text, Path::new("qrels")).unwrap();
        for ((q, d), g) in &judgments {
            prop_assert_eq!(qrels.grade(q, d), Some(*g));
        }
        let judged: HashSet<&str> = judgments.keys().map(|(q, _)| q.as_str()).collect();
        prop_assert_eq!(qrels.judged_qids().count(), judged.len());
    }
}
