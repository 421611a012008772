//! Forward-pass fidelity of `firstrank_models::transformer` against the
//! fixtures of the independent Python reference (`shared/fixtures`): letter
//! logits of the six FIRST windows, layer-by-layer hidden states, the KV-cache
//! prefix reuse, and the quantized mode's ranking agreement. Token ids come
//! from the fixtures, so these tests do not depend on the tokenizer. They skip
//! (with a message) when the model files or the shared fixtures are missing.

mod transformer_support;

use std::time::Instant;

use candle_core::Tensor;
use firstrank_models::first::{first_logits, order_by_scores};
use firstrank_models::transformer::{argmax, CausalLm, KvCache, WeightMode};
use serde_json::Value;
use transformer_support::*;

/// Runs one window fresh and returns its letter logits.
fn window_logits(m: &mut CausalLm, w: &Value, letters: &[u32]) -> Vec<f32> {
    let ids = u32s(&w["token_ids"]);
    assert_eq!(ids.len() as u64, w["n_tokens"].as_u64().unwrap());
    let mut cache = KvCache::new(m);
    let t = Instant::now();
    let h = m.forward(&ids, &mut cache, None).expect("forward");
    let out = m.logits_for(&h, letters).expect("logits");
    let dt = t.elapsed().as_secs_f64();
    eprintln!(
        "  {} {}: {} tokens in {:.2}s ({:.0} tok/s)",
        w["qid"].as_str().unwrap(),
        w["window"].as_str().unwrap(),
        ids.len(),
        dt,
        ids.len() as f64 / dt
    );
    out
}

fn letter_names(order: &[usize]) -> Vec<String> {
    order
        .iter()
        .map(|&i| ((b'A' + i as u8) as char).to_string())
        .collect()
}

fn check_f32_windows(case: &ModelCase) {
    let (Some(meta), Some(windows), Some(traces)) = (
        fixture(case, "meta.json"),
        fixture(case, "windows.json"),
        fixture(case, "debug_traces.json"),
    ) else {
        return;
    };
    let Some(model) = model(case, WeightMode::DequantizedF32) else {
        return;
    };
    let mut m = model.lock().unwrap();
    let letters = u32s(&meta["letter_token_ids"]);
    let ablations: Vec<(&str, &Vec<Value>)> = traces
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("ablation_"))
        .map(|(k, v)| (k.as_str(), v.as_array().unwrap()))
        .collect();
    assert!(!ablations.is_empty());
    let mut worst = 0f32;
    for (wi, w) in windows["windows"].as_array().unwrap().iter().enumerate() {
        let got = window_logits(&mut m, w, &letters);
        let want = f32s(&w["letter_logits"]);
        let diff = max_abs_diff(&got, &want);
        worst = worst.max(diff);
        assert!(
            diff < 1e-3,
            "window {wi}: max |diff| {diff} vs fixture\n got {got:?}\nwant {want:?}"
        );
        let order = letter_names(&order_by_scores(&got));
        let want_order: Vec<String> = w["order_letters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().into())
            .collect();
        assert_eq!(order, want_order, "window {wi}: order differs");
        // A typical port mistake must not be what we reproduce.
        for (name, recs) in &ablations {
            let rec = &recs[wi];
            assert_eq!(rec["qid"], w["qid"]);
            assert_eq!(rec["window"], w["window"]);
            let key = format!("letter_logits_{}", name.trim_start_matches("ablation_"));
            let ab = f32s(&rec[key.as_str()]);
            let d = max_abs_diff(&got, &ab);
            assert!(
                d > 0.1,
                "window {wi}: logits match ablation {name} (max |diff| {d})"
            );
        }
    }
    eprintln!(
        "{}: worst letter-logit |diff| over 6 windows = {worst:e}",
        case.fixture_dir
    );
}

#[test]
fn smollm2_f32_letter_logits_match_fixture() {
    check_f32_windows(&SMOLLM2);
}

#[test]
fn gemma3_f32_letter_logits_match_fixture() {
    check_f32_windows(&GEMMA3);
}

