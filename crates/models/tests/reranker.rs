//! End-to-end FIRST through the `WindowScorer` seam: a fixture window goes in
//! as candidates (raw passages), comes out as identifier logits. Checks the
//! whole chain (passage preparation with the model's tokenizer, chat template,
//! `[`, tokenization, one forward pass, identifier rows) against the
//! independent Python reference, and that FIRST never runs more than one
//! forward step per window.

mod transformer_support;

use candle_core::Device;
use firstrank_core::prompt::{PromptOptions, PromptTemplate};
use firstrank_core::window::{rerank, WindowScorer, WindowStrategy};
use firstrank_core::Request;
use firstrank_models::chat::ChatTemplate;
use firstrank_models::gguf_tokenizer::tokenizer_from_gguf_file;
use firstrank_models::reranker::{identifier_token_ids, LlmReranker, RerankerConfig, ScoringMode};
use firstrank_models::transformer::{CausalLm, WeightMode};
use transformer_support::{fixture, kendall_tau, model_path, window_request, SMOLLM2};

fn reranker(mode: ScoringMode) -> Option<LlmReranker> {
    let path = model_path(SMOLLM2.file)?;
    let tok = tokenizer_from_gguf_file(&path).unwrap();
    let chat = ChatTemplate::from_optional(tok.chat_template.as_deref(), "", "").unwrap();
    let model = CausalLm::load(&path, WeightMode::Quantized, &Device::Cpu).unwrap();
    let config = RerankerConfig {
        mode,
        weights: WeightMode::Quantized,
        template: PromptTemplate::rank_zephyr_alpha(),
        // The Python reference's passage preparation (100-token cut, no ftfy).
        options: PromptOptions::fixture(),
        context_size: None,
        max_window: 20,
        ..RerankerConfig::default()
    };
    Some(LlmReranker::assemble(model, tok, chat, config, "smollm2".into()).unwrap())
}

#[test]
fn first_window_matches_the_reference_end_to_end_with_one_forward_pass() {
    let Some(windows) = fixture(&SMOLLM2, "windows.json") else {
        return;
    };
    let Some(mut r) = reranker(ScoringMode::First) else {
        return;
    };
    let w = &windows["windows"][1];
    let (query, cands) = window_request(w);

    let (text, ids) = r.window_input(&query, &cands).unwrap();
    assert_eq!(
        text,
        w["prompt"].as_str().unwrap(),
        "prompt text differs from the reference"
    );
    let expected_ids: Vec<u32> = w["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(ids, expected_ids);

    let before = r.model().forward_calls();
    let scores = r.score_window(&query, &cands).unwrap();
    assert_eq!(
        r.model().forward_calls() - before,
        1,
        "FIRST must run exactly one forward step per window"
    );
    let expected: Vec<f64> = w["letter_logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let max_diff = scores
        .iter()
        .zip(&expected)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max);
    let exact = !r.model().bf16_prefill();
    if exact {
        assert!(
            max_diff < 1e-3,
            "identifier logits differ from the reference by {max_diff}"
        );
    } else {
        // bf16 prefill (AVX512-BF16 CPUs): close, and the same ranking up to
        // a swap of near ties.
        let expected32: Vec<f32> = expected.iter().map(|&x| x as f32).collect();
        let tau = kendall_tau(&scores, &expected32);
        assert!(
            max_diff < 0.5 && tau >= 0.9,
            "bf16 identifier logits: max |diff| {max_diff}, Kendall tau {tau}"
        );
    }

    // Through the strategy: a single window, ordered by those logits.
    let mut by_scores: Vec<usize> = (0..cands.len()).collect();
    by_scores.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let by_scores: Vec<String> = by_scores.iter().map(|&i| cands[i].docid.clone()).collect();
    let out = rerank(
        &mut r,
        &WindowStrategy::single(20),
        Request {
            query,
            candidates: cands,
        },
    )
    .unwrap();
    let order: Vec<&str> = out
        .ranked
        .iter()
        .map(|c| c.candidate.docid.as_str())
        .collect();
    assert_eq!(order, by_scores);
    if exact {
        let expected_order: Vec<&str> = w["order_docids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(order, expected_order);
    }
    assert_eq!(r.stats().windows, 2);
    assert_eq!(r.stats().forward_calls, 2);
}

#[test]
fn generation_mode_decodes_and_returns_a_full_permutation() {
    let Some(windows) = fixture(&SMOLLM2, "windows.json") else {
        return;
    };
    let Some(mut r) = reranker(ScoringMode::Generate) else {
        return;
    };
    let (query, mut cands) = window_request(&windows["windows"][1]);
    cands.truncate(5);
    let scores = r.score_window(&query, &cands).unwrap();
    let mut sorted = scores.clone();
    sorted.sort_by(f32::total_cmp);
    // Whatever the model says, the repaired permutation covers every candidate once.
    assert_eq!(sorted, vec![1.0, 2.0, 3.0, 4.0, 5.0]);
    let stats = r.stats();
    assert!(stats.generated_tokens >= 1, "{stats:?}");
    assert!(
        stats.forward_calls > 1,
        "generation decodes token by token: {stats:?}"
    );
}

#[test]
fn identifiers_that_are_not_one_token_are_rejected_at_load_time() {
    let Some(path) = model_path(SMOLLM2.file) else {
        return;
    };
    let tok = tokenizer_from_gguf_file(&path).unwrap();
    let alpha: Vec<String> = (b'A'..=b'T').map(|c| (c as char).to_string()).collect();
    let ids = identifier_token_ids(&tok, "[", &alpha).unwrap();
    // The fixture's letter ids for SmolLM2 are 49..68.
    assert_eq!(ids, (49..=68).collect::<Vec<u32>>());
    // Numeric identifiers past 9 split into several digit tokens.
    let numeric: Vec<String> = (1..=12).map(|i| i.to_string()).collect();
    let err = identifier_token_ids(&tok, "[", &numeric)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`10`") && err.contains("single-token"),
        "{err}"
    );
}

#[test]
fn batched_windows_through_the_seam_match_one_by_one() {
    let Some(windows) = fixture(&SMOLLM2, "windows.json") else {
        return;
    };
    let Some(mut r) = reranker(ScoringMode::First) else {
        return;
    };
    // Two queries' top-20 windows (prompts of different lengths).
    let (qa, ca) = window_request(&windows["windows"][1]);
    let (qb, cb) = window_request(&windows["windows"][5]);
    // On the CPU windows go one by one by default.
    let alone = [
        r.score_window(&qa, &ca).unwrap(),
        r.score_window(&qb, &cb).unwrap(),
    ];
    r.set_batch_windows(true);
    let before = r.model().forward_calls();
    let batched = r
        .score_windows(&[(&qa, ca.as_slice()), (&qb, cb.as_slice())])
        .unwrap();
    assert_eq!(
        r.model().forward_calls() - before,
        1,
        "one forward pass for the batch"
    );
    assert_eq!(r.stats().windows, 4);
    for (got, want) in batched.iter().zip(&alone) {
        let diff = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-3, "batched logits differ by {diff}");
    }
}
