//! `--mode pointwise` against transformers on a tiny random Qwen3 with its
//! own tokenizer (scripts/make-tiny-pointwise.py): for Qwen3-Reranker's
//! template and the generic chat one, every (query, document) prompt's token
//! ids equal transformers' and p(yes) is within 1e-4, one by one and as a
//! window through the prefix cache; a template whose answers are not single
//! tokens is refused at load.

use std::path::{Path, PathBuf};

use candle_core::Device;
use firstrank_core::pointwise::PointwiseTemplate;
use firstrank_core::prompt::PromptOptions;
use firstrank_core::window::{ScoreScale, WindowScorer};
use firstrank_core::{Candidate, Query};
use firstrank_models::reranker::{LlmReranker, RerankerConfig, ScoringMode};
use firstrank_models::transformer::WeightMode;
use serde_json::Value;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-qwen3-reranker")
}

fn expected() -> Vec<Value> {
    let text = std::fs::read_to_string(fixture().join("expected.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn reranker(template: &str) -> LlmReranker {
    let config = RerankerConfig {
        mode: ScoringMode::Pointwise,
        weights: WeightMode::DequantizedF32,
        options: PromptOptions::rank_llm(),
        pointwise: PointwiseTemplate::resolve(template).unwrap(),
        ..RerankerConfig::default()
    };
    LlmReranker::load(fixture().to_str().unwrap(), config, &Device::Cpu).unwrap()
}

fn doc(text: &str, i: usize) -> Candidate {
    Candidate {
        docid: format!("d{i}"),
        score: 0.0,
        title: None,
        text: text.to_string(),
    }
}

#[test]
fn pointwise_scores_match_transformers_for_both_templates() {
    let cases = expected();
    for template in ["qwen3_reranker", "yes_no"] {
        let mut r = reranker(template);
        assert_eq!(r.score_scale(), ScoreScale::Probability);
        let mine: Vec<&Value> = cases
            .iter()
            .filter(|c| c["template"] == template && c.get("instruction").is_none())
            .collect();
        assert!(mine.len() >= 4);
        for c in &mine {
            let query = Query {
                qid: "q".into(),
                text: c["query"].as_str().unwrap().into(),
                instruction: None,
            };
            let d = doc(c["document"].as_str().unwrap(), 0);
            let (ids, cut) = r.pointwise_input(&query, &d).unwrap();
            let want: Vec<u32> = c["input_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(ids, want, "{template}: prompt ids of {:?}", c["document"]);
            assert!(!cut);
            let got = r.score_window(&query, &[d]).unwrap()[0];
            let p = c["p_yes"].as_f64().unwrap() as f32;
            assert!((got - p).abs() < 1e-4, "{template}: {got} vs {p}");
        }
        // A window of one query's documents: the shared prefix comes from the cache.
        let query_text = mine[0]["query"].as_str().unwrap();
        let same: Vec<&&Value> = mine.iter().filter(|c| c["query"] == query_text).collect();
        let window: Vec<Candidate> = same
            .iter()
            .enumerate()
            .map(|(i, c)| doc(c["document"].as_str().unwrap(), i))
            .collect();
        let query = Query {
            qid: "q".into(),
            text: query_text.into(),
            instruction: None,
        };
        let before = r.stats().cached_prompt_tokens;
        let scores = r.score_window(&query, &window).unwrap();
        for (s, c) in scores.iter().zip(&same) {
            assert!((s - c["p_yes"].as_f64().unwrap() as f32).abs() < 1e-4);
        }
        assert!(
            r.stats().cached_prompt_tokens > before,
            "the query prefix is reused"
        );
    }
}

#[test]
fn a_template_whose_answers_are_not_single_tokens_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        "name = \"multi\"\ninput = \"{query} {document}\"\nyes = \"absolutely\"\nno = \"no\"\n",
    )
    .unwrap();
    let config = RerankerConfig {
        mode: ScoringMode::Pointwise,
        weights: WeightMode::DequantizedF32,
        pointwise: PointwiseTemplate::resolve(path.to_str().unwrap()).unwrap(),
        ..RerankerConfig::default()
    };
    let err = LlmReranker::load(fixture().to_str().unwrap(), config, &Device::Cpu)
        .err()
        .unwrap();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("`absolutely`") && msg.contains("single tokens"),
        "{msg}"
    );
}
