//! End-to-end tests of the `firstrank` binary: the published BM25 numbers, the
//! oracle ceiling of the sliding window, resume, and bad input (non-zero exit,
//! a message naming the place, no output file).

mod support;

use std::path::Path;

use support::{firstrank, model_available, p, shared, stderr, stdout, trec_metric as metric};

#[test]
fn eval_reproduces_anserini_bm25_on_dl19_and_dl20() {
    let Some(s) = shared() else { return };
    for (set, expected) in [("dl19", 0.5058), ("dl20", 0.4796)] {
        let data = s.join("data").join(set);
        let o = firstrank(&[
            "eval",
            "--trec-eval-format",
            "--qrels",
            p(&data.join("qrels.txt")),
            p(&data.join("bm25-top100.json")),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let ndcg = metric(&stdout(&o), "ndcg_cut_10");
        assert_eq!(format!("{ndcg:.4}"), format!("{expected:.4}"), "{set}");
    }
}

#[test]
fn oracle_sliding_window_reaches_the_ideal_reordering_of_the_top_100() {
    let Some(s) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    // Ideal reordering of the BM25 top-100 (grade order), nDCG@10, computed by
    // metrics::ideal_reorder and cross-checked against trec_eval in the core tests.
    for (set, ideal) in [("dl19", 0.8922), ("dl20", 0.8707)] {
        let data = s.join("data").join(set);
        let out = tmp.path().join(format!("{set}.trec"));
        let jsonl = tmp.path().join(format!("{set}.jsonl"));
        let o = firstrank(&[
            "rerank",
            "-q",
            "--input",
            p(&data.join("bm25-top100.json")),
            "--output",
            p(&out),
            "--output-jsonl",
            p(&jsonl),
            "--diagnostic-scorer",
            "oracle",
            "--qrels",
            p(&data.join("qrels.txt")),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let e = firstrank(&[
            "eval",
            "--trec-eval-format",
            "--qrels",
            p(&data.join("qrels.txt")),
            p(&out),
        ]);
        assert!(e.status.success(), "{}", stderr(&e));
        let ndcg = metric(&stdout(&e), "ndcg_cut_10");
        assert_eq!(format!("{ndcg:.4}"), format!("{ideal:.4}"), "{set}");
        // R@100 cannot change: the strategy only reorders the top 100.
        let bm25 = firstrank(&[
            "eval",
            "--trec-eval-format",
            "--qrels",
            p(&data.join("qrels.txt")),
            p(&data.join("bm25-top100.json")),
        ]);
        assert_eq!(
            metric(&stdout(&e), "recall_100"),
            metric(&stdout(&bm25), "recall_100")
        );
        // 9 windows per query of 100 candidates, each recorded in the JSONL.
        let text = std::fs::read_to_string(&jsonl).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["windows"].as_array().unwrap().len(), 9);
            assert_eq!(v["windows"][0]["start"], 80);
            assert_eq!(v["windows"][8]["end"], 20);
        }
    }
}

#[test]
fn compare_reports_a_paired_test() {
    let Some(s) = shared() else { return };
    let data = s.join("data/dl19");
    let o = firstrank(&[
        "eval",
        "--json",
        "--qrels",
        p(&data.join("qrels.txt")),
        "--compare",
        p(&data.join("bm25-top100.json")),
        p(&data.join("splade-pp-ed-top100.json")),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["num_queries"], 43);
    let ndcg = v["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"] == "nDCG@10")
        .unwrap();
    assert!((ndcg["a"].as_f64().unwrap() - 0.5058).abs() < 5e-5);
    // SPLADE++ is far stronger than BM25 on DL19: significant either way.
    assert!(ndcg["diff"].as_f64().unwrap() > 0.1);
    assert!(ndcg["p_t_test"].as_f64().unwrap() < 0.01);
    assert!(ndcg["p_randomization"].as_f64().unwrap() < 0.01);
}

fn write(path: &Path, text: &[u8]) {
    std::fs::write(path, text).unwrap();
}

const GOOD_QUERY: &str = r#"{"query": {"text": "q one", "qid": "1"}, "candidates": [{"docid": "a", "score": 2.0, "doc": {"contents": "alpha"}}, {"docid": "b", "score": 1.0, "doc": {"contents": "beta"}}]}"#;

/// Runs `rerank` on `input` and checks it fails, names `needle`, and leaves no output.
fn assert_rejected(dir: &Path, input: &Path, needle: &str) {
    let out = dir.join("out.trec");
    let o = firstrank(&[
        "rerank",
        "-q",
        "--input",
        p(input),
        "--output",
        p(&out),
        "--diagnostic-scorer",
        "reverse",
    ]);
    assert!(
        !o.status.success(),
        "accepted bad input {}",
        input.display()
    );
    let err = stderr(&o);
    assert!(
        err.contains(needle),
        "error for {} does not mention {needle:?}:\n{err}",
        input.display()
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !out.exists(),
        "half-written output left for {}",
        input.display()
    );
}

#[test]
fn bad_inputs_exit_non_zero_naming_the_place_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();

    let f = d.join("malformed.jsonl");
    write(
        &f,
        format!(
            "{GOOD_QUERY}\n{{\"query\": {{\"text\": \"x\", \"qid\": \"2\"}}, \"candidates\": [\n"
        )
        .as_bytes(),
    );
    assert_rejected(d, &f, "line 2");

    let f = d.join("missing.jsonl");
    write(&f, format!("{GOOD_QUERY}\n{}\n", r#"{"query": {"text": "x", "qid": "2"}, "candidates": [{"score": 1.0, "doc": {"contents": "c"}}]}"#).as_bytes());
    assert_rejected(d, &f, "docid");

    let f = d.join("malformed.json");
    write(&f, br#"[{"query": "q", "hits": [{"content": "c", "qid": 1, "docid": "a", "rank": 1, "score": 1.0}]}, {"query": "q2", "hits": [}]"#);
    assert_rejected(d, &f, "record 2");

    let f = d.join("utf8.jsonl");
    let mut bytes = format!("{GOOD_QUERY}\n").into_bytes();
    bytes.extend_from_slice(
        b"{\"query\": {\"text\": \"bad \xff\xfe\", \"qid\": \"2\"}, \"candidates\": []}\n",
    );
    write(&f, &bytes);
    assert_rejected(d, &f, "UTF-8");

    let f = d.join("unknown.txt");
    write(&f, b"this is not a candidate file\n");
    assert_rejected(d, &f, "expected one of");

    let f = d.join("run.trec");
    write(&f, b"1 Q0 a 1 2.0 x\n1 Q0 b 2 high x\n");
    let topics = d.join("topics.tsv");
    write(&topics, b"1\tq one\n");
    let corpus = d.join("corpus.tsv");
    write(&corpus, b"a\talpha\nb\tbeta\n");
    let out = d.join("out.trec");
    let o = firstrank(&[
        "rerank",
        "-q",
        "--input",
        p(&f),
        "--topics",
        p(&topics),
        "--corpus",
        p(&corpus),
        "--output",
        p(&out),
        "--diagnostic-scorer",
        "reverse",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("line 2"), "{}", stderr(&o));
    assert!(!out.exists());

    // Malformed qrels line in eval.
    let qrels = d.join("qrels.txt");
    write(&qrels, b"1 0 a 2\n1 0 b\n");
    let run = d.join("ok.trec");
    write(&run, b"1 Q0 a 1 2.0 x\n");
    let o = firstrank(&["eval", "--qrels", p(&qrels), p(&run)]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("line 2"), "{}", stderr(&o));

    // An oracle without qrels, a stride larger than the window: clear errors.
    let good = d.join("good.jsonl");
    write(&good, format!("{GOOD_QUERY}\n").as_bytes());
    let o = firstrank(&[
        "rerank",
        "--input",
        p(&good),
        "--output",
        p(&out),
        "--diagnostic-scorer",
        "oracle",
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("--qrels"),
        "{}",
        stderr(&o)
    );
    let o = firstrank(&[
        "rerank",
        "--input",
        p(&good),
        "--output",
        p(&out),
        "--diagnostic-scorer",
        "reverse",
        "--stride",
        "30",
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("stride"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
}

#[test]
fn edge_cases_one_candidate_empty_list_duplicates_and_a_1mb_passage() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let big = "word ".repeat(200_000);
    let input = d.join("edge.jsonl");
    let lines = [
        r#"{"query": {"text": "one", "qid": "1"}, "candidates": [{"docid": "a", "score": 1.0, "doc": {"contents": "x"}}]}"#.to_string(),
        r#"{"query": {"text": "none", "qid": "2"}, "candidates": []}"#.to_string(),
        r#"{"query": {"text": "dup", "qid": "3"}, "candidates": [{"docid": "a", "score": 3.0, "doc": {"contents": "x"}}, {"docid": "a", "score": 2.0, "doc": {"contents": "y"}}, {"docid": "b", "score": 1.0, "doc": {"contents": "z"}}]}"#.to_string(),
        format!(r#"{{"query": {{"text": "big", "qid": "4"}}, "candidates": [{{"docid": "big", "score": 1.0, "doc": {{"contents": "{big}"}}}}, {{"docid": "small", "score": 0.5, "doc": {{"contents": "s"}}}}]}}"#),
    ];
    write(&input, (lines.join("\n") + "\n").as_bytes());
    let out = d.join("out.trec");
    let o = firstrank(&[
        "rerank",
        "-q",
        "--input",
        p(&input),
        "--output",
        p(&out),
        "--diagnostic-scorer",
        "reverse",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = std::fs::read_to_string(&out).unwrap();
    let rows: Vec<Vec<&str>> = run.lines().map(|l| l.split(' ').collect()).collect();
    // q1: one candidate; q2: nothing; q3: duplicate `a` dropped, [a, b] reversed; q4 reversed.
    let got: Vec<(&str, &str)> = rows.iter().map(|r| (r[0], r[2])).collect();
    assert_eq!(
        got,
        vec![
            ("1", "a"),
            ("3", "b"),
            ("3", "a"),
            ("4", "small"),
            ("4", "big")
        ]
    );
}

#[test]
fn resume_after_a_failure_continues_and_matches_a_clean_run() {
    let Some(s) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // Take 5 DL19 queries as request JSONL, and a copy whose 4th line is broken.
    let all: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(s.join("data/dl19/bm25-top100.json")).unwrap(),
    )
    .unwrap();
    let lines: Vec<String> = all[..5]
        .iter()
        .map(|q| {
            let cands: Vec<serde_json::Value> = q["hits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| serde_json::json!({"docid": h["docid"], "score": h["score"], "doc": {"contents": h["content"]}}))
                .collect();
            serde_json::json!({"query": {"text": q["query"], "qid": q["hits"][0]["qid"].to_string()}, "candidates": cands})
                .to_string()
        })
        .collect();
    let good = d.join("good.jsonl");
    write(&good, (lines.join("\n") + "\n").as_bytes());
    let mut broken_lines = lines.clone();
    broken_lines[3] = "{not json".into();
    let broken = d.join("broken.jsonl");
    write(&broken, (broken_lines.join("\n") + "\n").as_bytes());

    let qrels = s.join("data/dl19/qrels.txt");
    let run = |input: &Path, out: &Path, jsonl: &Path, resume: bool| {
        let mut args = vec![
            "rerank",
            "-q",
            "--input",
            p(input),
            "--output",
            p(out),
            "--output-jsonl",
            p(jsonl),
            "--diagnostic-scorer",
            "oracle",
            "--qrels",
            p(&qrels),
        ];
        if resume {
            args.push("--resume");
        }
        firstrank(&args)
    };
    let (clean_trec, clean_jsonl) = (d.join("clean.trec"), d.join("clean.jsonl"));
    assert!(run(&good, &clean_trec, &clean_jsonl, false)
        .status
        .success());

    let (out, jsonl) = (d.join("out.trec"), d.join("out.jsonl"));
    let o = run(&broken, &out, &jsonl, false);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));
    assert!(!out.exists() && !jsonl.exists());
    let partial = std::fs::read_to_string(d.join("out.jsonl.partial")).unwrap();
    assert_eq!(
        partial.lines().count(),
        3,
        "the three queries before the broken line are kept"
    );

    // The user fixes the input in place and resumes.
    std::fs::copy(&good, &broken).unwrap();
    let o = run(&broken, &out, &jsonl, true);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&clean_trec).unwrap()
    );
    assert_eq!(
        std::fs::read(&jsonl).unwrap(),
        std::fs::read(&clean_jsonl).unwrap()
    );
    assert!(!d.join("out.jsonl.partial").exists());
}

#[test]
fn help_reads_well() {
    let o = firstrank(&["--help"]);
    assert!(o.status.success());
    let text = stdout(&o);
    for cmd in ["rerank", "eval"] {
        assert!(text.contains(cmd), "{text}");
    }
    let o = firstrank(&["rerank", "--help"]);
    assert!(stdout(&o).contains("--resume"));
}

#[test]
fn index_retrieve_then_rerank_consumes_the_candidates() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let corpus = d.join("corpus.jsonl");
    write(
        &corpus,
        br#"{"docid": "d1", "text": "fleas live for about a year on their hosts"}
{"docid": "d2", "title": "Cats", "text": "cats sleep most of the day"}
{"docid": "d3", "text": "the flea life cycle has egg larva pupa and adult stages"}
"#,
    );
    let topics = d.join("topics.tsv");
    write(&topics, b"1\tflea life cycle\n2\tcats\n");
    let index = d.join("index");
    let o = firstrank(&["index", "-q", "--corpus", p(&corpus), "--index", p(&index)]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Indexing again into the same directory refuses to overwrite it.
    let o = firstrank(&["index", "-q", "--corpus", p(&corpus), "--index", p(&index)]);
    assert!(!o.status.success());

    let cands = d.join("cands.jsonl");
    let o = firstrank(&[
        "retrieve",
        "-q",
        "--index",
        p(&index),
        "--topics",
        p(&topics),
        "-k",
        "2",
        "--output",
        p(&cands),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&cands)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["candidates"][0]["docid"], "d3");
    assert_eq!(lines[1]["candidates"][0]["docid"], "d2");

    let out = d.join("out.trec");
    let o = firstrank(&[
        "rerank",
        "-q",
        "--input",
        p(&cands),
        "--output",
        p(&out),
        "--diagnostic-scorer",
        "reverse",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read_to_string(&out)
        .unwrap()
        .starts_with("1 Q0 d1 1 "));

    // A corrupted index is a clear error.
    write(&index.join("manifest.json"), b"{broken");
    let o = firstrank(&[
        "retrieve",
        "--index",
        p(&index),
        "--topics",
        p(&topics),
        "--output",
        p(&cands),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("manifest"), "{}", stderr(&o));
}

#[test]
fn shuffled_input_control_changes_order_not_the_oracle() {
    let Some(s) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let data = s.join("data").join("dl19");
    let qrels = data.join("qrels.txt");
    let input = data.join("bm25-top100.json");
    let run = |scorer: &str, shuffle: Option<&str>, name: &str| -> (f64, String) {
        let out = tmp.path().join(name);
        let mut args = vec![
            "rerank",
            "-q",
            "--input",
            p(&input),
            "--output",
            p(&out),
            "--strategy",
            "single",
            // Shuffle only the window's span, the top 20.
            "--top-k",
            "20",
            "--diagnostic-scorer",
            scorer,
            "--qrels",
            p(&qrels),
        ];
        if let Some(seed) = shuffle {
            args.extend(["--shuffle-input", seed]);
        }
        let o = firstrank(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let e = firstrank(&["eval", "--trec-eval-format", "--qrels", p(&qrels), p(&out)]);
        (
            metric(&stdout(&e), "ndcg_cut_10"),
            std::fs::read_to_string(&out).unwrap(),
        )
    };
    // The oracle sorts the top 20 by grade whatever their input order.
    let (oracle, _) = run("oracle", None, "o.trec");
    let (oracle_shuffled, _) = run("oracle", Some("7"), "os.trec");
    assert_eq!(format!("{oracle:.4}"), format!("{oracle_shuffled:.4}"));
    // A scorer that only follows the input order changes with the shuffle,
    // and the same seed reproduces the same run.
    let (rev, rev_text) = run("reverse", None, "r.trec");
    let (rev_s, rev_s_text) = run("reverse", Some("7"), "rs.trec");
    let (_, rev_s_again) = run("reverse", Some("7"), "rs2.trec");
    assert_ne!(rev_text, rev_s_text);
    assert_eq!(rev_s_text, rev_s_again);
    assert!(rev != rev_s, "{rev} vs {rev_s}");
}

#[test]
fn bench_times_first_and_generation_on_the_same_windows() {
    let Some(s) = shared() else { return };
    let input = s.join("data/dl19/bm25-top100.json");
    let bad = firstrank(&["bench", "--input", p(&input), "--modes", "first,fast"]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("invalid value 'fast'"),
        "{}",
        stderr(&bad)
    );
    if !model_available("smollm2", "bench's model part") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("bench.json");
    let o = firstrank(&[
        "bench",
        "-q",
        "--model",
        "smollm2",
        "--input",
        p(&input),
        "--windows",
        "1",
        "--window",
        "3",
        "--json",
        p(&json),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let modes = v["modes"].as_array().unwrap();
    assert_eq!(modes.len(), 2);
    // FIRST: one forward pass per window; generation decodes several tokens.
    assert_eq!(modes[0]["mode"], "first");
    assert_eq!(modes[0]["forward_passes"], 1);
    assert_eq!(modes[0]["generated_tokens"], 0);
    assert!(modes[1]["generated_tokens"].as_u64().unwrap() > 1);
    assert!(v["generate_over_first"].as_f64().unwrap() > 0.0);
}

#[test]
fn smollm2_reranks_with_its_bundled_adapter_unless_told_otherwise() {
    let Some(s) = shared() else { return };
    if !model_available("smollm2", "the bundled-adapter test") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let input = s.join("data/dl19/bm25-top100.json");
    // One query, one window of 5: the raw identifier logits of that window.
    let logits = |adapter: Option<&str>, name: &str| {
        let out = tmp.path().join(name);
        let mut a = vec![
            "rerank",
            "--model",
            "smollm2",
            "--input",
            p(&input),
            "--limit",
            "1",
            "--strategy",
            "single",
            "--window",
            "5",
            "--output-jsonl",
            p(&out),
        ];
        if let Some(dir) = adapter {
            a.extend(["--adapter", dir]);
        }
        let o = firstrank(&a);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(
            std::fs::read_to_string(&out)
                .unwrap()
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        let scores: Vec<f64> = v["windows"][0]["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(scores.len(), 5);
        (scores, stderr(&o))
    };
    let (bundled, log) = logits(None, "bundled.jsonl");
    assert!(log.contains("bundled with smollm2 (smollm2-first"), "{log}");
    let (zero_shot, log_none) = logits(Some("none"), "none.jsonl");
    assert!(!log_none.contains("applied adapter"), "{log_none}");
    assert_ne!(bundled, zero_shot, "the bundled adapter changes the logits");
    // The bundle is written to the cache as an ordinary adapter directory,
    // which gives the same logits when passed by hand.
    let dir = log
        .lines()
        .find_map(|l| l.split("applied adapter ").nth(1))
        .and_then(|rest| rest.split(" (").next())
        .expect("the log names the adapter directory")
        .to_string();
    let (by_hand, _) = logits(Some(&dir), "by-hand.jsonl");
    assert_eq!(bundled, by_hand);
    // `models list` shows the built-in adapter under its model, and where it
    // was written.
    let o = firstrank(&["models", "list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let listing = stdout(&o);
    let line = listing
        .lines()
        .skip_while(|l| !l.starts_with("smollm2 "))
        .nth(1)
        .unwrap_or_default();
    assert!(
        line.contains("FIRST adapter `smollm2-first`")
            && line.contains("written")
            && line.ends_with(&dir),
        "{listing}"
    );
}

#[test]
fn training_commands_reject_bad_configs_clearly() {
    let Some(s) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let input = s.join("data/dl19/bm25-top100.json");
    let qrels = s.join("data/dl19/qrels.txt");
    let out = tmp.path().join("lists.jsonl");
    // `label` with qrels labels, writing `output`, plus `extra` options.
    let label = |extra: &[&str], output: &std::path::Path| {
        let mut a = vec![
            "label",
            "-q",
            "--input",
            p(&input),
            "--teacher",
            "qrels",
            "--qrels",
            p(&qrels),
            "--output",
            p(output),
        ];
        a.extend_from_slice(extra);
        firstrank(&a)
    };
    // A window larger than the 26 letters.
    let o = label(&["--window", "27"], &out);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("identifier alphabet"), "{}", stderr(&o));
    assert!(!out.exists());
    // A good label run, for the train checks below.
    let o = label(&["--lists-per-query", "2"], &out);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 86);
    // Fusion with the first-stage order: a negative weight is refused; a weight that swamps
    // the labels makes the first-stage top window's target the identity order.
    let fused = tmp.path().join("fused.jsonl");
    let label_fused = |w: &str| label(&["--first-stage-weight", w], &fused);
    let o = label_fused("-1");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--first-stage-weight must be a non-negative number"),
        "{}",
        stderr(&o)
    );
    assert!(!fused.exists());
    let first_target = |path: &std::path::Path| {
        let text = std::fs::read_to_string(path).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        line["conversations"][2]["value"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let identity: Vec<String> = ('A'..='T').map(|c| format!("[{c}]")).collect();
    assert_ne!(
        first_target(&out),
        identity.join(" > "),
        "the qrels reorder the top window"
    );
    assert!(label_fused("1000").status.success());
    assert_eq!(first_target(&fused), identity.join(" > "));
    let adapter = tmp.path().join("adapter");
    for (args, needle) in [
        (vec!["--objective", "lambda"], "invalid value 'lambda'"),
        (vec!["--lora-rank", "0"], "rank must be at least 1"),
        (
            vec!["--lora-targets", "q_proj,lm_head"],
            "unknown LoRA target `lm_head`",
        ),
        (
            vec!["--lora-layers", "9-4"],
            "a range runs from low to high",
        ),
        (
            vec!["--lora-layers", "top:31"],
            "the model has only 30 layers",
        ),
        (
            vec!["--lora-layers", "28,30"],
            "LoRA layer 30 (layers_to_transform) does not exist",
        ),
        (
            vec!["--full", "--lora-layers", "top:2"],
            "--lora-layers applies to LoRA adapters",
        ),
    ] {
        let mut a = vec!["train", "--data", p(&out), "--output", p(&adapter)];
        a.extend(args);
        let o = firstrank(&a);
        assert!(!o.status.success());
        assert!(stderr(&o).contains(needle), "{needle}: {}", stderr(&o));
    }
    let missing = tmp.path().join("missing.jsonl");
    let o = firstrank(&["train", "--data", p(&missing), "--output", p(&adapter)]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("missing.jsonl"), "{}", stderr(&o));
    // The OS error is said once, not again as the error's cause.
    assert_eq!(
        stderr(&o).matches("No such file").count(),
        1,
        "{}",
        stderr(&o)
    );
    assert!(!adapter.exists());
}

/// SIGTERM in the middle of `label` (the dense teacher encoding DL19's
/// passages, its output's temp file open): exit 143, and the output
/// directory is left as it was, with no temp file in it.
#[cfg(unix)]
#[test]
fn an_interrupted_command_leaves_no_output_and_no_temp_file() {
    let Some(s) = shared() else { return };
    if !model_available("minilm", "the interrupted-label test") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("lists.jsonl");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("firstrank"))
        .args([
            "label",
            "-q",
            "--input",
            p(&s.join("data/dl19/bm25-top100.json")),
            "--teacher",
            "dense",
            "--output",
            p(&out),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let entries = || std::fs::read_dir(tmp.path()).unwrap().count();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while entries() == 0 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "label ended before it could be interrupted"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no temp file appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(143), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("interrupted: removed 1 unfinished output"),
        "{}",
        stderr(&o)
    );
    assert_eq!(entries(), 0, "nothing left in the output directory");
}
