//! Hugging Face model directories. No safetensors checkpoint of the default
//! models can be fetched here, so each test writes one from the GGUF: every
//! tensor dequantized to f32 (or bf16) under its Hugging Face name, q/k rows
//! put back in Hugging Face order (llama GGUFs permute them), Gemma's norms
//! without GGUF's `+1`, a config.json, the tokenizer as tokenizer.json and
//! tokenizer_config.json with the chat template. Loaded through the
//! directory path, FIRST must give the Python reference's prompt ids and
//! identifier logits.

mod transformer_support;

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use firstrank_core::prompt::{PromptOptions, PromptTemplate};
use firstrank_core::window::WindowScorer;
use firstrank_models::gguf_tokenizer::tokenizer_from_gguf_file;
use firstrank_models::reranker::{LlmReranker, RerankerConfig};
use firstrank_models::transformer::{CausalLm, WeightMode};
use serde_json::json;
use transformer_support::{
    fixture, kendall_tau, max_abs_diff, model_path, window_request, ModelCase, GEMMA3, SMOLLM2,
};

/// The Hugging Face name of a GGUF tensor (llama or gemma3 layout).
fn hf_name(gguf: &str, gemma: bool) -> String {
    match gguf {
        "token_embd.weight" => return "model.embed_tokens.weight".into(),
        "output_norm.weight" => return "model.norm.weight".into(),
        "output.weight" => return "lm_head.weight".into(),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.").expect("layer tensor");
    let (layer, name) = rest.split_once('.').unwrap();
    let module = match name.trim_end_matches(".weight") {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "ffn_norm" if gemma => "pre_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "post_attention_norm" => "post_attention_layernorm",
        "post_ffw_norm" => "post_feedforward_layernorm",
        other => panic!("unexpected tensor {other}"),
    };
    format!("model.layers.{layer}.{module}.weight")
}

/// Undoes llama.cpp's q/k row permutation (`[heads, 2, hd/2]` rows were
/// stored as `[heads, hd/2, 2]`).
fn unpermute(w: &Tensor, heads: usize) -> Tensor {
    let (rows, cols) = w.dims2().unwrap();
    let hd = rows / heads;
    w.reshape((heads, hd / 2, 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
        .contiguous()
        .unwrap()
}

/// Writes `gguf` as a Hugging Face directory into `dir`.
fn export(gguf: &Path, dir: &Path, dtype: DType, chat_template: Option<&str>) {
    let gemma = gguf.to_string_lossy().contains("gemma");
    let model = CausalLm::load(gguf, WeightMode::DequantizedF32, &Device::Cpu).unwrap();
    let c = model.config().clone();
    let mut f = std::fs::File::open(gguf).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let mut tensors = HashMap::new();
    for name in content.tensor_infos.keys() {
        if name == "rope_freqs.weight" {
            continue;
        }
        let q = content.tensor(&mut f, name, &Device::Cpu).unwrap();
        let mut t = q.dequantize(&Device::Cpu).unwrap();
        if !gemma && name.ends_with("attn_q.weight") {
            t = unpermute(&t, c.n_heads);
        }
        if !gemma && name.ends_with("attn_k.weight") {
            t = unpermute(&t, c.n_kv_heads);
        }
        if gemma && name.ends_with("norm.weight") {
            t = (t - 1.0).unwrap();
        }
        tensors.insert(hf_name(name, gemma), t.to_dtype(dtype).unwrap());
    }
    // Two shards, as large checkpoints come.
    let mut names: Vec<String> = tensors.keys().cloned().collect();
    names.sort();
    let half = names.len() / 2;
    for (i, part) in [&names[..half], &names[half..]].iter().enumerate() {
        let shard: HashMap<String, Tensor> = part
            .iter()
            .map(|n| (n.clone(), tensors[n].clone()))
            .collect();
        candle_core::safetensors::save(
            &shard,
            dir.join(format!("model-0000{}-of-00002.safetensors", i + 1)),
        )
        .unwrap();
    }
    let config = if gemma {
        let layer_types: Vec<&str> = c
            .layers
            .iter()
            .map(|l| {
                if l.sliding_window.is_some() {
                    "sliding_attention"
                } else {
                    "full_attention"
                }
            })
            .collect();
        json!({
            "architectures": ["Gemma3ForCausalLM"],
            "hidden_size": c.hidden, "intermediate_size": c.intermediate,
            "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads,
            "num_key_value_heads": c.n_kv_heads, "head_dim": c.head_dim,
            "rms_norm_eps": c.rms_eps, "rope_theta": c.rope_theta,
            "rope_local_base_freq": c.rope_theta_local, "sliding_window": c.sliding_window,
            "layer_types": layer_types, "query_pre_attn_scalar": c.head_dim,
            "vocab_size": c.vocab, "max_position_embeddings": c.context_length,
            "final_logit_softcapping": null, "attn_logit_softcapping": null,
            "tie_word_embeddings": true
        })
    } else {
        json!({
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": c.hidden, "intermediate_size": c.intermediate,
            "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads,
            "num_key_value_heads": c.n_kv_heads, "rms_norm_eps": c.rms_eps,
            "rope_theta": c.rope_theta, "vocab_size": c.vocab,
            "max_position_embeddings": c.context_length,
            "tie_word_embeddings": c.tied_embeddings
        })
    };
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let tok = tokenizer_from_gguf_file(gguf).unwrap();
    tok.tokenizer
        .save(dir.join("tokenizer.json"), false)
        .unwrap();
    let template = chat_template
        .map(str::to_string)
        .or(tok.chat_template.clone());
    let tok_config = json!({
        "chat_template": template,
        "bos_token": tok.bos.as_ref().map(|b| b.0.clone()),
        "eos_token": tok.eos.as_ref().map(|e| e.0.clone()),
    });
    std::fs::write(dir.join("tokenizer_config.json"), tok_config.to_string()).unwrap();
}

fn reranker(dir: &Path, weights: WeightMode) -> LlmReranker {
    let config = RerankerConfig {
        weights,
        template: PromptTemplate::rank_zephyr_alpha(),
        options: PromptOptions::fixture(),
        ..RerankerConfig::default()
    };
    LlmReranker::load(dir.to_str().unwrap(), config, &Device::Cpu).unwrap()
}

/// The directory model reproduces the reference on a fixture window: prompt
/// ids exactly, f32 logits within 1e-3; bf16 weights keep the order close.
fn check(case: &ModelCase, chat_template: Option<&str>) {
    let Some(gguf) = model_path(case.file) else {
        firstrank_core::testing::skip_or_fail(&format!("{} not found", case.file));
        return;
    };
    let Some(windows) = fixture(case, "windows.json") else {
        return;
    };
    let w = &windows["windows"][1];
    let (query, cands) = window_request(w);
    let want_ids: Vec<u32> = w["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let want: Vec<f32> = w["letter_logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();

    let dir = tempfile::tempdir().unwrap();
    export(&gguf, dir.path(), DType::F32, chat_template);
    let mut r = reranker(dir.path(), WeightMode::DequantizedF32);
    let (_, ids) = r.window_input(&query, &cands).unwrap();
    assert_eq!(ids, want_ids, "{}: prompt ids", case.file);
    let got = r.score_window(&query, &cands).unwrap();
    let diff = max_abs_diff(&got, &want);
    assert!(diff < 1e-3, "{}: f32 logits differ by {diff}", case.file);

    let bf16 = tempfile::tempdir().unwrap();
    export(&gguf, bf16.path(), DType::BF16, chat_template);
    let mut r = reranker(bf16.path(), WeightMode::Quantized);
    let got = r.score_window(&query, &cands).unwrap();
    let tau = kendall_tau(&got, &want);
    assert!(tau >= 0.8, "{}: bf16 + Q8_0 Kendall tau {tau}", case.file);
}

#[test]
fn smollm2_as_a_hugging_face_directory_matches_the_reference() {
    check(&SMOLLM2, None);
}

#[test]
fn gemma3_as_a_hugging_face_directory_matches_the_reference() {
    let gemma = firstrank_models::transformer::families::by_name("gemma3").unwrap();
    check(&GEMMA3, gemma.default_chat_template);
}

#[test]
fn unsupported_or_broken_directories_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = RerankerConfig::default();
    let load = |d: &Path| {
        LlmReranker::load(d.to_str().unwrap(), cfg.clone(), &Device::Cpu)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap()
    };
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"architectures": ["Phi3ForCausalLM"]}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), "{}").unwrap();
    let err = load(dir.path());
    assert!(err.contains("tokenizer.json"), "{err}");
    // With a loadable tokenizer the architecture is what fails, by name.
    if let Some(gguf) = model_path(SMOLLM2.file) {
        let tok = tokenizer_from_gguf_file(&gguf).unwrap();
        tok.tokenizer
            .save(dir.path().join("tokenizer.json"), false)
            .unwrap();
        candle_core::safetensors::save(
            &HashMap::from([(
                "model.embed_tokens.weight".to_string(),
                Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap(),
            )]),
            dir.path().join("model.safetensors"),
        )
        .unwrap();
        let err = load(dir.path());
        assert!(
            err.contains("Phi3ForCausalLM") && err.contains("config.json"),
            "{err}"
        );
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 576}"#,
        )
        .unwrap();
        let err = load(dir.path());
        assert!(err.contains("num_attention_heads"), "{err}");
    }
}
