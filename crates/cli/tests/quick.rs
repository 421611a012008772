//! `firstrank rerank --query ... --doc ...`: ranking documents given on the
//! command line, with no data files, as the README's first command does.

mod support;

use std::io::Write;
use std::process::{Command as StdCommand, Stdio};

use support::{firstrank, model_available, rerank_docs, stderr, stdout};

#[test]
fn documents_on_the_command_line_come_back_ranked_as_json_and_as_a_table() {
    if !model_available("smollm2", "the default reranker") {
        return;
    }
    let fleas = "Adult fleas live two to three months; without a host, a week or two.";
    let paris = "Paris is the capital and most populous city of France.";
    let o = firstrank(&[
        "rerank",
        "-q",
        "--query",
        "how long do fleas live",
        "--doc",
        paris,
        "--doc",
        fleas,
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON on stdout");
    let ranked = v.as_array().expect("a JSON array");
    assert_eq!(ranked.len(), 2);
    let mut indices: Vec<u64> = ranked
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    for r in ranked {
        let i = r["index"].as_u64().unwrap() as usize;
        assert_eq!(r["document"].as_str().unwrap(), [paris, fleas][i]);
        assert!(r["score"].as_f64().unwrap().is_finite());
    }
    // Best first: the scores of one window are comparable.
    assert!(ranked[0]["score"].as_f64().unwrap() >= ranked[1]["score"].as_f64().unwrap());
    indices.sort();
    assert_eq!(indices, [0, 1]);

    // The table, with the documents read from stdin.
    let mut child = StdCommand::new(assert_cmd::cargo::cargo_bin("firstrank"))
        .args([
            "rerank",
            "-q",
            "--query",
            "how long do fleas live",
            "--docs",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{paris}\n\n{fleas}").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("rank"), "{text}");
    let first_index = ranked[0]["index"].as_u64().unwrap();
    assert!(
        lines[1].contains(&format!("  {first_index}  ")),
        "the table agrees with the JSON order: {text}"
    );
}

#[test]
fn quick_mode_refuses_what_it_cannot_do_before_loading_a_model() {
    for (args, needle) in [
        (vec!["rerank", "--query", "q"], "--query needs documents"),
        (
            vec!["rerank", "--query", "q", "--doc", " "],
            "document 1 is empty",
        ),
        (
            vec!["rerank", "--query", "", "--doc", "a"],
            "--query is empty",
        ),
        (
            vec!["rerank", "--query", "q", "--doc", "a", "--input", "x.json"],
            "cannot be used with",
        ),
        (
            vec!["rerank", "--doc", "a", "--output", "o.trec"],
            "--query",
        ),
        (
            vec!["rerank", "--query", "q", "--docs", "/nonexistent/docs.txt"],
            "/nonexistent/docs.txt",
        ),
    ] {
        let o = firstrank(&args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
    // Without --query, --input is still required.
    let o = firstrank(&["rerank", "--output", "o.trec"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--input"), "{}", stderr(&o));
}

/// A cross-encoder directory (config.json `BertForSequenceClassification`)
/// is picked up by `--model` with no other flag: the tiny random checkpoint
/// of crates/models/tests/data ranks as transformers scores it.
#[test]
fn a_cross_encoder_directory_reranks() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/data/tiny-cross-encoder");
    let expected: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let docs = [
        expected[0]["document"].as_str().unwrap(),
        expected[1]["document"].as_str().unwrap(),
    ];
    let o = rerank_docs(&dir, "how long do fleas live", &docs, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got: Vec<serde_json::Value> = serde_json::from_str(&stdout(&o)).unwrap();
    let (s0, s1) = (
        expected[0]["score"].as_f64().unwrap(),
        expected[1]["score"].as_f64().unwrap(),
    );
    let best = if s0 >= s1 { 0 } else { 1 };
    assert_eq!(got[0]["index"], best, "{got:?}");
    let want = s0.max(s1);
    assert!(
        (got[0]["score"].as_f64().unwrap() - want).abs() < 1e-4,
        "{got:?}"
    );
}

/// `--max-chunks-per-doc` cuts a long document with the model's tokenizer
/// (the tiny cross-encoder's: 64 positions) and is refused where it cannot
/// work, before any scoring.
#[test]
fn max_chunks_per_doc_reranks_long_documents_and_refuses_what_cannot_chunk() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/data/tiny-cross-encoder");
    let long = "The adult flea lives for two to three months on a host. ".repeat(12);
    let run = |extra: &[&str]| {
        rerank_docs(
            &dir,
            "how long do fleas live",
            &[&long, "Paris is in France"],
            extra,
        )
    };
    let o = run(&["--max-chunks-per-doc", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got: Vec<serde_json::Value> = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(got.len(), 2);
    // The whole document comes back, not the chunk that stood for it.
    let long_doc = got.iter().find(|d| d["index"] == 0).unwrap();
    assert_eq!(long_doc["document"], long.as_str());

    let o = run(&["--max-chunks-per-doc", "21"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--max-chunks-per-doc") && stderr(&o).contains("window"),
        "{}",
        stderr(&o)
    );
    // A scorer without a tokenizer refuses, and writes no output.
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    std::fs::write(
        &input,
        r#"{"query":{"qid":"1","text":"q"},"candidates":[{"docid":"a","score":2,"doc":{"contents":"a b c"}},{"docid":"b","score":1,"doc":{"contents":"d e"}}]}"#,
    )
    .unwrap();
    let out = tmp.path().join("out.trec");
    let o = firstrank(&[
        "rerank",
        "--diagnostic-scorer",
        "reverse",
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--max-chunks-per-doc",
        "2",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("tokenizer"), "{}", stderr(&o));
    assert!(!out.exists());
}
