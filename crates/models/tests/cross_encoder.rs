//! The cross-encoder against transformers on a tiny random
//! BertForSequenceClassification and XLMRobertaForSequenceClassification
//! (scripts/make-tiny-cross-encoder.py): each
//! pair's logit and sigmoid score within 1e-4, alone and padded in one batch
//! (the truncated pair included), ranking through the WindowScorer seam, and
//! the checkpoints it refuses.

use std::path::{Path, PathBuf};

use candle_core::Device;
use firstrank_core::window::WindowScorer;
use firstrank_core::{Candidate, Query};
use firstrank_models::cross_encoder::{is_cross_encoder_dir, CrossEncoder, CrossEncoderScorer};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-cross-encoder")
}

/// The XLM-RoBERTa one (positions from pad_token_id + 1, no segment ids,
/// RoBERTa's classification head).
fn xlmr_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-xlmr-cross-encoder")
}

fn expected() -> Vec<serde_json::Value> {
    expected_of(&fixture())
}

fn expected_of(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn scores_match_transformers_alone_and_batched() {
    for dir in [fixture(), xlmr_fixture()] {
        scores_match(&dir);
    }
}

fn scores_match(dir: &Path) {
    let mut model = CrossEncoder::load(dir, &Device::Cpu).unwrap();
    assert!(is_cross_encoder_dir(dir));
    let cases = expected_of(dir);
    assert!(
        cases.iter().any(|c| c["tokens"] == 48),
        "one pair reaches the truncation"
    );
    for raw in [false, true] {
        model.raw_scores = raw;
        let key = if raw { "logit" } else { "score" };
        for c in &cases {
            let q = c["query"].as_str().unwrap();
            let d = c["document"].as_str().unwrap();
            let got = model.score(q, &[d]).unwrap()[0];
            let want = c[key].as_f64().unwrap() as f32;
            assert!(
                (got - want).abs() < 1e-4,
                "{}: {key} of ({q:?}, {d:?}): {got} vs {want}",
                dir.display()
            );
        }
        // The pairs of one query, padded into one forward pass.
        for q in ["how long do fleas live", "capital of france"] {
            let mine: Vec<&serde_json::Value> = cases.iter().filter(|c| c["query"] == q).collect();
            let docs: Vec<&str> = mine
                .iter()
                .map(|c| c["document"].as_str().unwrap())
                .collect();
            let long = cases.last().unwrap()["document"].as_str().unwrap();
            let mut with_long = docs.clone();
            with_long.push(long);
            let got = model.score(q, &with_long).unwrap();
            for (g, c) in got.iter().zip(&mine) {
                let want = c[key].as_f64().unwrap() as f32;
                assert!((g - want).abs() < 1e-4, "batched {key}: {g} vs {want}");
            }
        }
    }
}

#[test]
fn the_scorer_ranks_by_score() {
    let model = CrossEncoder::load(&fixture(), &Device::Cpu).unwrap();
    let cases = expected();
    let query = Query {
        qid: "q".into(),
        text: "how long do fleas live".into(),
        instruction: None,
    };
    let window: Vec<Candidate> = cases
        .iter()
        .filter(|c| c["query"] == "how long do fleas live")
        .enumerate()
        .map(|(i, c)| Candidate {
            docid: format!("d{i}"),
            score: 0.0,
            title: None,
            text: c["document"].as_str().unwrap().to_string(),
        })
        .collect();
    let mut scorer = CrossEncoderScorer { model };
    let scores = scorer.score_window(&query, &window).unwrap();
    assert_eq!(scores.len(), 2);
    let want: Vec<f32> = cases[..2]
        .iter()
        .map(|c| c["score"].as_f64().unwrap() as f32)
        .collect();
    for (g, w) in scores.iter().zip(&want) {
        assert!((g - w).abs() < 1e-4);
    }
}

#[test]
fn unsupported_checkpoints_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture().join(f), dir.path().join(f)).unwrap();
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("config.json")).unwrap())
            .unwrap();
    let write = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut c = config.clone();
        edit(&mut c);
        std::fs::write(dir.path().join("config.json"), c.to_string()).unwrap();
    };
    write(&|c| c["architectures"] = serde_json::json!(["ModernBertForSequenceClassification"]));
    let e = CrossEncoder::load(dir.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ModernBertForSequenceClassification") && e.contains("config.json"),
        "{e}"
    );
    // An XLM-RoBERTa head over a BERT config: the two disagree.
    write(&|c| c["architectures"] = serde_json::json!(["XLMRobertaForSequenceClassification"]));
    let e = CrossEncoder::load(dir.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("model_type `bert`"), "{e}");
    write(&|c| c["id2label"] = serde_json::json!({"0": "no", "1": "yes"}));
    let e = CrossEncoder::load(dir.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 labels"), "{e}");
    write(&|c| c["architectures"] = serde_json::json!(["BertModel"]));
    assert!(!is_cross_encoder_dir(dir.path()));
}