/// Per-stage relative L2 error of the last position's hidden state.
fn check_trace(m: &mut CausalLm, trace: &Value, tol: f64, label: &str) {
    let ids = u32s(&trace["token_ids"]);
    let mut cache = KvCache::new(m);
    let mut taps = Vec::new();
    let h = m
        .forward(&ids, &mut cache, Some(&mut taps))
        .expect("forward");
    let stages = trace["stages"].as_array().unwrap();
    assert_eq!(taps.len(), stages.len(), "{label}: number of stages");
    let mut worst = 0f64;
    for ((name, t), st) in taps.iter().zip(stages) {
        assert_eq!(name, st["stage"].as_str().unwrap(), "{label}: stage names");
        let v = t.to_vec1::<f32>().unwrap();
        let want_l2 = st["l2"].as_f64().unwrap();
        let rel_l2 = (l2(&v) - want_l2).abs() / want_l2;
        let first8 = f32s(&st["first8"]);
        let d8: Vec<f32> = v[..8].iter().zip(&first8).map(|(a, b)| a - b).collect();
        let rel8 = l2(&d8) / want_l2;
        let rel_full = st.get("vector").map(|vec| {
            let want = f32s(vec);
            let d: Vec<f32> = v.iter().zip(&want).map(|(a, b)| a - b).collect();
            l2(&d) / want_l2
        });
        let err = rel_l2.max(rel8).max(rel_full.unwrap_or(0.0));
        worst = worst.max(err);
        assert!(
            err < tol,
            "{label} stage {name}: relative error {err:e} (l2 {rel_l2:e}, first8 {rel8:e}, vector {rel_full:?})"
        );
    }
    eprintln!("{label}: worst per-stage relative error {worst:e}");
    let logits = m.full_logits(&h).unwrap();
    let first16 = f32s(&trace["logits_first16"]);
    let d = max_abs_diff(&logits[..16], &first16);
    assert!(d < 1e-3, "{label}: logits_first16 max |diff| {d}");
    let top = trace["top10_vocab"].as_array().unwrap();
    assert_eq!(
        argmax(&logits).unwrap() as u64,
        top[0]["id"].as_u64().unwrap(),
        "{label}: top token"
    );
    for e in top {
        let id = e["id"].as_u64().unwrap() as usize;
        let want = e["logit"].as_f64().unwrap() as f32;
        assert!(
            (logits[id] - want).abs() < 1e-3,
            "{label}: logit of {id}: {} vs {want}",
            logits[id]
        );
    }
}

fn check_traces(case: &ModelCase) {
    let Some(traces) = fixture(case, "debug_traces.json") else {
        return;
    };
    let Some(model) = model(case, WeightMode::DequantizedF32) else {
        return;
    };
    let mut m = model.lock().unwrap();
    check_trace(
        &mut m,
        &traces["short"],
        1e-4,
        &format!("{} short", case.fixture_dir),
    );
    check_trace(
        &mut m,
        &traces["window0"],
        1e-4,
        &format!("{} window0", case.fixture_dir),
    );
}

#[test]
fn smollm2_f32_debug_traces_match() {
    check_traces(&SMOLLM2);
}

#[test]
fn gemma3_f32_debug_traces_match() {
    check_traces(&GEMMA3);
}

