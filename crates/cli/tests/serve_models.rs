//! `firstrank serve` with models that are not listwise LLMs: a cross-encoder
//! directory (the tiny random BertForSequenceClassification of
//! crates/models/tests/data) answers Cohere- and TEI-shaped requests with
//! the model's probability as the relevance score and its logit as the raw
//! score, both as transformers computes them; `rerank --raw-scores` writes
//! the logit. No download needed.

mod support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};
use support::{firstrank, request, rerank_docs, spawn_serve, stderr, stdout};

fn tiny_cross_encoder() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tests/data/tiny-cross-encoder")
}

fn expected() -> Vec<Value> {
    let text = std::fs::read_to_string(tiny_cross_encoder().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn body_of(response: &str) -> Value {
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"))
}

#[test]
fn serve_answers_with_a_cross_encoders_probabilities() {
    let dir = tiny_cross_encoder();
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("firstrank"));
    cmd.args(["serve", "--model", dir.to_str().unwrap(), "--port", "0"]);
    let (_serving, addr) = spawn_serve(cmd);
    let cases = expected();
    let query = "how long do fleas live";
    let mine: Vec<&Value> = cases.iter().filter(|c| c["query"] == query).collect();
    assert!(mine.len() >= 2, "the fixture has pairs for {query:?}");
    let docs: Vec<&str> = mine
        .iter()
        .map(|c| c["document"].as_str().unwrap())
        .collect();

    let answer = request(
        addr,
        "POST /v1/rerank",
        &json!({"query": query, "documents": docs, "raw_scores": true}).to_string(),
    )
    .expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let results = body_of(&answer)["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), docs.len());
    let mut last = f64::INFINITY;
    for r in &results {
        let want = mine[r["index"].as_u64().unwrap() as usize];
        let score = r["relevance_score"].as_f64().unwrap();
        let raw = r["raw_score"].as_f64().unwrap();
        assert!(
            (score - want["score"].as_f64().unwrap()).abs() < 1e-4,
            "{r}"
        );
        assert!((raw - want["logit"].as_f64().unwrap()).abs() < 1e-4, "{r}");
        assert!(score <= last, "results are best first: {results:?}");
        last = score;
    }

    // TEI's shape: the probability as `score`, the logit with raw_scores.
    for (raw, key) in [(false, "score"), (true, "logit")] {
        let answer = request(
            addr,
            "POST /rerank",
            &json!({"query": query, "texts": docs, "raw_scores": raw}).to_string(),
        )
        .expect("an answer");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        for r in body_of(&answer).as_array().unwrap() {
            let want = mine[r["index"].as_u64().unwrap() as usize][key]
                .as_f64()
                .unwrap();
            assert!(
                (r["score"].as_f64().unwrap() - want).abs() < 1e-4,
                "{key}: {r}"
            );
        }
    }
}

#[test]
fn raw_scores_write_the_cross_encoders_logit_and_are_refused_elsewhere() {
    let dir = tiny_cross_encoder();
    let c = &expected()[0];
    let o = rerank_docs(
        &dir,
        c["query"].as_str().unwrap(),
        &[c["document"].as_str().unwrap()],
        &["--raw-scores"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let got: Vec<Value> = serde_json::from_str(&stdout(&o)).unwrap();
    let want = c["logit"].as_f64().unwrap();
    assert!(
        (got[0]["score"].as_f64().unwrap() - want).abs() < 1e-4,
        "{got:?}"
    );

    let o = firstrank(&["serve", "--model", dir.to_str().unwrap(), "--raw-scores"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("raw_scores"), "{}", stderr(&o));
}

fn tiny_qwen3_reranker() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tests/data/tiny-qwen3-reranker")
}

/// The pointwise cases of the tiny Qwen3 fixture for `template` and its
/// first query: (query, documents, p_yes per document).
fn pointwise_cases(template: &str) -> (String, Vec<String>, Vec<f64>) {
    let text = std::fs::read_to_string(tiny_qwen3_reranker().join("expected.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let cases: Vec<&Value> = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["template"] == template && c.get("instruction").is_none())
        .collect();
    let query = cases[0]["query"].as_str().unwrap().to_string();
    let mine: Vec<&&Value> = cases
        .iter()
        .filter(|c| c["query"] == query.as_str())
        .collect();
    (
        query,
        mine.iter()
            .map(|c| c["document"].as_str().unwrap().to_string())
            .collect(),
        mine.iter().map(|c| c["p_yes"].as_f64().unwrap()).collect(),
    )
}

#[test]
fn pointwise_mode_reranks_and_serves_p_yes() {
    let dir = tiny_qwen3_reranker();
    // rerank: the generic chat template, documents on the command line.
    let (query, docs, p_yes) = pointwise_cases("yes_no");
    let pointwise = ["--mode", "pointwise", "--weights", "f32"];
    let doc_refs: Vec<&str> = docs.iter().map(String::as_str).collect();
    let o = rerank_docs(
        &dir,
        &query,
        &doc_refs,
        &[&pointwise[..], &["--pointwise-template", "yes_no"]].concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let got: Vec<Value> = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(got.len(), docs.len());
    for r in &got {
        let want = p_yes[r["index"].as_u64().unwrap() as usize];
        assert!((r["score"].as_f64().unwrap() - want).abs() < 1e-4, "{r}");
    }

    // serve: Qwen3-Reranker's template (the default); relevance_score is p(yes).
    let (query, docs, p_yes) = pointwise_cases("qwen3_reranker");
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("firstrank"));
    cmd.args([
        "serve",
        "--model",
        dir.to_str().unwrap(),
        "--mode",
        "pointwise",
        "--weights",
        "f32",
        "--port",
        "0",
    ]);
    let (_serving, addr) = spawn_serve(cmd);
    let answer = request(
        addr,
        "POST /v2/rerank",
        &json!({"query": query, "documents": docs}).to_string(),
    )
    .expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let results = body_of(&answer)["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), docs.len());
    for r in &results {
        let want = p_yes[r["index"].as_u64().unwrap() as usize];
        let score = r["relevance_score"].as_f64().unwrap();
        assert!((score - want).abs() < 1e-4, "{r}");
    }

    // A request's own instruction replaces the template's.
    let (instruction, custom) = custom_instruction_cases();
    let answer = request(
        addr,
        "POST /v2/rerank",
        &json!({"query": query, "documents": docs, "instruction": instruction}).to_string(),
    )
    .expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for r in body_of(&answer)["results"].as_array().unwrap() {
        let want = custom[r["index"].as_u64().unwrap() as usize];
        assert!(
            (r["relevance_score"].as_f64().unwrap() - want).abs() < 1e-4,
            "{r}"
        );
    }

    // And `rerank --instruction` does the same.
    let doc_refs: Vec<&str> = docs.iter().map(String::as_str).collect();
    let o = rerank_docs(
        &dir,
        &query,
        &doc_refs,
        &[&pointwise[..], &["--instruction", &instruction]].concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let got: Vec<Value> = serde_json::from_str(&stdout(&o)).unwrap();
    for r in &got {
        let want = custom[r["index"].as_u64().unwrap() as usize];
        assert!((r["score"].as_f64().unwrap() - want).abs() < 1e-4, "{r}");
    }
}

/// The fixture's cases with a custom instruction (Qwen3-Reranker's template,
/// its first query): the instruction and p_yes per document.
fn custom_instruction_cases() -> (String, Vec<f64>) {
    let text = std::fs::read_to_string(tiny_qwen3_reranker().join("expected.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let cases: Vec<&Value> = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c.get("instruction").is_some())
        .collect();
    assert!(
        !cases.is_empty(),
        "the fixture has custom-instruction cases"
    );
    (
        cases[0]["instruction"].as_str().unwrap().to_string(),
        cases.iter().map(|c| c["p_yes"].as_f64().unwrap()).collect(),
    )
}
