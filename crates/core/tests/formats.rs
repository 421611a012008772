//! Integration tests of `firstrank_core::formats`: the three input shapes,
//! their bad-input handling, the TREC/JSONL writers, atomic writing and resume.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use firstrank_core::formats::output::{format_jsonl, format_trec, partial_path};
use firstrank_core::formats::{
    completed_qids, detect_format, open_requests, read_corpus_subset, read_requests, read_topics,
    read_trec_run, read_trec_run_strict, AtomicWriter, InputFormat, InputSpec, OutputConfig,
    OutputKind, OutputSink,
};
use firstrank_core::window::{rerank, RerankOutcome, WindowScorer, WindowStrategy};
use firstrank_core::{Candidate, Query, Request};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/formats")
        .join(name)
}

fn shared_dir() -> PathBuf {
    match std::env::var_os("FIRSTRANK_SHARED") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    }
}

/// Writes `content` to `dir/name` and returns the path.
fn write(dir: &Path, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, content).unwrap();
    p
}

fn auto(p: &Path) -> InputSpec {
    InputSpec::Auto(p.to_path_buf())
}

fn err_of(spec: &InputSpec) -> String {
    match read_requests(spec) {
        Ok(r) => panic!("expected an error, got {} requests", r.len()),
        Err(e) => e.to_string(),
    }
}

fn docids(r: &Request) -> Vec<&str> {
    r.candidates.iter().map(|c| c.docid.as_str()).collect()
}

fn assert_contains(haystack: &str, needles: &[&str]) {
    for n in needles {
        assert!(haystack.contains(n), "`{haystack}` does not contain `{n}`");
    }
}

/// The two queries of the hand-made fixtures, as each self-contained format holds them.
fn expected_fixture_requests() -> Vec<Request> {
    let c = |docid: &str, score: f64, title: Option<&str>, text: &str| Candidate {
        docid: docid.into(),
        score,
        title: title.map(Into::into),
        text: text.into(),
    };
    vec![
        Request {
            query: Query {
                qid: "101".into(),
                text: "what is a flea".into(),
                instruction: None,
            },
            candidates: vec![
                c("d1", 12.5, None, "Fleas are small insects."),
                c("7", 11.0, Some("Jumping"), "A flea jumps far."),
                c("d3", 9.25, None, "Dogs get fleas."),
            ],
        },
        Request {
            query: Query {
                qid: "q2".into(),
                text: "single hit query".into(),
                instruction: None,
            },
            candidates: vec![c("x9", 1.0, None, "Only one passage.")],
        },
    ]
}

// ---------------------------------------------------------------------------
// Good inputs

#[test]
fn retrieve_results_json_is_read_with_int_ids_as_text() {
    let path = data("retrieve.json");
    assert_eq!(detect_format(&path).unwrap(), InputFormat::RetrieveResults);
    let got = read_requests(&auto(&path)).unwrap();
    assert_eq!(got, expected_fixture_requests());
}

#[test]
fn request_jsonl_is_read_with_each_doc_text_field() {
    let path = data("request.jsonl");
    assert_eq!(detect_format(&path).unwrap(), InputFormat::RequestJsonl);
    let got = read_requests(&auto(&path)).unwrap();
    assert_eq!(got, expected_fixture_requests());
}

#[test]
fn trec_run_is_sorted_by_score_then_rank_column() {
    let run = read_trec_run(&data("run.trec")).unwrap();
    assert_eq!(run.keys().collect::<Vec<_>>(), ["101", "q2"]);
    let q: Vec<(&str, Option<u64>, f64)> = run["101"]
        .iter()
        .map(|e| (e.docid.as_str(), e.rank, e.score))
        .collect();
    // d3 and d7 tie on 9.25: the rank column (2 before 3) decides.
    assert_eq!(
        q,
        [
            ("d1", Some(1), 12.5),
            ("d7", Some(2), 9.25),
            ("d3", Some(3), 9.25),
            ("d4", Some(4), -1.5)
        ]
    );
    assert_eq!(
        detect_format(&data("run.trec")).unwrap(),
        InputFormat::TrecRun
    );
}