/// Quantized mode: the windows' letter logits rank the identifiers like the
/// reference (Kendall tau >= 0.9), both for a whole prompt (prefill path) and
/// when the last few tokens go through candle's quantized kernels (the path
/// of short suffixes and decoding: 8-bit activations).
fn check_quantized(case: &ModelCase) {
    let (Some(meta), Some(windows)) = (fixture(case, "meta.json"), fixture(case, "windows.json"))
    else {
        return;
    };
    let Some(model) = model(case, WeightMode::Quantized) else {
        return;
    };
    let mut m = model.lock().unwrap();
    let letters = u32s(&meta["letter_token_ids"]);
    for (wi, w) in windows["windows"].as_array().unwrap().iter().enumerate() {
        let want = f32s(&w["letter_logits"]);
        let ids = u32s(&w["token_ids"]);
        let mut cache = KvCache::new(&m);
        let t = Instant::now();
        let h = m.forward(&ids, &mut cache, None).unwrap();
        let dt = t.elapsed().as_secs_f64();
        let got = m.logits_for(&h, &letters).unwrap();
        let tau = kendall_tau(&got, &want);
        let diff = max_abs_diff(&got, &want);
        eprintln!(
            "  window {wi}: {} tokens in {dt:.2}s ({:.0} tok/s); kendall tau {tau:.3}, max |diff| {diff:.2e}",
            ids.len(),
            ids.len() as f64 / dt
        );
        assert!(
            tau >= 0.9,
            "window {wi}: kendall tau {tau} < 0.9\n got {got:?}\nwant {want:?}"
        );

        // Last 4 tokens through the quantized kernels, after the cached prefix.
        let n = ids.len();
        cache.truncate(n - 4);
        let h = m.forward(&ids[n - 4..], &mut cache, None).unwrap();
        let got = m.logits_for(&h, &letters).unwrap();
        let tau = kendall_tau(&got, &want);
        let diff = max_abs_diff(&got, &want);
        eprintln!("    quantized-kernel suffix: kendall tau {tau:.3}, max |diff| {diff:.3}");
        assert!(
            tau >= 0.9,
            "window {wi} (kernel suffix): kendall tau {tau} < 0.9\n got {got:?}\nwant {want:?}"
        );
        assert!(diff < 1.0, "window {wi} (kernel suffix): max |diff| {diff}");
    }
}

#[test]
fn smollm2_quantized_order_agrees() {
    check_quantized(&SMOLLM2);
}

#[test]
fn gemma3_quantized_order_agrees() {
    check_quantized(&GEMMA3);
}

/// Window B computed after window A of the same query, reusing their common
/// prefix from the cache, equals B computed from scratch.
fn check_prefix_reuse(case: &ModelCase) {
    let (Some(meta), Some(windows)) = (fixture(case, "meta.json"), fixture(case, "windows.json"))
    else {
        return;
    };
    let Some(model) = model(case, WeightMode::DequantizedF32) else {
        return;
    };
    let mut m = model.lock().unwrap();
    let letters = u32s(&meta["letter_token_ids"]);
    let ws = windows["windows"].as_array().unwrap();
    // Windows 4 and 5 are the same query (130510): bottom, then top 20.
    assert_eq!(ws[4]["qid"], ws[5]["qid"]);
    let (a, b) = (u32s(&ws[4]["token_ids"]), u32s(&ws[5]["token_ids"]));
    let fresh_b = window_logits(&mut m, &ws[5], &letters);

    let mut cache = KvCache::new(&m);
    let calls = m.forward_calls();
    let la = first_logits(&mut m, &mut cache, &a, &letters).unwrap();
    assert_eq!(cache.tokens(), &a[..]);
    let shared = cache.common_prefix_len(&b);
    assert!(
        shared > 50,
        "windows share a prompt prefix of {shared} tokens"
    );
    let t = Instant::now();
    let lb = first_logits(&mut m, &mut cache, &b, &letters).unwrap();
    eprintln!(
        "  reuse: {shared} of {} tokens cached, suffix in {:.2}s",
        b.len(),
        t.elapsed().as_secs_f64()
    );
    assert_eq!(m.forward_calls(), calls + 2, "one forward per window");
    assert_eq!(cache.tokens(), &b[..]);
    let d = max_abs_diff(&lb, &fresh_b);
    assert!(d < 1e-4, "prefix reuse changes the logits by {d}");
    // Window A's own logits are still the fixture's.
    assert!(max_abs_diff(&la, &f32s(&ws[4]["letter_logits"])) < 1e-3);

    // Truncating back into the prefix and re-running A gives A again.
    cache.truncate(shared / 2);
    let la2 = first_logits(&mut m, &mut cache, &a, &letters).unwrap();
    assert!(max_abs_diff(&la, &la2) < 1e-4);
}

