//! Dataset names where commands take files: with `FIRSTRANK_DATA_DIR`
//! pointing at the shared data, `rerank --input dl19 --qrels dl19 --eval` and
//! `eval --qrels dl19 dl19` give the numbers the old paths give, a pipeline
//! config with `topics = "dl19"` and `qrels = "dl19"` the same run as with
//! paths, and
//! `firstrank data list|path` show where the files are. (The fetcher's
//! download path is tested in crates/data against a local stand-in server.)

mod support;

use std::process::Output;

use support::{p, shared, stderr, stdout, trec_metric};

fn firstrank_with_data(data: &std::path::Path, args: &[&str]) -> Output {
    let cache = tempfile::tempdir().unwrap();
    assert_cmd::Command::cargo_bin("firstrank")
        .unwrap()
        .args(args)
        .env("FIRSTRANK_DATA_DIR", data)
        .env("FIRSTRANK_CACHE", cache.path())
        .env_remove("FIRSTRANK_DATA_URL")
        .output()
        .unwrap()
}

#[test]
fn dataset_names_give_the_same_numbers_as_the_paths() {
    let Some(s) = shared() else { return };
    let data = s.join("data");
    let tmp = tempfile::tempdir().unwrap();
    let by_name = tmp.path().join("name.trec");
    let by_path = tmp.path().join("path.trec");
    let rerank = |input: &str, qrels: &str, out: &std::path::Path| {
        firstrank_with_data(
            &data,
            &[
                "rerank",
                "-q",
                "--input",
                input,
                "--qrels",
                qrels,
                "--eval",
                "--output",
                p(out),
                "--diagnostic-scorer",
                "reverse",
                "--strategy",
                "single",
            ],
        )
    };
    let a = rerank("dl19", "dl19", &by_name);
    assert!(a.status.success(), "{}", stderr(&a));
    let path_input = data.join("dl19/bm25-top100.json");
    let path_qrels = data.join("dl19/qrels.txt");
    let b = rerank(p(&path_input), p(&path_qrels), &by_path);
    assert!(b.status.success(), "{}", stderr(&b));
    assert_eq!(stdout(&a), stdout(&b));
    assert_eq!(
        std::fs::read(&by_name).unwrap(),
        std::fs::read(&by_path).unwrap()
    );

    // eval with names: BM25's published figure.
    let e = firstrank_with_data(
        &data,
        &[
            "eval",
            "--qrels",
            "dl19",
            "-m",
            "nDCG@10",
            "--trec-eval-format",
            "dl19",
        ],
    );
    assert!(e.status.success(), "{}", stderr(&e));
    assert!(
        (trec_metric(&stdout(&e), "ndcg_cut_10") - 0.5058).abs() < 1e-4,
        "{}",
        stdout(&e)
    );
    // SPLADE++ by --first-stage; an unknown first stage or name is a clear error.
    let sp = tmp.path().join("splade.trec");
    let o = firstrank_with_data(
        &data,
        &[
            "rerank",
            "-q",
            "--input",
            "dl20",
            "--first-stage",
            "splade",
            "--output",
            p(&sp),
            "--diagnostic-scorer",
            "reverse",
            "--limit",
            "2",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = firstrank_with_data(
        &data,
        &[
            "rerank",
            "-q",
            "--input",
            "dl19",
            "--first-stage",
            "dense",
            "--output",
            p(&sp),
            "--diagnostic-scorer",
            "reverse",
        ],
    );
    assert!(
        !o.status.success() && stderr(&o).contains("bm25 or splade"),
        "{}",
        stderr(&o)
    );
    let o = firstrank_with_data(&data, &["eval", "--qrels", "dl99", "x.trec"]);
    assert!(
        !o.status.success() && stderr(&o).contains("firstrank data list"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn data_list_and_path_show_the_offline_folder() {
    let Some(s) = shared() else { return };
    let data = s.join("data");
    let o = firstrank_with_data(&data, &["data", "list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for name in ["dl19", "dl20", "dl21", "dl22", "covid", "news"] {
        assert!(text.contains(name), "{text}");
    }
    assert!(
        text.contains(&data.join("dl19/bm25-top100.json").display().to_string()),
        "{text}"
    );
    assert!(
        text.contains("not fetched"),
        "dl21 is not in the shared data:\n{text}"
    );
    let o = firstrank_with_data(&data, &["data", "path", "dl19"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), data.join("dl19").display().to_string());
}

#[test]
fn pipeline_configs_take_dataset_names_for_topics_and_qrels() {
    let Some(s) = shared() else { return };
    let data = s.join("data");
    let tmp = tempfile::tempdir().unwrap();
    let index = tmp.path().join("index");
    let pool = data.join("dl19/bm25-top100.json");
    let o = firstrank_with_data(
        &data,
        &["index", "-q", "--corpus", p(&pool), "--index", p(&index)],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let stages = "[[stages]]\nstage = \"retrieve\"\nmethod = \"bm25\"\nk = 20\n\
                  [[stages]]\nstage = \"rerank\"\ndiagnostic_scorer = \"oracle\"\nstrategy = \"single\"\nwindow = 20\n";
    let run = |name: &str, topics: &str, qrels: &str| {
        let config = tmp.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "index = {:?}\ntopics = {topics:?}\noutput_dir = {name:?}\nlimit = 5\n\
                 [eval]\nqrels = {qrels:?}\nmetrics = [\"nDCG@10\"]\n{stages}",
                p(&index)
            ),
        )
        .unwrap();
        let o = firstrank_with_data(&data, &["pipeline", "-q", "--config", p(&config)]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        std::fs::read(tmp.path().join(name).join("02-rerank-oracle.trec")).unwrap()
    };
    let by_name = run("names", "dl19", "dl19");
    let by_path = run("paths", p(&pool), p(&data.join("dl19/qrels.txt")));
    assert!(!by_name.is_empty());
    assert_eq!(by_name, by_path, "names and paths gave different runs");
}
