//! `firstrank pipeline` end to end on a twelve-passage corpus written into a
//! temp dir: a BM25 → oracle-rerank run (no model needed), a dense → oracle
//! feedback → dense run with the real MiniLM encoder (skipped unless the
//! `minilm` model is cached or FIRSTRANK_FETCH_MODELS=1), and bad configs
//! (non-zero exit, a message naming the config and the stage, no runs written).

mod support;

use std::path::{Path, PathBuf};

use support::{firstrank, model_available, p, stderr};

const DOCS: [(&str, &str); 12] = [
    (
        "d1",
        "The life cycle of a flea can last anywhere from 20 days to an entire year.",
    ),
    (
        "d2",
        "Fleas lay eggs that hatch into larvae, then pupae, then adult fleas.",
    ),
    (
        "d3",
        "Paris is the capital and most populous city of France.",
    ),
    (
        "d4",
        "Spruce trees have needle-like leaves and hanging cones.",
    ),
    (
        "d5",
        "The stock market closed higher on Tuesday after a volatile week.",
    ),
    (
        "d6",
        "A recipe for chocolate cake with three layers and cream.",
    ),
    (
        "d7",
        "Adult fleas live on a host animal such as a cat or a dog and feed on blood.",
    ),
    (
        "d8",
        "Flea larvae avoid light and feed on organic debris in carpets.",
    ),
    ("d9", "The Eiffel Tower in Paris was completed in 1889."),
    (
        "d10",
        "Pet owners treat cats for fleas with monthly topical medicine.",
    ),
    (
        "d11",
        "Mount Everest is the highest mountain above sea level.",
    ),
    (
        "d12",
        "Interest rates influence how the stock market moves.",
    ),
];

struct Bed {
    dir: tempfile::TempDir,
}

impl Bed {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let corpus: Vec<String> = DOCS
            .iter()
            .map(|(id, t)| serde_json::json!({"docid": id, "text": t}).to_string())
            .collect();
        std::fs::write(dir.path().join("corpus.jsonl"), corpus.join("\n")).unwrap();
        std::fs::write(
            dir.path().join("topics.tsv"),
            "q1\thow long do fleas live\nq2\twhat is the capital of france\n",
        )
        .unwrap();
        // q1: d7 (fleas live on a host) is the most relevant; d1 relevant too.
        std::fs::write(
            dir.path().join("qrels.txt"),
            "q1 0 d7 3\nq1 0 d1 2\nq1 0 d5 0\nq2 0 d3 3\nq2 0 d9 0\n",
        )
        .unwrap();
        Bed { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn index(&self, dense: bool) -> PathBuf {
        let idx = self.path(if dense { "idx-dense" } else { "idx" });
        let corpus = self.path("corpus.jsonl");
        let mut args = vec!["-q", "index", "--corpus", p(&corpus), "--index", p(&idx)];
        if dense {
            args.push("--dense");
        }
        let o = firstrank(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        idx
    }

    /// Writes `pipeline.toml` with `index`, topics, qrels and `body`.
    fn config(&self, index: &Path, body: &str) -> PathBuf {
        let text = format!(
            "index = {:?}\ntopics = \"topics.tsv\"\noutput_dir = \"out\"\n[eval]\nqrels = \"qrels.txt\"\n{body}",
            p(index)
        );
        let c = self.path("pipeline.toml");
        std::fs::write(&c, text).unwrap();
        c
    }
}

fn summary(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
}

fn metric(summary: &serde_json::Value, stage: usize, name: &str) -> f64 {
    summary["stages"][stage]["metrics"][name]
        .as_f64()
        .unwrap_or_else(|| panic!("no {name} for stage {stage} in {summary}"))
}

/// docids of `qid` in a TREC run, in rank order.
fn ranking(run: &Path, qid: &str) -> Vec<String> {
    let text = std::fs::read_to_string(run).unwrap();
    let mut rows: Vec<(usize, String)> = text
        .lines()
        .filter_map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            (c[0] == qid).then(|| (c[3].parse().unwrap(), c[2].to_string()))
        })
        .collect();
    rows.sort();
    rows.into_iter().map(|(_, d)| d).collect()
}