#[test]
fn smollm2_kv_prefix_reuse_matches_fresh_pass() {
    check_prefix_reuse(&SMOLLM2);
}

#[test]
fn gemma3_kv_prefix_reuse_matches_fresh_pass() {
    // Gemma's sliding-window layers make this the harder case: the window
    // must be applied by absolute position across the cached prefix.
    check_prefix_reuse(&GEMMA3);
}

#[test]
fn config_from_gguf_metadata() {
    if let Some(model) = model(&GEMMA3, WeightMode::DequantizedF32) {
        let m = model.lock().unwrap();
        let c = m.config();
        assert_eq!(c.family, "gemma3");
        assert_eq!(
            (c.n_layers, c.hidden, c.n_heads, c.n_kv_heads, c.head_dim),
            (18, 640, 4, 1, 256)
        );
        assert_eq!(c.vocab, 262_144);
        assert_eq!(c.attn_scale, 1.0 / 16.0);
        let global: Vec<usize> = c
            .layers
            .iter()
            .enumerate()
            .filter(|(_, l)| l.sliding_window.is_none())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(global, vec![5, 11, 17]);
        assert!(c.layers.iter().all(|l| match l.sliding_window {
            Some(w) => w == 512 && l.rope_theta == 10_000.0,
            None => l.rope_theta == 1_000_000.0,
        }));
        assert!(c.tied_embeddings && c.final_logit_softcap.is_none());
    }
    if let Some(model) = model(&SMOLLM2, WeightMode::DequantizedF32) {
        let m = model.lock().unwrap();
        let c = m.config();
        assert_eq!(c.family, "llama");
        assert_eq!(
            (c.n_layers, c.hidden, c.n_heads, c.n_kv_heads, c.head_dim),
            (30, 576, 9, 3, 64)
        );
        assert_eq!(c.rope_theta, 100_000.0);
        assert!(c.layers.iter().all(|l| l.sliding_window.is_none()));
        assert!(c.tied_embeddings && c.embed_scale.is_none());
    }
}

#[test]
fn forward_rejects_out_of_range_tokens() {
    let Some(model) = model(&SMOLLM2, WeightMode::DequantizedF32) else {
        return;
    };
    let mut m = model.lock().unwrap();
    let mut cache = KvCache::new(&m);
    let err = m
        .forward(&[1, 49_152], &mut cache, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("49152"), "{err}");
    assert!(cache.is_empty());
    let h = Tensor::zeros(576, candle_core::DType::F32, m.device()).unwrap();
    assert!(m.logits_for(&h, &[70_000]).is_err());
}

// ---- synthetic GGUF files: error messages, and the modes on a tiny model ----

mod synthetic {
    use std::path::Path;

    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    use candle_core::{Device, Tensor};
    use firstrank_models::first::first_logits;
    use firstrank_models::transformer::{CausalLm, KvCache, WeightMode};

    use super::{kendall_tau, max_abs_diff};

    const H: usize = 64;
    const VOCAB: usize = 40;

