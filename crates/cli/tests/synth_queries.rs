//! `firstrank synth-queries` end to end: keyword queries extracted from the
//! pooled DL22 candidates (shared data; skipped when absent), indexed and
//! retrieved with firstrank's own BM25 over the same pool, where each query
//! should find its source passage; and bad inputs (non-zero exit, a clear
//! message, no output written). No model is needed.

mod support;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use support::{firstrank, p, shared, stderr};

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn synth_queries_find_their_source_passage_with_bm25() {
    let Some(shared) = shared() else { return };
    let cands = shared.join("data/dl22-unlabeled/bm25-top100.json");
    if !cands.exists() {
        support::skip_or_fail(&format!("{} not found", cands.display()));
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (topics, qrels) = (d.join("synth.tsv"), d.join("synth-qrels.txt"));
    let synth = |out: &Path, qrels: &Path| {
        firstrank(&[
            "synth-queries",
            "-q",
            "--corpus",
            p(&cands),
            "--count",
            "200",
            "--seed",
            "3",
            "--output",
            p(out),
            "--qrels",
            p(qrels),
        ])
    };
    let o = synth(&topics, &qrels);
    assert!(o.status.success(), "{}", stderr(&o));
    // Same seed, same queries.
    let o = synth(&d.join("again.tsv"), &d.join("again-qrels.txt"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read(&topics), read(&d.join("again.tsv")));

    let topic_text = read(&topics);
    let lines: Vec<(&str, &str)> = topic_text
        .lines()
        .map(|l| l.split_once('\t').unwrap())
        .collect();
    assert_eq!(lines.len(), 200);
    assert_eq!(lines[0].0, "synth-1");
    assert_eq!(lines[199].0, "synth-200");
    for (_, q) in &lines {
        let n = q.split(' ').count();
        assert!((3..=6).contains(&n), "{q}");
    }
    let source: HashMap<String, String> = read(&qrels)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!((f.len(), f[1], f[3]), (4, "0", "1"), "{l}");
            (f[0].to_owned(), f[2].to_owned())
        })
        .collect();
    assert_eq!(source.len(), 200);
    assert_eq!(
        source.values().collect::<HashSet<_>>().len(),
        200,
        "distinct passages"
    );

    // The candidates file itself is the corpus: 7,600 candidates, 7,580 distinct passages.
    let index = d.join("index");
    let o = firstrank(&["index", "-q", "--corpus", p(&cands), "--index", p(&index)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let manifest: serde_json::Value =
        serde_json::from_str(&read(&index.join("manifest.json"))).unwrap();
    assert_eq!(manifest["corpus"]["num_docs"], 7580);

    let run = d.join("run.trec");
    let o = firstrank(&[
        "retrieve",
        "-q",
        "--index",
        p(&index),
        "--topics",
        p(&topics),
        "-k",
        "10",
        "--output-trec",
        p(&run),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let found: HashSet<(String, String)> = read(&run)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_owned(), f[2].to_owned())
        })
        .collect();
    let hits = source
        .iter()
        .filter(|(q, doc)| found.contains(&((*q).clone(), (*doc).clone())))
        .count();
    eprintln!("source passage in the BM25 top 10 for {hits} of 200 synthetic queries");
    assert!(hits >= 160, "only {hits} of 200 in the top 10");
}

#[test]
fn synth_queries_bad_inputs_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let corpus = d.join("corpus.jsonl");
    // Five passages of 24 words, each sharing some words with its neighbours.
    let vocab: Vec<String> = (0..40).map(|k| format!("word{k}")).collect();
    let docs: Vec<String> = (0..5)
        .map(|i| {
            serde_json::json!({"docid": format!("d{i}"), "text": vocab[i * 6..i * 6 + 12].join(" and ")})
                .to_string()
        })
        .collect();
    std::fs::write(&corpus, docs.join("\n")).unwrap();
    let out = d.join("out.tsv");
    let qrels = d.join("qrels.txt");
    let run_on = |corpus: &Path, output: &Path, extra: &[&str]| {
        let mut args = vec![
            "synth-queries",
            "--corpus",
            p(corpus),
            "--output",
            p(output),
            "--qrels",
            p(&qrels),
        ];
        args.extend_from_slice(extra);
        let o = firstrank(&args);
        assert!(!o.status.success(), "{extra:?} should fail");
        assert!(!out.exists() && !qrels.exists(), "{extra:?} wrote output");
        stderr(&o)
    };
    let run = |extra: &[&str]| run_on(&corpus, &out, extra);
    let e = run(&["--count", "0"]);
    assert!(e.contains("--count") && e.contains("at least 1"), "{e}");
    let e = run(&["--count", "2", "--min-terms", "0"]);
    assert!(e.contains("--min-terms") && e.contains("at least 1"), "{e}");
    let e = run(&["--count", "2", "--min-terms", "5", "--max-terms", "4"]);
    assert!(e.contains("exceed"), "{e}");
    let e = run(&["--count", "6"]);
    assert!(
        e.contains("corpus.jsonl") && e.contains("only 5 of the corpus's 5 passages are eligible"),
        "{e}"
    );
    let e = run(&["--count", "2", "--min-words", "1000"]);
    assert!(
        e.contains("none of the corpus's 5 passages is eligible"),
        "{e}"
    );
    let e = run_on(&corpus, &qrels, &["--count", "2"]);
    assert!(e.contains("same file"), "{e}");
    let broken = d.join("broken.json");
    std::fs::write(&broken, "[{\"query\": \"q\", \"hits\": [{\"qid\": 1}]}]").unwrap();
    let e = run_on(&broken, &out, &["--count", "1"]);
    assert!(e.contains("broken.json") && e.contains("docid"), "{e}");
    let e = run_on(&d.join("missing.json"), &out, &["--count", "1"]);
    assert!(e.contains("missing.json"), "{e}");

    // And a good run for contrast: all five passages, in some order.
    let o = firstrank(&[
        "synth-queries",
        "-q",
        "--corpus",
        p(&corpus),
        "--count",
        "5",
        "--output",
        p(&out),
        "--qrels",
        p(&qrels),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read(&out).lines().count(), 5);
    assert_eq!(read(&qrels).lines().count(), 5);
}
