//! `firstrank rerank --resume` after a crash: a run aborted after any query
//! (failure injection: `FIRSTRANK_FAULT=rerank:<n>` aborts the process there,
//! as a kill -9 would) or killed with a real SIGKILL at moments spread over
//! the run (4,000 queries), and resumed, gives a TREC run and a JSONL
//! byte-identical to an uninterrupted run; a resume with other settings is refused, naming
//! them (the lock against a second writer is tested in core's formats tests).
//! Uses the model-free `reverse` diagnostic scorer.

mod support;

use std::path::Path;
use std::process::Output;

use support::{p, stderr};

/// Twelve queries of five to nine candidates each, in request JSONL.
fn input(dir: &Path) -> std::path::PathBuf {
    input_of(dir, 12)
}

/// `n` queries of five to nine candidates each, in request JSONL.
fn input_of(dir: &Path, n: usize) -> std::path::PathBuf {
    let mut text = String::new();
    for q in 0..n {
        let cands: Vec<String> = (0..5 + q % 5)
            .map(|c| {
                format!(
                    r#"{{"docid": "d{q}-{c}", "score": {}, "doc": {{"contents": "passage {c} of query {q}"}}}}"#,
                    20 - c
                )
            })
            .collect();
        text.push_str(&format!(
            r#"{{"query": {{"text": "query {q}", "qid": "q{q}"}}, "candidates": [{}]}}"#,
            cands.join(", ")
        ));
        text.push('\n');
    }
    let path = dir.join("input.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

fn rerank(dir: &Path, input: &Path, name: &str, extra: &[&str], fault: Option<usize>) -> Output {
    let trec = dir.join(format!("{name}.trec"));
    let jsonl = dir.join(format!("{name}.jsonl"));
    let mut args = vec![
        "rerank",
        "-q",
        "--input",
        p(input),
        "--output",
        p(&trec),
        "--output-jsonl",
        p(&jsonl),
        "--diagnostic-scorer",
        "reverse",
        "--window",
        "3",
        "--stride",
        "2",
    ];
    args.extend_from_slice(extra);
    let mut cmd = assert_cmd::Command::cargo_bin("firstrank").unwrap();
    cmd.args(&args);
    match fault {
        Some(n) => cmd.env("FIRSTRANK_FAULT", format!("rerank:{n}")),
        None => cmd.env_remove("FIRSTRANK_FAULT"),
    };
    cmd.output().unwrap()
}

#[test]
fn an_aborted_rerank_resumes_to_the_same_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = input(dir);
    let o = rerank(dir, &input, "ref", &[], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let want_trec = std::fs::read(dir.join("ref.trec")).unwrap();
    let want_jsonl = std::fs::read(dir.join("ref.jsonl")).unwrap();
    assert_eq!(String::from_utf8_lossy(&want_jsonl).lines().count(), 12);

    for (i, kill_after) in [1usize, 5, 11].into_iter().enumerate() {
        let name = format!("run{i}");
        let o = rerank(dir, &input, &name, &[], Some(kill_after));
        assert!(!o.status.success(), "the fault did not stop the run");
        assert!(stderr(&o).contains("FIRSTRANK_FAULT"), "{}", stderr(&o));
        assert!(!dir.join(format!("{name}.trec")).exists());
        assert!(dir.join(format!("{name}.trec.partial")).exists());
        // Killed again later in the resumed run, then resumed to the end.
        let o = rerank(dir, &input, &name, &["--resume"], Some(1));
        assert!(!o.status.success());
        let o = rerank(dir, &input, &name, &["--resume"], None);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(
            std::fs::read(dir.join(format!("{name}.trec"))).unwrap(),
            want_trec,
            "TREC run after an abort at query {kill_after}"
        );
        assert_eq!(
            std::fs::read(dir.join(format!("{name}.jsonl"))).unwrap(),
            want_jsonl,
            "JSONL after an abort at query {kill_after}"
        );
        for leftover in [
            ".trec.partial",
            ".jsonl.partial",
            ".trec.lock",
            ".trec.resume.json",
        ] {
            assert!(
                !dir.join(format!("{name}{leftover}")).exists(),
                "{name}{leftover} left behind"
            );
        }
    }
}

#[test]
fn a_resume_with_other_settings_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = input(dir);
    let o = rerank(dir, &input, "run", &[], Some(4));
    assert!(!o.status.success());
    let o = rerank(dir, &input, "run", &["--resume", "--passes", "2"], None);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("cannot resume") && err.contains("passes: 1 then, 2 now"),
        "{err}"
    );
    assert!(!err.contains("stride"), "{err}");
    // Another input file: refused too (the same file fixed in place resumes).
    let other = dir.join("other.jsonl");
    std::fs::copy(&input, &other).unwrap();
    let o = rerank(dir, &other, "run", &["--resume"], None);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("input:"), "{}", stderr(&o));
    // Starting over without --resume works.
    let o = rerank(dir, &input, "run", &[], None);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[cfg(unix)]