    /// A 2-layer llama-architecture GGUF with random Q8_0 weights.
    fn write_tiny(path: &Path, arch: &str, skip: Option<&str>) {
        let dev = Device::Cpu;
        let (heads, kv, hd, ffn, layers) = (4usize, 2usize, 16usize, 128usize, 2usize);
        let rnd = |shape: &[usize], scale: f64| {
            (Tensor::randn(0f32, 1.0, shape, &dev).unwrap() * scale).unwrap()
        };
        let mut tensors: Vec<(String, QTensor)> = Vec::new();
        let mut add = |name: String, t: Tensor, q: bool| {
            let dt = if q { GgmlDType::Q8_0 } else { GgmlDType::F32 };
            tensors.push((name, QTensor::quantize(&t, dt).unwrap()));
        };
        add("token_embd.weight".into(), rnd(&[VOCAB, H], 1.0), true);
        add(
            "output_norm.weight".into(),
            (rnd(&[H], 0.1) + 1.0).unwrap(),
            false,
        );
        for i in 0..layers {
            let p = format!("blk.{i}");
            add(
                format!("{p}.attn_norm.weight"),
                (rnd(&[H], 0.1) + 1.0).unwrap(),
                false,
            );
            add(
                format!("{p}.ffn_norm.weight"),
                (rnd(&[H], 0.1) + 1.0).unwrap(),
                false,
            );
            add(
                format!("{p}.attn_q.weight"),
                rnd(&[heads * hd, H], 0.2),
                true,
            );
            add(format!("{p}.attn_k.weight"), rnd(&[kv * hd, H], 0.2), true);
            add(format!("{p}.attn_v.weight"), rnd(&[kv * hd, H], 0.2), true);
            add(
                format!("{p}.attn_output.weight"),
                rnd(&[H, heads * hd], 0.1),
                true,
            );
            add(format!("{p}.ffn_gate.weight"), rnd(&[ffn, H], 0.2), true);
            add(format!("{p}.ffn_up.weight"), rnd(&[ffn, H], 0.2), true);
            add(format!("{p}.ffn_down.weight"), rnd(&[H, ffn], 0.1), true);
        }
        use gguf_file::Value;
        let md: Vec<(String, Value)> = vec![
            ("general.architecture".into(), Value::String(arch.into())),
            (format!("{arch}.block_count"), Value::U32(layers as u32)),
            (format!("{arch}.embedding_length"), Value::U32(H as u32)),
            (
                format!("{arch}.feed_forward_length"),
                Value::U32(ffn as u32),
            ),
            (
                format!("{arch}.attention.head_count"),
                Value::U32(heads as u32),
            ),
            (
                format!("{arch}.attention.head_count_kv"),
                Value::U32(kv as u32),
            ),
            (format!("{arch}.context_length"), Value::U32(256)),
            (format!("{arch}.rope.freq_base"), Value::F32(10_000.0)),
            (
                format!("{arch}.attention.layer_norm_rms_epsilon"),
                Value::F32(1e-5),
            ),
        ];
        let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let t_refs: Vec<(&str, &QTensor)> = tensors
            .iter()
            .filter(|(n, _)| Some(n.as_str()) != skip)
            .map(|(n, t)| (n.as_str(), t))
            .collect();
        let mut f = std::fs::File::create(path).unwrap();
        gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
    }

    fn load_err(path: &Path) -> String {
        format!(
            "{:#}",
            CausalLm::load(path, WeightMode::Quantized, &Device::Cpu).unwrap_err()
        )
    }