#[test]
fn trec_run_with_jsonl_or_tsv_corpus_builds_requests() {
    for corpus in ["corpus.jsonl", "corpus.tsv"] {
        let spec = InputSpec::RunWithTexts {
            run: data("run.trec"),
            topics: data("topics.tsv"),
            corpus: data(corpus),
        };
        let got = read_requests(&spec).unwrap();
        assert_eq!(got.len(), 2, "{corpus}");
        assert_eq!(got[0].query.qid, "101");
        assert_eq!(got[0].query.text, "what is a flea");
        assert_eq!(docids(&got[0]), ["d1", "d7", "d3", "d4"], "{corpus}");
        assert_eq!(got[0].candidates[1].text, "A flea jumps far.");
        assert_eq!(got[0].candidates[1].score, 9.25);
        let title = if corpus.ends_with("jsonl") {
            Some("Dogs".to_string())
        } else {
            None
        };
        assert_eq!(got[0].candidates[2].title, title, "{corpus}");
        assert_eq!(got[1].query.qid, "q2");
        assert_eq!(docids(&got[1]), ["x9"]);
    }
}

#[test]
fn corpus_subset_keeps_only_wanted_docids() {
    let wanted: HashSet<String> = ["d3", "x9", "absent"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for corpus in ["corpus.jsonl", "corpus.tsv"] {
        let got = read_corpus_subset(&data(corpus), &wanted).unwrap();
        let mut keys: Vec<_> = got.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["d3", "x9"], "{corpus}");
        assert_eq!(got["x9"].1, "Only one passage.");
    }
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "int.jsonl",
        "{\"id\": 42, \"contents\": \"forty-two\"}\n{\"id\": 43, \"contents\": \"no\"}\n",
    );
    let got = read_corpus_subset(&p, &["42".to_string()].into()).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got["42"], (None, "forty-two".to_string()));
}

#[test]
fn topics_keep_text_after_first_tab() {
    let topics = read_topics(&data("topics.tsv")).unwrap();
    let pairs: Vec<(&str, &str)> = topics
        .iter()
        .map(|q| (q.qid.as_str(), q.text.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("101", "what is a flea"),
            ("q2", "single hit query"),
            ("999", "unused topic")
        ]
    );
}

// ---------------------------------------------------------------------------
// Detection

#[test]
fn unrecognised_input_lists_the_three_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "odd.txt", "hello world\n");
    let e = err_of(&auto(&p));
    assert_contains(
        &e,
        &[
            "odd.txt",
            "line 1",
            "retrieve_results",
            "request JSONL",
            "TREC run",
        ],
    );
    let later = write(dir.path(), "later.txt", "\n\n  # a comment\n");
    assert_contains(
        &err_of(&auto(&later)),
        &[
            "later.txt",
            "line 3",
            "found 3 column(s)",
            "retrieve_results",
        ],
    );
    let empty = write(dir.path(), "empty.json", "  \n\n");
    assert_contains(
        &err_of(&auto(&empty)),
        &["empty", "retrieve_results", "TREC run"],
    );
}

#[test]
fn trec_run_without_texts_asks_for_topics_and_corpus() {
    let e = err_of(&auto(&data("run.trec")));
    assert_contains(&e, &["run.trec", "TREC run", "--topics", "--corpus"]);
}

// ---------------------------------------------------------------------------
// Malformed input

#[test]
fn malformed_json_array_names_record_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"{"query": "q", "hits": [{"content": "c", "qid": 1, "docid": "a", "rank": 1, "score": 1.0}]}"#;
    let p = write(
        dir.path(),
        "bad.json",
        format!("[\n{good},\n{good},\n{{\"query\": \"q\", \"hits\": [}}\n]"),
    );
    let results: Vec<_> = open_requests(&auto(&p)).unwrap().collect();
    assert_eq!(
        results.len(),
        3,
        "two good records, then the error, then the end"
    );
    assert!(results[0].is_ok() && results[1].is_ok());
    let e = results[2].as_ref().unwrap_err().to_string();
    assert_contains(&e, &["bad.json", "record 3", "line 4"]);

    let not_array = write(dir.path(), "obj.json", "[1, 2]");
    assert_contains(
        &err_of(&auto(&not_array)),
        &["obj.json", "record 1", "invalid type"],
    );
    let trailing = write(dir.path(), "trailing.json", format!("[{good}] x"));
    assert_contains(
        &err_of(&auto(&trailing)),
        &["trailing.json", "trailing characters"],
    );
}

#[test]
fn malformed_jsonl_names_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"{"query": {"text": "t", "qid": 1}, "candidates": [{"docid": "a", "score": 1, "doc": {"contents": "x"}}]}"#;
    let p = write(
        dir.path(),
        "bad.jsonl",
        format!("{good}\n\n{{\"query\": {{\"text\": \"t\", \"qid\": 2}}, \"candidates\": [\n"),
    );
    let results: Vec<_> = open_requests(&auto(&p)).unwrap().collect();
    assert_eq!(results.len(), 2);
    let e = results[1].as_ref().unwrap_err().to_string();
    assert_contains(&e, &["bad.jsonl", "line 3", "column"]);

    let wrong_type = write(
        dir.path(),
        "type.jsonl",
        r#"{"query": {"text": "t", "qid": 1.5}, "candidates": []}"#,
    );
    assert_contains(
        &err_of(&auto(&wrong_type)),
        &["type.jsonl", "line 1", "a string or an integer"],
    );
}

