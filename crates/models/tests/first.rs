//! FIRST scoring (`firstrank_models::first`): exactly one forward call per
//! window, identifier logits equal to the reference's next-token logits, and
//! the KV cache reused when the same or an extended prompt comes again. Uses
//! the short prompts of the shared debug traces, so it runs in seconds; skips
//! with a message when the model files or fixtures are missing.

mod transformer_support;

use firstrank_models::first::{first_logits, order_by_scores};
use firstrank_models::transformer::{KvCache, WeightMode};
use transformer_support::*;

fn check_one_forward_per_window(case: &ModelCase) {
    let Some(traces) = fixture(case, "debug_traces.json") else {
        return;
    };
    let Some(model) = model(case, WeightMode::DequantizedF32) else {
        return;
    };
    let mut m = model.lock().unwrap();
    let short = &traces["short"];
    let ids = u32s(&short["token_ids"]);
    // Score the first 16 vocabulary entries as if they were identifiers: the
    // reference gives their logits (`logits_first16`).
    let idents: Vec<u32> = (0..16).collect();
    let want = f32s(&short["logits_first16"]);
    let mut cache = KvCache::new(&m);

    let before = m.forward_calls();
    let got = first_logits(&mut m, &mut cache, &ids, &idents).unwrap();
    assert_eq!(
        m.forward_calls(),
        before + 1,
        "FIRST runs one forward per window"
    );
    assert!(max_abs_diff(&got, &want) < 1e-3, "{got:?} vs {want:?}");
    assert_eq!(order_by_scores(&got), order_by_scores(&want));
    assert_eq!(cache.tokens(), &ids[..]);

    // The same prompt again: served from the cache except its last
    // EXACT_MIN_TOKENS tokens, still one forward call, same scores.
    let again = first_logits(&mut m, &mut cache, &ids, &idents).unwrap();
    assert_eq!(m.forward_calls(), before + 2);
    assert!(max_abs_diff(&again, &got) < 1e-5);

    // A subset of identifiers gives the same values for those identifiers.
    let sub = first_logits(&mut m, &mut cache, &ids, &idents[..5]).unwrap();
    assert!(max_abs_diff(&sub, &got[..5]) < 1e-5);

    // An extended prompt continues the cache.
    let mut longer = ids.clone();
    longer.push(ids[ids.len() - 1]);
    first_logits(&mut m, &mut cache, &longer, &idents).unwrap();
    assert_eq!(cache.tokens(), &longer[..]);

    // Bad input is an error, not a panic.
    assert!(first_logits(&mut m, &mut cache, &[], &idents).is_err());
    let vocab = m.config().vocab as u32;
    assert!(first_logits(&mut m, &mut cache, &ids, &[vocab]).is_err());
}

#[test]
fn smollm2_first_is_one_forward_with_reference_logits() {
    check_one_forward_per_window(&SMOLLM2);
}

#[test]
fn gemma3_first_is_one_forward_with_reference_logits() {
    check_one_forward_per_window(&GEMMA3);
}

/// With quantized weights, re-scoring a cached window recomputes enough
/// tokens to stay on the prefill path (f32, or bf16 on AVX512-BF16 CPUs):
/// the scores do not depend on what the cache held (a 1-token suffix through
/// candle's 8-bit kernels moves Gemma's letter logits by up to ~0.7), also
/// with Gemma's sliding-window layers.
#[test]
fn gemma3_quantized_rescoring_a_cached_window_is_stable() {
    let case = &GEMMA3;
    let (Some(meta), Some(windows)) = (fixture(case, "meta.json"), fixture(case, "windows.json"))
    else {
        return;
    };
    let Some(model) = model(case, WeightMode::Quantized) else {
        return;
    };
    let mut m = model.lock().unwrap();
    let letters = u32s(&meta["letter_token_ids"]);
    let w = &windows["windows"][5];
    let ids = u32s(&w["token_ids"]);
    let mut cache = KvCache::new(&m);
    let first = first_logits(&mut m, &mut cache, &ids, &letters).unwrap();
    let before = m.forward_calls();
    let again = first_logits(&mut m, &mut cache, &ids, &letters).unwrap();
    assert_eq!(m.forward_calls(), before + 1);
    assert_eq!(cache.len(), ids.len());
    let d = max_abs_diff(&first, &again);
    assert!(
        d < 1e-4,
        "re-scoring from the cache moved the logits by {d}"
    );
    // Both are the reference's logits (prefill dequantizes to f32), or close
    // to them in bf16.
    let want = f32s(&w["letter_logits"]);
    let d = max_abs_diff(&first, &want);
    if m.bf16_prefill() {
        let tau = kendall_tau(&first, &want);
        assert!(d < 0.5 && tau >= 0.9, "bf16: max |diff| {d}, tau {tau}");
    } else {
        assert!(d < 1e-3, "max |diff| {d}");
    }
}

/// Windows of different lengths scored in one padded forward pass give the
/// logits each gets alone from an empty cache.
fn check_batched_windows(case: &ModelCase) {
    let Some(windows) = fixture(case, "windows.json") else {
        return;
    };
    let Some(meta) = fixture(case, "meta.json") else {
        return;
    };
    let Some(model) = model(case, WeightMode::Quantized) else {
        return;
    };
    let mut m = model.lock().unwrap();
    let letters = u32s(&meta["letter_token_ids"]);
    let w = windows["windows"].as_array().unwrap();
    // The longest and the shortest prompt of the fixtures.
    let mut prompts: Vec<Vec<u32>> = w.iter().map(|x| u32s(&x["token_ids"])).collect();
    prompts.sort_by_key(|p| p.len());
    let pair = [prompts[0].clone(), prompts[prompts.len() - 1].clone()];
    assert!(pair[0].len() < pair[1].len());
    let alone: Vec<Vec<f32>> = pair
        .iter()
        .map(|p| {
            let mut cache = KvCache::new(&m);
            let h = m.forward(p, &mut cache, None).unwrap();
            m.logits_for(&h, &letters).unwrap()
        })
        .collect();
    let before = m.forward_calls();
    let refs: Vec<&[u32]> = pair.iter().map(|p| p.as_slice()).collect();
    let hidden = m.forward_batch_last(&refs).unwrap();
    assert_eq!(m.forward_calls(), before + 1, "one forward call per batch");
    for (h, want) in hidden.iter().zip(&alone) {
        let got = m.logits_for(h, &letters).unwrap();
        assert!(
            max_abs_diff(&got, want) < 1e-3,
            "{}: batched {got:?} vs alone {want:?}",
            case.file
        );
    }
    assert!(m.forward_batch_last(&[]).is_err());
}

#[test]
fn smollm2_batched_windows_match_one_by_one() {
    check_batched_windows(&SMOLLM2);
}

#[test]
fn gemma3_batched_windows_match_one_by_one() {
    check_batched_windows(&GEMMA3);
}
