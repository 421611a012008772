//! Hugging Face architectures with no obtainable checkpoint (Qwen2, Qwen3, a
//! Gemma 3 safetensors directory),
//! and Llama/Mistral features the default models do not use (attention
//! biases, a sliding window shorter than the prompt), checked against
//! transformers on tiny random models: `tests/data/tiny-hf/<name>/` holds a
//! 2-layer bf16 checkpoint in transformers 5's layout and transformers' f32
//! logits at a few positions of a 300-token sequence (written by
//! `scripts/make-tiny-hf-models.py`). The Qwen checkpoints are also written
//! out as `qwen2`/`qwen3` GGUF files, llama.cpp's layout, and must give the
//! same logits. These tests need no model download.

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Device;
use firstrank_models::transformer::{CausalLm, KvCache, WeightMode};
use serde_json::Value;

mod transformer_support;
use transformer_support::{max_abs_diff, tiny_expected, tiny_hf_dir, TinyExpected};

const MODELS: &[&str] = &["qwen2", "qwen3", "llama-bias", "mistral-window", "gemma3"];

/// Logits at each checked position, running the sequence in pieces that end
/// at those positions (so prefill chunks, one-token decoding and the KV
/// cache are all used).
fn logits_incremental(model: &mut CausalLm, e: &TinyExpected) -> Vec<Vec<f32>> {
    let mut cache = KvCache::new(model);
    let mut out = Vec::new();
    let mut start = 0;
    for (pos, _) in &e.logits {
        let h = model
            .forward(&e.tokens[start..=*pos], &mut cache, None)
            .unwrap();
        out.push(model.full_logits(&h).unwrap());
        start = pos + 1;
    }
    out
}

/// Asserts that [`logits_incremental`] stays within `tol` of transformers'
/// logits at every checked position; `label` names the case in failures.
fn assert_incremental_logits(model: &mut CausalLm, e: &TinyExpected, tol: f32, label: &str) {
    for ((pos, want), got) in e.logits.iter().zip(logits_incremental(model, e)) {
        let d = max_abs_diff(&got, want);
        assert!(d < tol, "{label}: position {pos}: max |Δlogit| {d}");
    }
}

/// A copy of the tiny Qwen2 checkpoint whose config.json is `cfg`.
fn qwen2_with_config(cfg: &Value) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        tiny_hf_dir("qwen2").join("model.safetensors"),
        tmp.path().join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    tmp
}

fn qwen2_config() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(tiny_hf_dir("qwen2").join("config.json")).unwrap(),
    )
    .unwrap()
}

#[test]
fn tiny_hf_models_match_transformers_in_f32() {
    for name in MODELS {
        let e = tiny_expected(name);
        let mut model =
            CausalLm::load_hf_dir(tiny_hf_dir(name), WeightMode::DequantizedF32, &Device::Cpu)
                .unwrap_or_else(|err| panic!("{name}: {err:#}"));
        assert_incremental_logits(&mut model, &e, 1e-4, name);
        // The whole sequence in one call: longer than the 256-query
        // attention block, so block-causal attention is used.
        let mut cache = KvCache::new(&model);
        let h = model.forward(&e.tokens, &mut cache, None).unwrap();
        let (pos, want) = e.logits.last().unwrap();
        assert_eq!(*pos, e.tokens.len() - 1);
        let d = max_abs_diff(&model.full_logits(&h).unwrap(), want);
        assert!(d < 1e-4, "{name}: one call: max |Δlogit| {d}");
        // Two right-padded prompts in one batch (the CUDA path's forward).
        let cut = 257;
        let hs = model
            .forward_batch_last(&[&e.tokens, &e.tokens[..cut]])
            .unwrap();
        let want_cut = &e.logits.iter().find(|(p, _)| *p == cut - 1).unwrap().1;
        for (h, want) in hs.iter().zip([want, want_cut]) {
            let d = max_abs_diff(&model.full_logits(h).unwrap(), want);
            assert!(d < 1e-4, "{name}: batched: max |Δlogit| {d}");
        }
    }
}

#[test]
fn tiny_hf_models_stay_close_with_q8_0_weights() {
    for name in MODELS {
        let e = tiny_expected(name);
        let mut model =
            CausalLm::load_hf_dir(tiny_hf_dir(name), WeightMode::Quantized, &Device::Cpu)
                .unwrap_or_else(|err| panic!("{name}: {err:#}"));
        // Q8_0 weights and 8-bit decode activations move the logits by a
        // few percent of their range: 0.05-0.13 where they reach ±3.3-4.9,
        // 0.44 for Gemma 3, whose scaled embeddings take them to ±10.7. The
        // bound is 5 % of the largest expected |logit|; a missing bias or
        // norm moves them by whole units.
        let range = e
            .logits
            .iter()
            .flat_map(|(_, l)| l.iter())
            .fold(0f32, |m, v| m.max(v.abs()));
        assert_incremental_logits(&mut model, &e, 0.05 * range, name);
    }
}