#[test]
fn missing_fields_are_named_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let hit = r#"{"content": "c", "qid": 1, "docid": "a", "rank": 1, "score": 1.0}"#;
    let no_docid = r#"{"content": "c", "qid": 1, "rank": 2, "score": 1.0}"#;
    let p = write(
        dir.path(),
        "m.json",
        format!(
            r#"[{{"query": "q", "hits": [{hit}]}}, {{"query": "q", "hits": [{hit}, {no_docid}]}}]"#
        ),
    );
    assert_contains(
        &err_of(&auto(&p)),
        &["m.json", "record 2, hits[1]", "missing field `docid`"],
    );
    let p = write(dir.path(), "noq.json", format!(r#"[{{"hits": [{hit}]}}]"#));
    assert_contains(&err_of(&auto(&p)), &["record 1", "missing field `query`"]);

    let line =
        |cand: &str| format!(r#"{{"query": {{"text": "t", "qid": 1}}, "candidates": [{cand}]}}"#);
    let p = write(
        dir.path(),
        "m.jsonl",
        format!(
            "{}\n{}\n",
            line(r#"{"docid": "a", "score": 1, "doc": {"text": "x"}}"#),
            line(r#"{"docid": "a", "doc": {"text": "x"}}"#)
        ),
    );
    assert_contains(
        &err_of(&auto(&p)),
        &["m.jsonl", "line 2, candidates[0]", "missing field `score`"],
    );
    let p = write(
        dir.path(),
        "nodoc.jsonl",
        line(r#"{"docid": "a", "score": 1, "doc": {"title": "only a title"}}"#),
    );
    assert_contains(
        &err_of(&auto(&p)),
        &["line 1, candidates[0].doc", "contents", "segment"],
    );
    let p = write(
        dir.path(),
        "noqid.jsonl",
        r#"{"query": {"text": "t"}, "candidates": []}"#,
    );
    assert_contains(
        &err_of(&auto(&p)),
        &["line 1, query", "missing field `qid`"],
    );
}

#[test]
fn hits_of_one_record_must_share_a_qid() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "mixed.json",
        r#"[{"query": "q", "hits": [{"content": "c", "qid": 1, "docid": "a", "score": 2}, {"content": "c", "qid": "2", "docid": "b", "score": 1}]}]"#,
    );
    assert_contains(
        &err_of(&auto(&p)),
        &["record 1, hits[1]", "qid `2`", "hits[0].qid"],
    );
}

#[test]
fn malformed_trec_inputs_name_line_and_expectation() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "cols.trec",
            "1 Q0 a 1 2.0 t\n1 Q0 b 2 1.0\n",
            "line 2",
            "6 whitespace-separated columns",
        ),
        (
            "score.trec",
            "1 Q0 a 1 2.0 t\n1 Q0 b 2 high t\n",
            "line 2",
            "score (column 5)",
        ),
        ("nan.trec", "1 Q0 a 1 NaN t\n", "line 1", "finite number"),
    ];
    for (name, content, line, what) in cases {
        let p = write(dir.path(), name, content);
        let e = read_trec_run(&p).unwrap_err().to_string();
        assert_contains(&e, &[name, line, what]);
    }
    // trec_eval ignores the rank column: any token is accepted, and
    // unnumbered entries sort after numbered ones of the same score.
    let p = write(
        dir.path(),
        "rank.trec",
        "1 Q0 a one 2.0 t\n1 Q0 b 1 2.0 t\n",
    );
    let run = read_trec_run(&p).unwrap();
    let order: Vec<(&str, Option<u64>)> = run["1"]
        .iter()
        .map(|e| (e.docid.as_str(), e.rank))
        .collect();
    assert_eq!(order, [("b", Some(1)), ("a", None)]);
    // A docid twice in one query: dropped from a first stage, refused in a
    // run to evaluate (as trec_eval does), naming both lines.
    let p = write(
        dir.path(),
        "dup.trec",
        "1 Q0 a 1 3.0 t\n1 Q0 b 2 2.0 t\n1 Q0 a 3 1.0 t\n2 Q0 a 1 1.0 t\n",
    );
    assert_eq!(read_trec_run(&p).unwrap()["1"].len(), 2);
    let e = read_trec_run_strict(&p).unwrap_err().to_string();
    assert_contains(
        &e,
        &["dup.trec", "line 3", "`a`", "query `1`", "first at line 1"],
    );
    let topics = write(dir.path(), "topics.tsv", "1\tfine\n2 no tab here\n");
    assert_contains(
        &read_topics(&topics).unwrap_err().to_string(),
        &["topics.tsv", "line 2", "qid<TAB>query"],
    );
    let corpus = write(dir.path(), "corpus.tsv", "a\ttext\nb text without tab\n");
    let wanted: HashSet<String> = ["a".to_string()].into();
    assert_contains(
        &read_corpus_subset(&corpus, &wanted)
            .unwrap_err()
            .to_string(),
        &["corpus.tsv", "line 2", "docid<TAB>text"],
    );
    let corpus = write(
        dir.path(),
        "corpus.jsonl",
        "{\"docid\": \"a\", \"text\": \"t\"}\n{\"title\": \"no id\", \"text\": \"t\"}\n",
    );
    assert_contains(
        &read_corpus_subset(&corpus, &wanted)
            .unwrap_err()
            .to_string(),
        &["corpus.jsonl", "line 2", "`_id`"],
    );
}