#[test]
fn a_rerank_killed_with_sigkill_at_random_moments_resumes_to_the_same_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = input_of(dir, 4000);
    let started = std::time::Instant::now();
    let o = rerank(dir, &input, "ref", &[], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let whole = started.elapsed();
    let want_trec = std::fs::read(dir.join("ref.trec")).unwrap();
    let want_jsonl = std::fs::read(dir.join("ref.jsonl")).unwrap();
    let bin = assert_cmd::cargo::cargo_bin("firstrank");
    let mut killed_mid_run = 0;
    // Kill points spread over the run (fixed fractions: reproducible).
    for (i, fraction) in [0.15f64, 0.4, 0.7].into_iter().enumerate() {
        let name = format!("kill{i}");
        let (trec, jsonl) = (
            dir.join(format!("{name}.trec")),
            dir.join(format!("{name}.jsonl")),
        );
        let mut resume = false;
        for attempt in 0..2 {
            let mut cmd = std::process::Command::new(&bin);
            cmd.args(["rerank", "-q", "--input", p(&input), "--output", p(&trec)])
                .args([
                    "--output-jsonl",
                    p(&jsonl),
                    "--diagnostic-scorer",
                    "reverse",
                ])
                .args(["--window", "3", "--stride", "2"]);
            if resume {
                cmd.arg("--resume");
            }
            let mut child = cmd.spawn().unwrap();
            std::thread::sleep(whole.mul_f64(fraction / (attempt + 1) as f64));
            if child.try_wait().unwrap().is_none() {
                killed_mid_run += 1;
            }
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
            resume = true;
        }
        let o = rerank(dir, &input, &name, &["--resume"], None);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            std::fs::read(&trec).unwrap() == want_trec,
            "TREC run after kills at {fraction}"
        );
        assert!(
            std::fs::read(&jsonl).unwrap() == want_jsonl,
            "JSONL after kills at {fraction}"
        );
    }
    assert!(
        killed_mid_run >= 3,
        "only {killed_mid_run} of 6 kills hit a running process (the run took {whole:?})"
    );
}

#[test]
fn shards_concatenated_in_order_are_the_single_process_output() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = input_of(dir, 13);
    let o = rerank(dir, &input, "whole", &[], None);
    assert!(o.status.success(), "{}", stderr(&o));
    for n in [1usize, 3, 5] {
        // N processes at once, as an Indexed Job runs them.
        let children: Vec<_> = (0..n)
            .map(|i| {
                let name = format!("s{n}-{i}");
                let shard = format!("{i}/{n}");
                let (dir, input) = (dir.to_path_buf(), input.clone());
                std::thread::spawn(move || rerank(&dir, &input, &name, &["--shard", &shard], None))
            })
            .collect();
        for c in children {
            let o = c.join().unwrap();
            assert!(o.status.success(), "{}", stderr(&o));
        }
        for ext in ["trec", "jsonl"] {
            let merged: Vec<u8> = (0..n)
                .flat_map(|i| std::fs::read(dir.join(format!("s{n}-{i}.{ext}"))).unwrap())
                .collect();
            assert!(
                merged == std::fs::read(dir.join(format!("whole.{ext}"))).unwrap(),
                "{n} shards, {ext}"
            );
        }
    }
    let o = rerank(dir, &input, "bad", &["--shard", "3/3"], None);
    assert!(
        !o.status.success() && stderr(&o).contains("0 <= I < N"),
        "{}",
        stderr(&o)
    );
}
