//! `--backend openai` end to end: the CLI reranks a DL19 query through the
//! local stand-in server (firstrank_remote::standin) in FIRST and generation
//! modes, in llama.cpp's and vLLM's shapes, and refuses what cannot work
//! before writing any output.

mod support;

use firstrank_remote::standin::{self, Answer, Shape, StandIn};
use support::{firstrank, p, shared, stderr};

fn first_query_only(input: &std::path::Path, dir: &std::path::Path) -> std::path::PathBuf {
    let all: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(input).unwrap()).unwrap();
    let one = dir.join("one.json");
    std::fs::write(&one, serde_json::to_string(&all[..1]).unwrap()).unwrap();
    one
}

#[test]
fn a_dl19_query_reranks_through_the_stand_in_in_first_and_generation_modes() {
    let Some(shared) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let input = first_query_only(&shared.join("data/dl19/bm25-top100.json"), tmp.path());
    for (mode, shape) in [
        ("first", Shape::LlamaCpp),
        ("first", Shape::Vllm),
        ("generation", Shape::Vllm),
    ] {
        let server = StandIn::start(standin::toy_model(shape)).unwrap();
        let jsonl = tmp.path().join(format!("{mode}-{shape:?}.jsonl"));
        let trec = tmp.path().join(format!("{mode}-{shape:?}.trec"));
        let mut args = vec![
            "rerank",
            "--backend",
            "openai",
            "--base-url",
            &server.base_url,
            "--model",
            "toy",
            "--mode",
            mode,
            "--input",
            p(&input),
            "--output",
            p(&trec),
            "--output-jsonl",
            p(&jsonl),
        ];
        if mode == "first" {
            args.extend(["--chat-template", "chatml"]);
        }
        let o = firstrank(&args);
        assert!(o.status.success(), "{mode}: {}", stderr(&o));
        let requests = server.requests();
        assert_eq!(requests.len(), 9, "{mode}: nine windows over the top 100");
        let path = if mode == "first" {
            "completions"
        } else {
            "chat/completions"
        };
        assert!(requests.iter().all(|(p, _)| p == path), "{mode}");
        assert!(stderr(&o).contains("9 windows through"), "{}", stderr(&o));
        let line: serde_json::Value = serde_json::from_str(
            std::fs::read_to_string(&jsonl)
                .unwrap()
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        let candidates = line["candidates"].as_array().unwrap();
        assert_eq!(candidates.len(), 100);
        // The toy model ranks by query words found: the top passage has at
        // least as many as any passage of the last window it was in.
        let query = line["query"]["text"].as_str().unwrap();
        let overlap =
            |c: &serde_json::Value| standin::overlap(query, c["doc"]["contents"].as_str().unwrap());
        let top = overlap(&candidates[0]);
        assert!(candidates[..20].iter().all(|c| overlap(c) <= top), "{mode}");
        assert_ne!(candidates[0]["original_rank"], serde_json::json!(null));
        assert_eq!(std::fs::read_to_string(&trec).unwrap().lines().count(), 100);
    }
}

#[test]
fn remote_errors_name_the_endpoint_and_leave_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    std::fs::write(
        &input,
        r#"{"query":{"qid":"1","text":"fleas"},"candidates":[{"docid":"a","score":2,"doc":{"contents":"fleas live"}},{"docid":"b","score":1,"doc":{"contents":"dogs"}}]}"#,
    )
    .unwrap();
    let out = tmp.path().join("out.trec");
    let server =
        StandIn::start(|_, _, _| Answer::json(serde_json::json!({"choices": [{"text": "A"}]})))
            .unwrap();
    let base = server.base_url.clone();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "rerank",
            "--backend",
            "openai",
            "--model",
            "toy",
            "--input",
            p(&input),
            "--output",
            p(&out),
        ];
        args.extend_from_slice(extra);
        firstrank(&args)
    };
    for (extra, needle) in [
        (
            vec!["--base-url", base.as_str(), "--chat-template", "chatml"],
            "no log-probabilities",
        ),
        (vec!["--base-url", base.as_str()], "--chat-template"),
        (vec!["--chat-template", "chatml"], "--base-url"),
        (
            vec![
                "--base-url",
                base.as_str(),
                "--chat-template",
                "chatml",
                "--max-passage-tokens",
                "20",
            ],
            "--max-passage-words",
        ),
    ] {
        let o = run(&extra);
        assert!(!o.status.success(), "{extra:?}");
        assert!(stderr(&o).contains(needle), "{extra:?}: {}", stderr(&o));
        assert!(!out.exists(), "{extra:?}: no half-written output");
    }
    let o = firstrank(&[
        "bench",
        "--backend",
        "openai",
        "--base-url",
        base.as_str(),
        "--input",
        p(&input),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--backend openai"), "{}", stderr(&o));
}

#[test]
fn serve_answers_cohere_requests_through_the_remote_backend() {
    let server = StandIn::start(standin::toy_model(Shape::LlamaCpp)).unwrap();
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("firstrank"));
    cmd.args([
        "serve",
        "--backend",
        "openai",
        "--base-url",
        &server.base_url,
        "--model",
        "toy",
        "--chat-template",
        "chatml",
        "--port",
        "0",
    ]);
    let (_serving, addr) = support::spawn_serve(cmd);
    let docs = [
        "Paris is in France",
        "Adult fleas live for months",
        "dogs bark",
    ];
    let answer = support::request(
        addr,
        "POST /v2/rerank",
        &serde_json::json!({"query": "how long do fleas live", "documents": docs}).to_string(),
    )
    .expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body: serde_json::Value =
        serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["results"][0]["index"], 1, "{body}");
    assert_eq!(server.requests().len(), 1);
}