#[test]
fn configs_are_read_from_either_transformers_layout() {
    let q3 = CausalLm::load_hf_dir(
        tiny_hf_dir("qwen3"),
        WeightMode::DequantizedF32,
        &Device::Cpu,
    )
    .unwrap();
    let c = q3.config();
    assert!(c.qk_norm);
    assert_eq!(c.head_dim, 32, "explicit head_dim, not hidden / heads");
    assert!(c.tied_embeddings);
    assert!(c
        .layers
        .iter()
        .all(|l| l.rope_theta == 1_000_000.0 && l.sliding_window.is_none()));
    let m = CausalLm::load_hf_dir(
        tiny_hf_dir("mistral-window"),
        WeightMode::DequantizedF32,
        &Device::Cpu,
    )
    .unwrap();
    assert!(m
        .config()
        .layers
        .iter()
        .all(|l| l.sliding_window == Some(48)));

    // The same Qwen2 checkpoint described the transformers 4 way: top-level
    // `rope_theta`, sliding window declared but switched off.
    let mut cfg = qwen2_config();
    let o = cfg.as_object_mut().unwrap();
    o.remove("rope_parameters");
    o.remove("layer_types");
    o.insert("rope_theta".into(), 1_000_000.0.into());
    o.insert("sliding_window".into(), 32.into());
    o.insert("use_sliding_window".into(), false.into());
    let tmp = qwen2_with_config(&cfg);
    let mut v4 =
        CausalLm::load_hf_dir(tmp.path(), WeightMode::DequantizedF32, &Device::Cpu).unwrap();
    assert!(v4
        .config()
        .layers
        .iter()
        .all(|l| l.sliding_window.is_none()));
    assert_incremental_logits(&mut v4, &tiny_expected("qwen2"), 1e-4, "qwen2 (v4 config)");

    // Qwen's sliding window switched on (v4 layout): layers from
    // `max_window_layers` on slide.
    o_set(&mut cfg, "use_sliding_window", true.into());
    o_set(&mut cfg, "max_window_layers", 1.into());
    let tmp = qwen2_with_config(&cfg);
    let slid = CausalLm::load_hf_dir(tmp.path(), WeightMode::DequantizedF32, &Device::Cpu).unwrap();
    let windows: Vec<_> = slid
        .config()
        .layers
        .iter()
        .map(|l| l.sliding_window)
        .collect();
    assert_eq!(windows, vec![None, Some(32)]);
}

fn o_set(v: &mut Value, key: &str, x: Value) {
    v.as_object_mut().unwrap().insert(key.into(), x);
}

#[test]
fn unsupported_hf_features_are_refused_by_name() {
    let cases: &[(&str, Value, &str)] = &[
        ("mlp_bias", true.into(), "mlp_bias"),
        (
            "rope_parameters",
            serde_json::json!({"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}),
            "yarn",
        ),
        (
            "layer_types",
            serde_json::json!(["full_attention"]),
            "layer_types",
        ),
    ];
    for (key, value, needle) in cases {
        let mut cfg = qwen2_config();
        o_set(&mut cfg, key, value.clone());
        let tmp = qwen2_with_config(&cfg);
        let err = CausalLm::load_hf_dir(tmp.path(), WeightMode::DequantizedF32, &Device::Cpu)
            .expect_err(key);
        let msg = format!("{err:#}");
        assert!(
            msg.contains("config.json") && msg.contains(needle),
            "{key}: {msg}"
        );
    }
}

/// llama.cpp's GGUF name of a Hugging Face tensor of the llama/Qwen layout.
fn gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").expect("layer tensor");
    let (layer, rest) = rest.split_once('.').unwrap();
    let (module, kind) = rest.rsplit_once('.').unwrap();
    let name = match module {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        other => panic!("unexpected tensor {other}"),
    };
    format!("blk.{layer}.{name}.{kind}")
}

/// Writes the tiny Hugging Face checkpoint `name` as an f32 GGUF of
/// architecture `arch`, with the metadata llama.cpp's converter writes.
fn write_gguf(name: &str, arch: &str, path: &std::path::Path) {
    let d = tiny_hf_dir(name);
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
    let tensors =
        candle_core::safetensors::load(d.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut q: Vec<(String, QTensor)> = tensors
        .iter()
        .map(|(n, t)| {
            let t = t.to_dtype(candle_core::DType::F32).unwrap();
            (gguf_name(n), QTensor::quantize(&t, GgmlDType::F32).unwrap())
        })
        .collect();
    q.sort_by(|a, b| a.0.cmp(&b.0));
    let u = |k: &str| gguf_file::Value::U32(cfg[k].as_u64().unwrap() as u32);
    let mut md = vec![
        (
            "general.architecture".to_string(),
            gguf_file::Value::String(arch.into()),
        ),
        (format!("{arch}.block_count"), u("num_hidden_layers")),
        (format!("{arch}.embedding_length"), u("hidden_size")),
        (
            format!("{arch}.feed_forward_length"),
            u("intermediate_size"),
        ),
        (
            format!("{arch}.attention.head_count"),
            u("num_attention_heads"),
        ),
        (
            format!("{arch}.attention.head_count_kv"),
            u("num_key_value_heads"),
        ),
        (
            format!("{arch}.context_length"),
            u("max_position_embeddings"),
        ),
        (
            format!("{arch}.rope.freq_base"),
            gguf_file::Value::F32(cfg["rope_parameters"]["rope_theta"].as_f64().unwrap() as f32),
        ),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            gguf_file::Value::F32(cfg["rms_norm_eps"].as_f64().unwrap() as f32),
        ),
    ];
    if cfg["head_dim"].is_u64() {
        md.push((format!("{arch}.attention.key_length"), u("head_dim")));
    }
    let md_refs: Vec<(&str, &gguf_file::Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = q.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
}

#[test]
fn qwen_gguf_files_match_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, arch) in [("qwen2", "qwen2"), ("qwen3", "qwen3")] {
        let path = tmp.path().join(format!("{name}.gguf"));
        write_gguf(name, arch, &path);
        let mut model = CausalLm::load(&path, WeightMode::DequantizedF32, &Device::Cpu)
            .unwrap_or_else(|err| panic!("{name}: {err:#}"));
        assert_eq!(model.config().arch_name, arch);
        assert_incremental_logits(
            &mut model,
            &tiny_expected(name),
            1e-4,
            &format!("{name} GGUF"),
        );
    }
}