#[test]
fn run_docid_missing_from_corpus_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write(
        dir.path(),
        "c.jsonl",
        "{\"docid\": \"d1\", \"text\": \"x\"}\n",
    );
    let spec = InputSpec::RunWithTexts {
        run: data("run.trec"),
        topics: data("topics.tsv"),
        corpus,
    };
    let e = err_of(&spec);
    assert_contains(
        &e,
        &[
            "run.trec",
            "qid 101",
            "docid d7",
            "not in the corpus",
            "c.jsonl",
        ],
    );
}

#[test]
fn run_qid_missing_from_topics_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let topics = write(dir.path(), "t.tsv", "101\twhat is a flea\n");
    let spec = InputSpec::RunWithTexts {
        run: data("run.trec"),
        topics,
        corpus: data("corpus.jsonl"),
    };
    assert_contains(
        &err_of(&spec),
        &["run.trec", "line 3", "qid q2", "not in the topics", "t.tsv"],
    );
}

#[test]
fn invalid_utf8_names_file_and_place() {
    let dir = tempfile::tempdir().unwrap();
    let mut jsonl = br#"{"query": {"text": "t", "qid": 1}, "candidates": []}"#.to_vec();
    jsonl.extend_from_slice(
        b"\n{\"query\": {\"text\": \"caf\xE9\", \"qid\": 2}, \"candidates\": []}\n",
    );
    let p = write(dir.path(), "latin1.jsonl", &jsonl);
    assert_contains(
        &err_of(&auto(&p)),
        &["latin1.jsonl", "line 2, byte 24", "invalid UTF-8"],
    );

    let json = b"[{\"query\": \"caf\xE9\", \"hits\": []}]".to_vec();
    let p = write(dir.path(), "latin1.json", &json);
    assert_contains(
        &err_of(&auto(&p)),
        &["latin1.json", "record 1", "line 1", "column 16", "UTF-8"],
    );

    let p = write(
        dir.path(),
        "latin1.trec",
        b"1 Q0 a 1 2 t\n1 Q0 caf\xE9 2 1 t\n",
    );
    assert_contains(
        &read_trec_run(&p).unwrap_err().to_string(),
        &["latin1.trec", "line 2, byte 9", "invalid UTF-8"],
    );
}

// ---------------------------------------------------------------------------
// Recoveries and edge cases

#[test]
fn empty_candidate_lists_pass_through() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "e.jsonl",
        "{\"query\": {\"text\": \"t\", \"qid\": 1}, \"candidates\": []}\n{\"query\": {\"text\": \"u\", \"qid\": 2}, \"candidates\": [{\"docid\": \"a\", \"score\": 1, \"doc\": {\"text\": \"x\"}}]}\n",
    );
    let got = read_requests(&auto(&p)).unwrap();
    assert_eq!(got.len(), 2);
    assert!(got[0].candidates.is_empty());
    assert_eq!(got[0].query.qid, "1");
    // retrieve_results: an empty record with a record-level qid passes through;
    // one with no qid anywhere cannot be reported under any qid and is skipped.
    let p = write(
        dir.path(),
        "e.json",
        r#"[{"query": "t", "qid": 5, "hits": []}, {"query": "lost", "hits": []}, {"query": "u", "hits": [{"content": "x", "qid": 6, "docid": "a", "score": 1}]}]"#,
    );
    let got = read_requests(&auto(&p)).unwrap();
    let qids: Vec<(&str, usize)> = got
        .iter()
        .map(|r| (r.query.qid.as_str(), r.candidates.len()))
        .collect();
    assert_eq!(qids, [("5", 0), ("6", 1)]);
}

