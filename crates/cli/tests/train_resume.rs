//! `firstrank train --resume` after a crash gives the run an uninterrupted
//! one would have given: a run killed inside a checkpoint write (failure
//! injection: `FIRSTRANK_FAULT=checkpoint:<stage>:<n>` aborts the process
//! there) and a run killed with SIGKILL at a random moment both resume to a
//! byte-identical adapter. Deterministic recipe: no LoRA dropout, no NEFTune
//! noise, the example order from the seed. Needs the SmolLM2 model.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{firstrank, p, stderr};

/// Six 3-passage training lists, labelled from qrels written here.
fn lists(dir: &Path) -> std::path::PathBuf {
    let mut cands = String::new();
    let mut qrels = String::new();
    let topics = [
        (
            "q1",
            "how do bees make honey",
            [
                "The stock market fell.",
                "Bees evaporate nectar into honey.",
                "Paris is in France.",
            ],
        ),
        (
            "q2",
            "boiling point of water",
            [
                "Cats sleep a lot.",
                "Water boils at 100 degrees Celsius.",
                "Football has eleven players.",
            ],
        ),
        (
            "q3",
            "capital of japan",
            [
                "Tokyo is the capital of Japan.",
                "Rice is a grain.",
                "The Nile is long.",
            ],
        ),
        (
            "q4",
            "how long do fleas live",
            [
                "Paris has many museums.",
                "Bread needs yeast.",
                "A flea lives up to a year.",
            ],
        ),
        (
            "q5",
            "what is photosynthesis",
            [
                "Plants turn light into sugar by photosynthesis.",
                "Trains run on rails.",
                "Snow is cold.",
            ],
        ),
        (
            "q6",
            "largest ocean",
            [
                "Deserts are dry.",
                "The Pacific is the largest ocean.",
                "Chess has 64 squares.",
            ],
        ),
    ];
    for (qid, query, docs) in topics {
        let candidates: Vec<String> = docs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                format!(
                    r#"{{"docid":"{qid}d{i}","score":{},"doc":{{"contents":"{d}"}}}}"#,
                    3 - i
                )
            })
            .collect();
        cands.push_str(&format!(
            r#"{{"query":{{"qid":"{qid}","text":"{query}"}},"candidates":[{}]}}"#,
            candidates.join(",")
        ));
        cands.push('\n');
        // The relevant passage is the one that mentions the topic.
        let relevant = docs
            .iter()
            .position(|d| {
                query
                    .split(' ')
                    .filter(|w| w.len() > 3)
                    .any(|w| d.to_lowercase().contains(w))
            })
            .unwrap_or(0);
        qrels.push_str(&format!("{qid} 0 {qid}d{relevant} 2\n"));
    }
    std::fs::write(dir.join("cands.jsonl"), cands).unwrap();
    std::fs::write(dir.join("qrels.txt"), qrels).unwrap();
    let out = dir.join("lists.jsonl");
    let o = firstrank(&[
        "label",
        "-q",
        "--input",
        p(&dir.join("cands.jsonl")),
        "--teacher",
        "qrels",
        "--qrels",
        p(&dir.join("qrels.txt")),
        "--window",
        "3",
        "--lists-per-query",
        "1",
        "--output",
        p(&out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

/// `train` on `data` into `out` for 6 steps, a checkpoint every 2.
fn train_args<'a>(data: &'a Path, out: &'a Path, resume: bool) -> Vec<&'a str> {
    let mut a = vec![
        "train",
        "-q",
        "--model",
        "smollm2",
        "--data",
        p(data),
        "--output",
        p(out),
        "--lora-layers",
        "top:1",
        "--lora-rank",
        "4",
        "--lora-dropout",
        "0",
        "--neftune",
        "0",
        "--grad-accum",
        "1",
        "--micro-batch",
        "1",
        "--warmup",
        "1",
        "--lr",
        "1e-3",
        "--max-steps",
        "6",
        "--checkpoint-every",
        "2",
    ];
    if resume {
        a.push("--resume");
    }
    a
}

fn adapter_bytes(out: &Path) -> Vec<u8> {
    std::fs::read(out.join("adapter_model.safetensors")).unwrap()
}

fn checkpoint_step(out: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(out.join("checkpoint/state.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["step"].as_u64()
}

#[test]
fn a_killed_training_run_resumes_to_the_same_adapter() {
    if !support::model_available("smollm2", "the kill-and-resume test") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = lists(tmp.path());

    // The reference: 6 steps without interruption.
    let whole = tmp.path().join("whole");
    let o = firstrank(&train_args(&data, &whole, false));
    assert!(o.status.success(), "{}", stderr(&o));
    let reference = adapter_bytes(&whole);

    // Killed inside the second checkpoint (step 4), after its tensors were
    // written but before state.json: the step-2 checkpoint still stands.
    for stage in ["weights", "optimizer"] {
        let out = tmp.path().join(format!("fault-{stage}"));
        let o = assert_cmd::Command::cargo_bin("firstrank")
            .unwrap()
            .args(train_args(&data, &out, false))
            .env("FIRSTRANK_FAULT", format!("checkpoint:{stage}:2"))
            .output()
            .unwrap();
        assert!(!o.status.success(), "the fault did not stop the run");
        assert_eq!(checkpoint_step(&out), Some(2), "after a fault at {stage}");
        let o = firstrank(&train_args(&data, &out, true));
        assert!(o.status.success(), "resume after {stage}: {}", stderr(&o));
        assert!(
            adapter_bytes(&out) == reference,
            "resumed after a fault at {stage}: the adapter differs"
        );
        assert_eq!(checkpoint_step(&out), Some(6));
    }

    // SIGKILL at a moment picked from the clock, once a checkpoint exists.
    let out = tmp.path().join("killed");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("firstrank"))
        .args(train_args(&data, &out, false))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while checkpoint_step(&out).is_none() && started.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let extra = u64::from(
        std::time::SystemTime::now()
            .elapsed()
            .unwrap_or_default()
            .subsec_millis()
            + started.elapsed().subsec_millis(),
    ) % 700;
    std::thread::sleep(Duration::from_millis(extra));
    let finished_first = child.try_wait().unwrap().is_some();
    child.kill().ok();
    child.wait().unwrap();
    if !finished_first {
        let step = checkpoint_step(&out).expect("a checkpoint before the kill");
        assert!(step >= 2, "checkpoint at step {step}");
        let o = firstrank(&train_args(&data, &out, true));
        assert!(o.status.success(), "resume after SIGKILL: {}", stderr(&o));
    }
    assert!(
        adapter_bytes(&out) == reference,
        "resumed after SIGKILL: the adapter differs"
    );
}
