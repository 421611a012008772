//! The all-MiniLM-L6-v2 sentence encoder against the sentence-transformers
//! fixture (shared/fixtures/all-minilm-l6-v2/embeddings.json): token ids
//! identical, every embedding component within 1e-4, unit norms, and batched
//! (padded) encoding equal to one-at-a-time encoding.

use std::path::PathBuf;

use candle_core::Device;
use firstrank_models::embed::SentenceEncoder;
use firstrank_models::fetch;
use serde_json::Value;

fn shared_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("FIRSTRANK_SHARED") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    };
    dir.join("fixtures").is_dir().then_some(dir)
}

fn model_dir() -> Option<PathBuf> {
    if std::env::var("FIRSTRANK_FETCH_MODELS").as_deref() == Ok("1") {
        return Some(fetch::ensure_model("minilm").expect("fetching the model"));
    }
    let p = fetch::default_model("minilm")?.cached_path();
    p.exists().then_some(p)
}

fn setup() -> Option<(SentenceEncoder, Value)> {
    let Some(shared) = shared_dir() else {
        firstrank_core::testing::skip_or_fail("shared/fixtures not found (set FIRSTRANK_SHARED)");
        return None;
    };
    let Some(dir) = model_dir() else {
        firstrank_core::testing::skip_or_fail(
            "model minilm not in the cache (set FIRSTRANK_FETCH_MODELS=1 to fetch it)",
        );
        return None;
    };
    let path = shared.join("fixtures/all-minilm-l6-v2/embeddings.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let enc = SentenceEncoder::load(&dir, &Device::Cpu).unwrap();
    Some((enc, fixture))
}

fn as_f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn matches_sentence_transformers_fixture() {
    let Some((enc, fixture)) = setup() else {
        return;
    };
    assert_eq!(enc.dim(), 384);
    assert_eq!(
        enc.max_seq_length() as u64,
        fixture["max_seq_length"].as_u64().unwrap()
    );
    let sentences = fixture["sentences"].as_array().unwrap();
    assert_eq!(sentences.len(), 10);
    let texts: Vec<&str> = sentences
        .iter()
        .map(|s| s["text"].as_str().unwrap())
        .collect();
    for (s, text) in sentences.iter().zip(&texts) {
        let want: Vec<u32> = s["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(enc.tokenize(text).unwrap(), want, "input_ids of {text:?}");
    }
    let got = enc.encode(&texts).unwrap();
    let mut max_diff = 0f32;
    for ((s, text), e) in sentences.iter().zip(&texts).zip(&got) {
        let want = as_f32s(&s["embedding"]);
        assert_eq!(e.len(), want.len());
        let diff = e
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let norm = e.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cos: f32 = e.iter().zip(&want).map(|(a, b)| a * b).sum();
        eprintln!(
            "{:<40} max|diff| {diff:.2e}  norm {norm:.7}  cos {cos:.8}",
            format!("{:?}", text.chars().take(36).collect::<String>())
        );
        assert!(diff < 1e-4, "{text:?}: max component difference {diff}");
        assert!((norm - 1.0).abs() < 1e-5, "{text:?}: norm {norm}");
        max_diff = max_diff.max(diff);
    }
    eprintln!("max abs component difference over the fixture: {max_diff:.3e}");
}

#[test]
fn batched_equals_single() {
    let Some((enc, fixture)) = setup() else {
        return;
    };
    let texts: Vec<&str> = fixture["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["text"].as_str().unwrap())
        .collect();
    // One padded batch holding every length (2..256 tokens) at once.
    let batched = enc.encode(&texts).unwrap();
    let mut max_diff = 0f32;
    for (text, b) in texts.iter().zip(&batched) {
        let single = enc.encode(&[text]).unwrap().remove(0);
        let diff = single
            .iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "{text:?}: batched vs single differ by {diff}");
        max_diff = max_diff.max(diff);
    }
    eprintln!("max abs difference batched vs single: {max_diff:.3e}");
    // Order is preserved whatever the batch size.
    let small = SentenceEncoder::load(&model_dir().unwrap(), &Device::Cpu)
        .unwrap()
        .with_batch_size(3)
        .encode(&texts)
        .unwrap();
    for (a, b) in small.iter().zip(&batched) {
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5);
    }
    assert!(enc.encode(&[]).unwrap().is_empty());
}

#[test]
fn cached_teacher_scores_equal_fresh_ones() {
    use firstrank_models::embed::BiEncoderScorer;
    let Some((encoder, fixture)) = setup() else {
        return;
    };
    let texts: Vec<String> = fixture["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["text"].as_str().unwrap().to_string())
        .collect();
    let candidate = |i: usize| firstrank_core::Candidate {
        docid: format!("d{i}"),
        score: 0.0,
        title: None,
        text: texts[i % texts.len()].clone(),
    };
    let teacher = BiEncoderScorer { encoder };
    let mut cache = std::collections::HashMap::new();
    // Two queries over overlapping pools, one passage repeated within a pool:
    // the second call encodes only the passages the first did not.
    let pools: [Vec<_>; 2] = [
        (0..4).chain([1]).map(candidate).collect(),
        (2..7).map(candidate).collect(),
    ];
    for (query, pool) in ["what is a bi-encoder", "passage ranking"]
        .iter()
        .zip(&pools)
    {
        let fresh = teacher.scores(query, pool).unwrap();
        let cached = teacher.scores_cached(query, pool, &mut cache).unwrap();
        assert_eq!(fresh.len(), cached.len());
        for (a, b) in fresh.iter().zip(&cached) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
    let distinct: std::collections::HashSet<&str> =
        pools.iter().flatten().map(|c| c.text.as_str()).collect();
    assert_eq!(cache.len(), distinct.len());
}
