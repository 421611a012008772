//! Dense and hybrid retrieval with the real all-MiniLM-L6-v2 encoder on a
//! six-passage corpus: scores equal the encoder's own inner products, the
//! on-topic passage comes first, hybrid equals RRF of the two runs, and a
//! dense part can be added to a BM25-only index. Skipped when the `minilm`
//! model is not cached (FIRSTRANK_FETCH_MODELS=1 fetches it).

use std::path::PathBuf;

use candle_core::Device;
use firstrank_core::Query;
use firstrank_models::embed::SentenceEncoder;
use firstrank_models::fetch;
use firstrank_retrieval::{
    add_dense_index, build_index, rrf, DenseOptions, IndexOptions, Method, RetrieveOptions,
    Retriever,
};

fn model_dir() -> Option<PathBuf> {
    if std::env::var("FIRSTRANK_FETCH_MODELS").as_deref() == Ok("1") {
        return Some(fetch::ensure_model("minilm").expect("fetching the model"));
    }
    let p = fetch::default_model("minilm")?.cached_path();
    p.exists().then_some(p)
}

const DOCS: [(&str, &str); 6] = [
    (
        "p1",
        "The life cycle of a flea can last anywhere from 20 days to an entire year.",
    ),
    (
        "p2",
        "Paris is the capital and most populous city of France.",
    ),
    (
        "p3",
        "Spruce trees have needle-like leaves and hanging cones.",
    ),
    ("p4", "The stock market closed higher on Tuesday."),
    (
        "p5",
        "Fleas lay eggs that hatch into larvae, then pupae, then adults.",
    ),
    ("p6", "A recipe for chocolate cake with three layers."),
];

#[test]
fn dense_and_hybrid_retrieval() {
    let Some(dir) = model_dir() else {
        firstrank_core::testing::skip_or_fail(
            "model minilm not in the cache (set FIRSTRANK_FETCH_MODELS=1 to fetch it)",
        );
        return;
    };
    let encoder = SentenceEncoder::load(&dir, &Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("c.jsonl");
    let lines: Vec<String> = DOCS
        .iter()
        .map(|(id, t)| serde_json::json!({"docid": id, "text": t}).to_string())
        .collect();
    std::fs::write(&corpus, lines.join("\n")).unwrap();

    // BM25-only first, then the dense part added.
    let idx = tmp.path().join("idx");
    build_index(&corpus, &idx, &IndexOptions::default(), &mut |_| {}).unwrap();
    let opts = DenseOptions {
        encoder: &encoder,
        model_name: "all-MiniLM-L6-v2".into(),
        chunk: 4,
    };
    let mut dense_reports = 0;
    let m = add_dense_index(&idx, &opts, &mut |_| dense_reports += 1).unwrap();
    assert_eq!(m.dense.as_ref().unwrap().dim, 384);
    assert_eq!(dense_reports, 2, "one report per chunk of 4");

    let query = Query {
        qid: "q".into(),
        text: "how long is life cycle of flea".into(),
        instruction: None,
    };
    let retriever = Retriever::open(&idx)
        .unwrap()
        .with_encoder(encoder)
        .unwrap();
    let run = |method| {
        retriever
            .retrieve(
                std::slice::from_ref(&query),
                &RetrieveOptions {
                    method,
                    k: 6,
                    fusion_depth: 6,
                    ..Default::default()
                },
            )
            .unwrap()
            .remove(0)
    };
    let dense = run(Method::Dense);
    assert_eq!(dense.candidates.len(), 6);
    assert_eq!(dense.candidates[0].docid, "p1");
    assert_eq!(dense.candidates[1].docid, "p5");

    // Scores are the inner products of freshly computed embeddings.
    let enc = SentenceEncoder::load(&dir, &Device::Cpu).unwrap();
    let qv = enc.encode(&[query.text.as_str()]).unwrap().remove(0);
    for c in &dense.candidates {
        let text = DOCS.iter().find(|d| d.0 == c.docid).unwrap().1;
        assert_eq!(c.text, text);
        let dv = enc.encode(&[text]).unwrap().remove(0);
        let ip: f32 = qv.iter().zip(&dv).map(|(a, b)| a * b).sum();
        assert!(
            (c.score - ip as f64).abs() < 1e-5,
            "{}: {} vs {ip}",
            c.docid,
            c.score
        );
    }
    for w in dense.candidates.windows(2) {
        assert!(w[0].score >= w[1].score);
    }

    // Hybrid is RRF(60) of the BM25 and dense runs.
    let bm25 = run(Method::Bm25);
    let hybrid = run(Method::Hybrid);
    let ord = |docid: &str| DOCS.iter().position(|d| d.0 == docid).unwrap() as u64;
    let as_hits = |r: &firstrank_core::Request| -> Vec<(u64, f32)> {
        r.candidates
            .iter()
            .map(|c| (ord(&c.docid), c.score as f32))
            .collect()
    };
    let want = rrf(&[&as_hits(&bm25), &as_hits(&dense)], 60.0, 6);
    let got: Vec<(u64, f64)> = hybrid
        .candidates
        .iter()
        .map(|c| (ord(&c.docid), c.score))
        .collect();
    assert_eq!(got, want);
    assert_eq!(hybrid.candidates[0].docid, "p1");
}