#[test]
fn duplicate_docids_keep_the_first_occurrence() {
    let dir = tempfile::tempdir().unwrap();
    let hit = |docid: &str, score: f64, text: &str| {
        format!(r#"{{"content": "{text}", "qid": 1, "docid": "{docid}", "score": {score}}}"#)
    };
    let p = write(
        dir.path(),
        "dup.json",
        format!(
            r#"[{{"query": "q", "hits": [{}, {}, {}, {}]}}]"#,
            hit("a", 4.0, "first a"),
            hit("b", 3.0, "b"),
            hit("a", 2.0, "second a"),
            hit("c", 1.0, "c")
        ),
    );
    let got = read_requests(&auto(&p)).unwrap();
    assert_eq!(docids(&got[0]), ["a", "b", "c"]);
    assert_eq!(got[0].candidates[0].text, "first a");

    let p = write(
        dir.path(),
        "dup.jsonl",
        r#"{"query": {"text": "t", "qid": 1}, "candidates": [{"docid": 5, "score": 2, "doc": {"text": "x"}}, {"docid": "5", "score": 1, "doc": {"text": "y"}}]}"#,
    );
    let got = read_requests(&auto(&p)).unwrap();
    assert_eq!(docids(&got[0]), ["5"]);
    assert_eq!(got[0].candidates[0].text, "x");

    // In a run the entry that sorts first (higher score) is kept.
    let p = write(
        dir.path(),
        "dup.trec",
        "1 Q0 a 2 1.0 t\n1 Q0 b 1 3.0 t\n1 Q0 a 3 5.0 t\n",
    );
    let run = read_trec_run(&p).unwrap();
    let got: Vec<(&str, f64)> = run["1"]
        .iter()
        .map(|e| (e.docid.as_str(), e.score))
        .collect();
    assert_eq!(got, [("a", 5.0), ("b", 3.0)]);
}

#[test]
fn megabyte_passage_is_accepted_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let big: String = "lorem ipsum \\\"quoted\\\" ".repeat(1 << 20 >> 4);
    let expected_len = big.replace("\\\"", "\"").len();
    assert!(expected_len >= 900_000);
    let json = write(
        dir.path(),
        "big.json",
        format!(
            r#"[{{"query": "q", "hits": [{{"content": "{big}", "qid": 1, "docid": "a", "score": 1}}]}}]"#
        ),
    );
    let jsonl = write(
        dir.path(),
        "big.jsonl",
        format!(
            r#"{{"query": {{"text": "q", "qid": 1}}, "candidates": [{{"docid": "a", "score": 1, "doc": {{"contents": "{big}"}}}}]}}"#
        ),
    );
    let corpus = write(
        dir.path(),
        "big-corpus.jsonl",
        format!("{{\"docid\": \"a\", \"text\": \"{big}\"}}\n"),
    );
    let start = Instant::now();
    for p in [&json, &jsonl] {
        let got = read_requests(&auto(p)).unwrap();
        assert_eq!(got[0].candidates[0].text.len(), expected_len);
    }
    let got = read_corpus_subset(&corpus, &["a".to_string()].into()).unwrap();
    assert_eq!(got["a"].1.len(), expected_len);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn dropping_the_json_stream_early_is_fine() {
    let mut it = open_requests(&auto(&data("retrieve.json"))).unwrap();
    assert_eq!(it.next().unwrap().unwrap().query.qid, "101");
    drop(it); // the reader thread must notice and stop, not hang or panic
}

// ---------------------------------------------------------------------------
// Shared data

#[test]
fn dl19_bm25_top100_streams_completely() {
    let path = shared_dir().join("data/dl19/bm25-top100.json");
    if !path.exists() {
        eprintln!(
            "skipping: {} not found (set FIRSTRANK_SHARED)",
            path.display()
        );
        return;
    }
    let got = read_requests(&auto(&path)).unwrap();
    assert_eq!(got.len(), 43);
    assert!(got.iter().all(|r| r.candidates.len() == 100));
    assert_eq!(got[0].query.qid, "264014");
    assert_eq!(got[0].query.text, "how long is life cycle of flea");
    assert_eq!(got[0].candidates[0].docid, "5611210");
    // Cross-check against a plain whole-file parse.
    let value: serde_json::Value =
        serde_json::from_reader(std::io::BufReader::new(fs::File::open(&path).unwrap())).unwrap();
    for (r, v) in got.iter().zip(value.as_array().unwrap()) {
        let hits = v["hits"].as_array().unwrap();
        assert_eq!(r.query.qid, hits[0]["qid"].to_string().trim_matches('"'));
        for (c, h) in r.candidates.iter().zip(hits) {
            assert_eq!(c.docid, h["docid"].as_str().unwrap());
            assert_eq!(c.text, h["content"].as_str().unwrap());
            assert_eq!(c.score, h["score"].as_f64().unwrap());
        }
    }
}

// ---------------------------------------------------------------------------
// Outputs

/// Scores a candidate by the number in its docid, so the reranked order is
/// known independently: descending docid number.
struct DocidNumberScorer;

impl WindowScorer for DocidNumberScorer {
    fn score_window(&mut self, _query: &Query, window: &[Candidate]) -> anyhow::Result<Vec<f32>> {
        Ok(window
            .iter()
            .map(|c| {
                c.docid
                    .trim_start_matches(|ch: char| !ch.is_ascii_digit())
                    .parse::<f32>()
                    .unwrap_or(0.0)
            })
            .collect())
    }
}

fn request(qid: &str, n: usize) -> Request {
    Request {
        query: Query {
            qid: qid.into(),
            text: format!("query {qid}"),
            instruction: None,
        },
        candidates: (0..n)
            .map(|i| Candidate {
                docid: format!("d{i}"),
                score: 100.0 - i as f64,
                title: (i % 2 == 0).then(|| format!("title {i}")),
                text: format!("passage {i} of {qid}"),
            })
            .collect(),
    }
}

fn outcome(qid: &str, n: usize) -> RerankOutcome {
    rerank(
        &mut DocidNumberScorer,
        &WindowStrategy::sliding(4, 2, 100),
        request(qid, n),
    )
    .unwrap()
}

#[test]
fn trec_writer_lines_read_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let o = outcome("7", 11);
    let text = format_trec(&o, "firstrank").unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 11);
    // The best docid number bubbles to the top through the overlapping windows.
    assert_eq!(lines[0], "7 Q0 d10 1 11 firstrank");
    let last = &o.ranked[10].candidate.docid;
    assert_eq!(lines[10], format!("7 Q0 {last} 11 1 firstrank"));
    let p = write(dir.path(), "out.trec", &text);
    let run = read_trec_run(&p).unwrap();
    let got: Vec<&str> = run["7"].iter().map(|e| e.docid.as_str()).collect();
    let want: Vec<&str> = o
        .ranked
        .iter()
        .map(|c| c.candidate.docid.as_str())
        .collect();
    assert_eq!(got, want);
    // Strictly decreasing as text: parse the printed scores back.
    let scores: Vec<f64> = lines
        .iter()
        .map(|l| l.split(' ').nth(4).unwrap().parse().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] > w[1]));
    assert!(format_trec(&o, "bad tag").is_err());
    assert_eq!(format_trec(&outcome("8", 0), "t").unwrap(), "");
}