#[test]
fn a_long_document_takes_its_best_chunks_score_on_real_token_boundaries() {
    use firstrank_core::chunk::{chunk_request, start_chunked};
    use firstrank_core::window::{rerank_lockstep, WindowStrategy};
    let model = CrossEncoder::load(&fixture(), &Device::Cpu).unwrap();
    let sentences = [
        "Paris is the capital of France and a large city on the Seine.",
        "The adult flea lives for two to three months on a cat or a dog.",
        "A flea can jump many times its own length to reach a host.",
        "Museums, cafes and old bridges draw visitors all year round.",
    ];
    let long = sentences
        .iter()
        .cycle()
        .take(12)
        .cloned()
        .collect::<Vec<_>>()
        .join(" ");
    let scorer = CrossEncoderScorer { model };
    let request = firstrank_core::Request {
        query: Query {
            qid: "q".into(),
            text: "how long do fleas live".into(),
            instruction: None,
        },
        candidates: [long.as_str(), sentences[1]]
            .iter()
            .enumerate()
            .map(|(i, t)| Candidate {
                docid: format!("d{i}"),
                score: 0.0,
                title: None,
                text: t.to_string(),
            })
            .collect(),
    };
    let (counter, budget) = scorer.passage_budget().expect("a cross-encoder can chunk");
    let chunks = chunk_request(counter, budget, &request, 4).unwrap();
    assert_eq!(chunks[0].len(), 4, "the long document is cut into 4 chunks");
    assert_eq!(chunks[1].len(), 1, "the short one is read whole");
    // Chunks are verbatim pieces of the document, in order, the first at its start.
    assert!(long.starts_with(&chunks[0][0]));
    let mut from = 0;
    for c in &chunks[0] {
        let at = long[from..]
            .find(c.as_str())
            .expect("a chunk is verbatim text")
            + from;
        from = at + 1;
        assert!(counter.count_tokens(c).unwrap() <= budget.chunk_tokens(5) + 1);
    }
    let alone = scorer
        .model
        .score(
            "how long do fleas live",
            &chunks[0].iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .unwrap();
    let best = (0..alone.len())
        .max_by(|&a, &b| alone[a].total_cmp(&alone[b]).then(b.cmp(&a)))
        .unwrap();
    let mut scorer = scorer;
    let states = start_chunked(&scorer, &WindowStrategy::single(2), vec![request], 4).unwrap();
    let out = rerank_lockstep(&mut scorer, states).unwrap().remove(0);
    let doc = out.ranked.iter().find(|c| c.original_rank == 0).unwrap();
    assert_eq!(doc.chunk, Some(best));
    assert!((doc.model_score.unwrap() - alone[best]).abs() < 1e-5);
    assert_eq!(
        doc.candidate.text, long,
        "the output keeps the whole document"
    );
}