#[test]
fn bm25_then_oracle_rerank_reaches_the_ideal_order() {
    let bed = Bed::new();
    let idx = bed.index(false);
    let cfg = bed.config(
        &idx,
        "[[stages]]\nstage = \"retrieve\"\nmethod = \"bm25\"\nk = 10\n\
         [[stages]]\nstage = \"rerank\"\ndiagnostic_scorer = \"oracle\"\nstrategy = \"single\"\nwindow = 10\n",
    );
    let o = firstrank(&["pipeline", "--config", p(&cfg)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("nDCG@10")
            && table.contains("1 retrieve-bm25")
            && table.contains("2 rerank-oracle"),
        "{table}"
    );
    let out = bed.path("out");
    let s = summary(&out);
    // Every passage judged relevant shares a (stemmed) word with its query, so
    // BM25 retrieves it; the oracle then puts them in the ideal order: nDCG@10 = 1.
    assert_eq!(metric(&s, 1, "nDCG@10"), 1.0, "{s}");
    assert!(
        metric(&s, 0, "nDCG@10") < 1.0,
        "BM25 alone is not ideal here: {s}"
    );
    let run = out.join("02-rerank-oracle.trec");
    assert_eq!(ranking(&run, "q1")[..2], ["d7", "d1"]);
    assert_eq!(ranking(&run, "q2")[0], "d3");
    assert!(out.join("01-retrieve-bm25.trec").exists());
    // No temp files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn dense_oracle_feedback_moves_the_relevant_passage_up() {
    if !model_available("minilm", "dense feedback") {
        return;
    }
    let bed = Bed::new();
    let idx = bed.index(true);
    // A query far beyond MiniLM's 256 word pieces is cut (with a warning), not an error.
    let long = "fleas ".repeat(400);
    std::fs::write(
        bed.path("topics.tsv"),
        format!("q1\thow long do fleas live\nq2\twhat is the capital of france\nq3\t{long}\n"),
    )
    .unwrap();
    let cfg = bed.config(
        &idx,
        "[[stages]]\nstage = \"retrieve\"\nmethod = \"dense\"\nk = 12\n\
         [[stages]]\nstage = \"feedback\"\nsignal = \"oracle\"\ntop_k = 12\nranknet_steps = 50\nranknet_lr = 0.01\n\
         [[stages]]\nstage = \"retrieve\"\nmethod = \"dense\"\nk = 12\n\
         [[stages]]\nstage = \"feedback\"\nsignal = \"dense\"\ntop_k = 12\n\
         [[stages]]\nstage = \"retrieve\"\nmethod = \"hybrid\"\nk = 12\n",
    );
    let o = firstrank(&["pipeline", "--config", p(&cfg)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("query q3: reaches the dense encoder's limit of 256 word pieces"),
        "{}",
        stderr(&o)
    );
    let out = bed.path("out");
    let before = ranking(&out.join("01-retrieve-dense.trec"), "q1");
    let after = ranking(&out.join("03-retrieve-dense.trec"), "q1");
    let pos = |r: &[String], d: &str| r.iter().position(|x| x == d).unwrap();
    assert_eq!(before.len(), 12);
    assert!(pos(&before, "d7") > 0, "d7 already first: {before:?}");
    assert!(
        pos(&after, "d7") < pos(&before, "d7"),
        "oracle feedback should move d7 up: {before:?} -> {after:?}"
    );
    let s = summary(&out);
    assert!(metric(&s, 2, "nDCG@10") > metric(&s, 0, "nDCG@10"), "{s}");
    // The feedback report has one line per query with a RankNet stage that lowered the loss.
    let report = std::fs::read_to_string(out.join("02-feedback-oracle.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = report
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    let q1 = lines.iter().find(|l| l["qid"] == "q1").unwrap();
    assert!(
        q1["ranknet"]["loss_end"].as_f64() < q1["ranknet"]["loss_start"].as_f64(),
        "{q1}"
    );
    assert!(out.join("05-retrieve-hybrid.trec").exists());
}

/// Runs a bad config: non-zero exit, the message contains every `needle`,
/// and no run was written.
fn rejects(bed: &Bed, index: &Path, body: &str, needles: &[&str]) {
    let cfg = bed.config(index, body);
    let o = firstrank(&["pipeline", "--config", p(&cfg)]);
    let err = stderr(&o);
    assert!(!o.status.success(), "accepted:\n{body}");
    for n in needles {
        assert!(err.contains(n), "expected `{n}` in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !bed.path("out").exists(),
        "output written for a bad config:\n{body}"
    );
}

#[test]
fn bad_configs_are_clear_errors() {
    let bed = Bed::new();
    let idx = bed.index(false);
    let retrieve = "[[stages]]\nstage = \"retrieve\"\nmethod = \"bm25\"\n";
    rejects(
        &bed,
        &idx,
        &format!("{retrieve}[[stages]]\nstage = \"rerankk\"\n"),
        &["pipeline.toml", "stages[1]", "unknown stage `rerankk`"],
    );
    rejects(
        &bed,
        &idx,
        &format!("{retrieve}[[stages]]\nstage = \"feedback\"\nsignal = \"psychic\"\n{retrieve}"),
        &["stages[1]", "unknown feedback signal `psychic`"],
    );
    rejects(
        &bed,
        &idx,
        &format!("{retrieve}[[stages]]\nstage = \"feedback\"\nsignal = \"reranker\"\n[[stages]]\nstage = \"retrieve\"\nmethod = \"dense\"\n"),
        &["stages[1]", "needs a rerank stage"],
    );
    rejects(
        &bed,
        &idx,
        &format!("{retrieve}[[stages]]\nstage = \"feedback\"\nsignal = \"dense\"\n{retrieve}"),
        &["stages[2]", "not \"bm25\""],
    );
    rejects(
        &bed,
        &idx,
        &format!("{retrieve}[[stages]]\nstage = \"feedback\"\nsignal = \"dense\"\n"),
        &["must be followed by a retrieve stage"],
    );
    rejects(
        &bed,
        &idx,
        &format!(
            "{retrieve}[[stages]]\nstage = \"rerank\"\nmodel = \"smollm2\"\nweights = \"f64\"\n"
        ),
        &["stages[1]", "model options", "f64"],
    );
    rejects(
        &bed,
        &idx,
        &format!(
            "{retrieve}[[stages]]\nstage = \"rerank\"\nmodel = \"smollm2\"\nteleport = true\n"
        ),
        &["stages[1]", "--teleport"],
    );
    rejects(
        &bed,
        &idx,
        &format!("{retrieve}k = 0\n"),
        &["stages[0]", "`k` must be at least 1"],
    );
    rejects(
        &bed,
        &idx,
        &format!("limit = \"all\"\n{retrieve}"),
        &["pipeline.toml", "limit"],
    );
    // The oracle needs qrels.
    let c = bed.path("pipeline.toml");
    std::fs::write(
        &c,
        format!(
            "index = {:?}\ntopics = \"topics.tsv\"\noutput_dir = \"out\"\n{retrieve}[[stages]]\nstage = \"feedback\"\nsignal = \"oracle\"\n[[stages]]\nstage = \"retrieve\"\nmethod = \"dense\"\n",
            p(&idx)
        ),
    )
    .unwrap();
    let o = firstrank(&["pipeline", "--config", p(&c)]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("needs qrels"), "{}", stderr(&o));
    // A missing index, and a BM25-only index asked for dense retrieval.
    rejects(
        &bed,
        &bed.path("no-such-index"),
        retrieve,
        &["no-such-index", "firstrank index"],
    );
    rejects(
        &bed,
        &idx,
        "[[stages]]\nstage = \"retrieve\"\nmethod = \"dense\"\n",
        &["dense part", "--dense"],
    );
    // A config that is not TOML names the line.
    rejects(&bed, &idx, "[[stages]\n", &["pipeline.toml", "line"]);
}