#[test]
fn jsonl_writer_round_trips_through_the_request_reader() {
    let dir = tempfile::tempdir().unwrap();
    let o = outcome("7", 6);
    let line = format_jsonl(&o).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["query"]["qid"], "7");
    let c0 = &v["candidates"][0];
    assert_eq!(c0["docid"], "d5");
    assert_eq!(c0["score"], 6.0);
    assert_eq!(c0["original_rank"], 6);
    assert_eq!(c0["first_stage_score"], 95.0);
    assert_eq!(c0["model_score"], 5.0);
    assert_eq!(c0["doc"]["contents"], "passage 5 of 7");
    assert!(c0["doc"].get("title").is_none());
    assert_eq!(v["candidates"][1]["doc"]["title"], "title 4");
    assert_eq!(v["windows"].as_array().unwrap().len(), o.windows.len());
    assert_eq!(v["windows"][0]["start"], o.windows[0].start);

    let p = write(dir.path(), "out.jsonl", &line);
    let back = read_requests(&auto(&p)).unwrap();
    assert_eq!(back.len(), 1);
    let want: Vec<&str> = o
        .ranked
        .iter()
        .map(|c| c.candidate.docid.as_str())
        .collect();
    assert_eq!(docids(&back[0]), want);
    assert_eq!(back[0].candidates[1].title.as_deref(), Some("title 4"));
}