    #[test]
    fn unsupported_architecture_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("phi.gguf");
        write_tiny(&p, "phi3", None);
        let e = load_err(&p);
        assert!(
            e.contains("phi3") && e.contains("llama, qwen2, qwen3, gemma3"),
            "{e}"
        );
        assert!(e.contains("phi.gguf"), "{e}");
    }

    #[test]
    fn truncated_or_incomplete_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tiny.gguf");
        write_tiny(&p, "llama", None);
        let len = std::fs::metadata(&p).unwrap().len();
        // Tensor data cut off.
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(len - 100).unwrap();
        let e = load_err(&p);
        assert!(e.contains("tiny.gguf") && e.contains("truncated"), "{e}");
        // Header cut off.
        f.set_len(40).unwrap();
        let e = load_err(&p);
        assert!(
            e.contains("tiny.gguf") && e.contains("not a valid GGUF"),
            "{e}"
        );
        // Not a GGUF at all.
        std::fs::write(&p, b"hello").unwrap();
        assert!(load_err(&p).contains("tiny.gguf"));
        // A tensor missing.
        write_tiny(&p, "llama", Some("blk.1.ffn_up.weight"));
        let e = load_err(&p);
        assert!(
            e.contains("blk.1.ffn_up.weight") && e.contains("tiny.gguf"),
            "{e}"
        );
        // No such file.
        assert!(load_err(&dir.path().join("absent.gguf")).contains("absent.gguf"));
    }

    #[test]
    fn tiny_model_modes_cache_and_chunking_agree() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tiny.gguf");
        write_tiny(&p, "llama", None);
        let mut f32m = CausalLm::load(&p, WeightMode::DequantizedF32, &Device::Cpu).unwrap();
        let mut qm = CausalLm::load(&p, WeightMode::Quantized, &Device::Cpu).unwrap();
        let prompt: Vec<u32> = (0..50).map(|i| (i * 7 + 3) % VOCAB as u32).collect();
        let ids: Vec<u32> = (0..VOCAB as u32).collect();

        let mut c = KvCache::new(&f32m);
        let h = f32m.forward(&prompt, &mut c, None).unwrap();
        let reference = f32m.logits_for(&h, &ids).unwrap();
        // Full projection agrees with the gathered rows.
        let full = f32m.full_logits(&h).unwrap();
        assert!(max_abs_diff(&full, &reference) < 1e-5);

        // Prefill with quantized weights dequantizes: the f32 numbers, or
        // close to them where prefill multiplies in bf16 (AVX512-BF16).
        let mut c = KvCache::new(&qm);
        let q = first_logits(&mut qm, &mut c, &prompt, &ids).unwrap();
        let d = max_abs_diff(&q, &reference);
        if qm.bf16_prefill() {
            // Logits span about +-25 here; bf16 inputs are 2^-9 relative.
            assert!(d < 0.5, "bf16 prefill: max |diff| {d}");
            assert!(kendall_tau(&q, &reference) >= 0.95);
        } else {
            assert!(d < 1e-4, "{q:?} vs {reference:?}");
        }
        // Quantized prefill gives the same numbers however the prompt is
        // chunked or split by a cached prefix: exactly in bf16 (each product
        // sums in an order fixed by positions alone, so no bf16 rounding of
        // an activation can flip), up to f32 rounding otherwise.
        let bf16 = qm.bf16_prefill();
        let same_or_rounding = |got: &[f32], want: &[f32], what: &str| {
            if bf16 {
                assert_eq!(got, want, "{what}");
            } else {
                assert!(max_abs_diff(got, want) < 1e-4, "{what}");
            }
        };
        for chunk in [7, 16, 49] {
            qm.set_prefill_chunk(chunk);
            let mut c = KvCache::new(&qm);
            let qc = first_logits(&mut qm, &mut c, &prompt, &ids).unwrap();
            same_or_rounding(&qc, &q, &format!("prefill in chunks of {chunk}"));
        }
        qm.set_prefill_chunk(2048);
        let mut c = KvCache::new(&qm);
        first_logits(&mut qm, &mut c, &prompt[..30], &ids).unwrap();
        let qc = first_logits(&mut qm, &mut c, &prompt, &ids).unwrap();
        same_or_rounding(&qc, &q, "after a cached 30-token prefix");

        // Chunked prefill (chunks of 7) equals one pass.
        f32m.set_prefill_chunk(7);
        let mut c = KvCache::new(&f32m);
        let h = f32m.forward(&prompt, &mut c, None).unwrap();
        let chunked = f32m.logits_for(&h, &ids).unwrap();
        // Rounding only (logits are ~10 here; the reduction order changes).
        assert!(max_abs_diff(&chunked, &reference) < 1e-4);

        // Token by token (decoding path) equals one pass too.
        let mut c = KvCache::new(&f32m);
        let mut h = None;
        for t in &prompt {
            h = Some(f32m.forward(&[*t], &mut c, None).unwrap());
        }
        let stepwise = f32m.logits_for(&h.unwrap(), &ids).unwrap();
        assert!(max_abs_diff(&stepwise, &reference) < 1e-4);

        // A different prompt gives different logits (the test can fail).
        let mut other = prompt.clone();
        other[10] = (other[10] + 1) % VOCAB as u32;
        let mut c = KvCache::new(&f32m);
        let h = f32m.forward(&other, &mut c, None).unwrap();
        assert!(max_abs_diff(&f32m.logits_for(&h, &ids).unwrap(), &reference) > 1e-3);
    }
}