#[test]
fn atomic_writer_commits_or_leaves_target_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let target = write(dir.path(), "out.txt", "old\n");
    {
        let mut w = AtomicWriter::create(&target).unwrap();
        w.write_all(b"new but abandoned\n").unwrap();
        w.flush().unwrap();
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            2,
            "temp file sits beside the target"
        );
    }
    assert_eq!(fs::read_to_string(&target).unwrap(), "old\n");
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        1,
        "temp file removed on drop"
    );

    let mut w = AtomicWriter::create(&target).unwrap();
    w.write_all(b"new\n").unwrap();
    w.commit().unwrap();
    assert_eq!(fs::read_to_string(&target).unwrap(), "new\n");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

    let nested = dir.path().join("sub/dir/out.txt");
    let mut w = AtomicWriter::create(&nested).unwrap();
    w.write_all(b"x").unwrap();
    w.commit().unwrap();
    assert_eq!(fs::read_to_string(&nested).unwrap(), "x");
}

fn sink(dir: &Path, resume: bool, trec: bool, jsonl: bool) -> OutputSink {
    OutputSink::create(OutputConfig {
        trec: trec.then(|| dir.join("run.trec")),
        jsonl: jsonl.then(|| dir.join("run.jsonl")),
        tag: "fr".into(),
        resume,
        fingerprint: None,
    })
    .unwrap()
}

/// Sizes of the queries used in the sink tests; "q3" has no candidates.
const QUERIES: [(&str, usize); 5] = [("q1", 5), ("q2", 3), ("q3", 0), ("q4", 7), ("q5", 2)];

fn reference_outputs(dir: &Path) -> (String, String) {
    let mut s = sink(dir, false, true, true);
    for (q, n) in QUERIES {
        s.write(&outcome(q, n)).unwrap();
    }
    s.finish().unwrap();
    (
        fs::read_to_string(dir.join("run.trec")).unwrap(),
        fs::read_to_string(dir.join("run.jsonl")).unwrap(),
    )
}

#[test]
fn sink_writes_partial_then_renames_on_finish() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = sink(dir.path(), false, true, true);
    s.write(&outcome("q1", 3)).unwrap();
    assert!(partial_path(&dir.path().join("run.trec")).exists());
    assert!(!dir.path().join("run.trec").exists());
    s.finish().unwrap();
    assert!(!partial_path(&dir.path().join("run.trec")).exists());
    assert!(!partial_path(&dir.path().join("run.jsonl")).exists());
    assert_eq!(
        fs::read_to_string(dir.path().join("run.trec"))
            .unwrap()
            .lines()
            .count(),
        3
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("run.jsonl"))
            .unwrap()
            .lines()
            .count(),
        1
    );
}

#[test]
fn resume_after_a_cut_write_reproduces_the_uninterrupted_output() {
    let reference_dir = tempfile::tempdir().unwrap();
    let (want_trec, want_jsonl) = reference_outputs(reference_dir.path());

    let dir = tempfile::tempdir().unwrap();
    let mut s = sink(dir.path(), false, true, true);
    for (q, n) in &QUERIES[..4] {
        s.write(&outcome(q, *n)).unwrap();
    }
    drop(s); // interrupted: no finish
    let trec_partial = partial_path(&dir.path().join("run.trec"));
    let jsonl_partial = partial_path(&dir.path().join("run.jsonl"));
    assert!(!dir.path().join("run.trec").exists());
    // Simulate a write cut mid-line in both files (q5 started).
    let q5_trec = format_trec(&outcome("q5", 2), "fr").unwrap();
    let q5_jsonl = format_jsonl(&outcome("q5", 2)).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(&trec_partial)
        .unwrap()
        .write_all(&q5_trec.as_bytes()[..10])
        .unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(&jsonl_partial)
        .unwrap()
        .write_all(&q5_jsonl.as_bytes()[..40])
        .unwrap();

    // What each file alone shows as done.
    let trec_done = completed_qids(&trec_partial, OutputKind::Trec).unwrap();
    assert_eq!(
        trec_done,
        ["q1", "q2"].iter().map(|s| s.to_string()).collect(),
        "last TREC group (q4) is never trusted"
    );
    let jsonl_done = completed_qids(&jsonl_partial, OutputKind::Jsonl).unwrap();
    assert_eq!(
        jsonl_done,
        ["q1", "q2", "q3", "q4"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );

    let mut s = sink(dir.path(), true, true, true);
    let done: HashSet<String> = s.completed().clone();
    assert_eq!(
        done,
        ["q1", "q2", "q3"].iter().map(|s| s.to_string()).collect()
    );
    for (q, n) in QUERIES {
        if !done.contains(q) {
            s.write(&outcome(q, n)).unwrap();
        }
    }
    s.finish().unwrap();
    assert_eq!(
        fs::read_to_string(dir.path().join("run.trec")).unwrap(),
        want_trec
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("run.jsonl")).unwrap(),
        want_jsonl
    );
}

#[test]
fn resume_with_only_a_jsonl_output_and_from_a_finished_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = sink(dir.path(), false, false, true);
    for (q, n) in &QUERIES[..2] {
        s.write(&outcome(q, *n)).unwrap();
    }
    s.finish().unwrap();
    // No .partial, but a finished output: resume continues from it.
    let mut s = sink(dir.path(), true, false, true);
    assert_eq!(s.completed().len(), 2);
    for (q, n) in &QUERIES[2..] {
        s.write(&outcome(q, *n)).unwrap();
    }
    s.finish().unwrap();
    let reference_dir = tempfile::tempdir().unwrap();
    let (_, want_jsonl) = reference_outputs(reference_dir.path());
    assert_eq!(
        fs::read_to_string(dir.path().join("run.jsonl")).unwrap(),
        want_jsonl
    );
}

#[test]
fn progress_with_a_bad_line_before_the_end_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "x.jsonl.partial", "{\"query\": {\"qid\": 1}, \"candidates\": []}\nnot json\n{\"query\": {\"qid\": 2}, \"candidates\": []}\n");
    assert_contains(
        &completed_qids(&p, OutputKind::Jsonl)
            .unwrap_err()
            .to_string(),
        &["x.jsonl.partial", "line 2"],
    );
    let p = write(
        dir.path(),
        "x.trec.partial",
        "1 Q0 a 1 2 t\n1 Q0\n2 Q0 a 1 2 t\n2 Q0 b 2 1 t\n",
    );
    assert_contains(
        &completed_qids(&p, OutputKind::Trec)
            .unwrap_err()
            .to_string(),
        &["x.trec.partial", "line 2"],
    );
}

#[test]
fn a_second_writer_of_one_output_is_refused_while_the_first_runs() {
    let dir = tempfile::tempdir().unwrap();
    let first = sink(dir.path(), false, true, true);
    let second = OutputSink::create(OutputConfig {
        trec: Some(dir.path().join("run.trec")),
        tag: "fr".into(),
        resume: true,
        ..Default::default()
    });
    let e = second
        .err()
        .expect("the second writer is refused")
        .to_string();
    assert!(
        e.contains("run.trec") && e.contains("another process"),
        "{e}"
    );
    first.finish().unwrap();
    assert!(!dir.path().join("run.trec.lock").exists());
    // Once finished, the output can be written again.
    sink(dir.path(), true, true, true).finish().unwrap();
}

#[test]
fn a_resume_with_other_settings_is_refused_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = |fp: serde_json::Value, resume: bool| OutputConfig {
        trec: Some(dir.path().join("run.trec")),
        tag: "fr".into(),
        resume,
        fingerprint: Some(fp),
        ..Default::default()
    };
    let fp = serde_json::json!({"model": "smollm2", "window": 20, "input": "a.json"});
    let started = OutputSink::create(config(fp.clone(), false)).unwrap();
    drop(started); // interrupted: the .partial and the fingerprint stay
    let record = dir.path().join("run.trec.resume.json");
    assert!(record.exists());
    let other = serde_json::json!({"model": "gemma3", "window": 20, "input": "a.json"});
    let e = OutputSink::create(config(other.clone(), true))
        .err()
        .expect("a changed model is refused")
        .to_string();
    assert!(
        e.contains("cannot resume") && e.contains("model: \"smollm2\" then, \"gemma3\" now"),
        "{e}"
    );
    assert!(!e.contains("window"), "{e}");
    // Without --resume it starts over (and records the new settings); the
    // same settings resume.
    OutputSink::create(config(other.clone(), false)).unwrap();
    let resumed = OutputSink::create(config(other, true)).unwrap();
    resumed.finish().unwrap();
    assert!(
        !record.exists(),
        "the fingerprint is dropped with the finished run"
    );
}

#[test]
fn sink_rejects_bad_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let none = OutputSink::create(OutputConfig {
        tag: "t".into(),
        ..Default::default()
    });
    assert!(none.is_err());
    let bad_tag = OutputSink::create(OutputConfig {
        trec: Some(dir.path().join("r.trec")),
        tag: "two words".into(),
        ..Default::default()
    });
    assert!(bad_tag.is_err());
}
