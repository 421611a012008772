//! The Gemma 3 family (GGUF `gemma3`; `Gemma3ForCausalLM`, and the text part
//! of `Gemma3ForConditionalGeneration`). Several of Gemma 3's hyper-parameters
//! are not stored in the GGUF and are filled in here the way Hugging Face's
//! config and llama.cpp define them:
//! - 5 of every 6 layers use sliding-window attention (window from
//!   `gemma3.attention.sliding_window`, 512 for the small models); layers with
//!   `(i + 1) % 6 == 0` attend globally;
//! - local layers use RoPE base 10 000, global layers `gemma3.rope.freq_base`
//!   (1 000 000) with the optional linear scaling;
//! - queries are scaled by `query_pre_attn_scalar^-1/2` = `head_dim^-1/2`
//!   (256 → 1/16), except the 27B model (`hidden / heads`);
//! - the token embedding is multiplied by `sqrt(hidden)` (rounded to f32);
//! - RMSNorm weights in the GGUF already include Gemma's `+1`;
//! - GELU (tanh approximation) gated MLP, per-head q/k RMSNorm, and
//!   post-attention / post-feed-forward norms ("sandwich" norms);
//! - RoPE rotates the two halves of each head (llama.cpp's NEOX style: the
//!   converter does not permute gemma's q/k rows).
//!
//! In Hugging Face checkpoints the norm before the MLP is
//! `pre_feedforward_layernorm` (llama calls it `post_attention_layernorm`,
//! which Gemma uses for the norm after attention), and RMSNorm weights are
//! stored without the `+1`. The base 270M GGUF has no chat template: Gemma
//! 3's standard one is used (the system message becomes a prefix of the
//! first user turn, followed by a blank line).

use anyhow::{bail, Result};

use super::super::config::{Activation, HfConfig, LayerSpec, Meta, ModelConfig, RopeStyle};
use super::Family;

/// Gemma 3's standard chat template (the text-only part of
/// google/gemma-3-*-it's template).
pub const CHAT_TEMPLATE: &str = include_str!("../../../templates/gemma3_chat.jinja");

pub(in crate::transformer) static FAMILY: Family = Family {
    name: "gemma3",
    gguf_archs: &["gemma3"],
    hf_archs: &["Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"],
    gguf_config,
    hf_config,
    hf_text_config: |arch| (arch == "Gemma3ForConditionalGeneration").then_some("text_config"),
    hf_block_module,
    hf_norm_offset: 1.0,
    default_chat_template: Some(CHAT_TEMPLATE),
};

/// Gemma's names for the norms around attention and the MLP.
fn hf_block_module(stem: &str) -> Option<&'static str> {
    match stem {
        "ffn_norm" => Some("pre_feedforward_layernorm"),
        "post_attention_norm" => Some("post_attention_layernorm"),
        "post_ffw_norm" => Some("post_feedforward_layernorm"),
        _ => None,
    }
}

const SLIDING_PATTERN: usize = 6;
const LOCAL_ROPE_BASE: f32 = 10_000.0;
const GLOBAL_ROPE_BASE: f32 = 1_000_000.0;

fn gguf_config(meta: &Meta<'_>) -> Result<ModelConfig> {
    let n_layers = meta.req_usize("block_count")?;
    let hidden = meta.req_usize("embedding_length")?;
    let intermediate = meta.req_usize("feed_forward_length")?;
    let n_heads = meta.req_usize("attention.head_count")?;
    let n_kv_heads = meta
        .opt_usize("attention.head_count_kv")?
        .unwrap_or(n_heads);
    let head_dim = meta.opt_usize("attention.key_length")?.unwrap_or(256);
    if let Some(v) = meta.opt_usize("attention.value_length")? {
        if v != head_dim {
            bail!(
                "{}: attention.value_length {v} differs from key_length {head_dim}; not supported",
                meta.path.display()
            );
        }
    }
    let rms_eps = meta
        .opt_f32("attention.layer_norm_rms_epsilon")?
        .unwrap_or(1e-6) as f64;
    let window = meta.opt_usize("attention.sliding_window")?.unwrap_or(512);
    let pattern = meta
        .opt_usize("attention.sliding_window_pattern")?
        .unwrap_or(SLIDING_PATTERN)
        .max(1);
    let rope_theta = meta.opt_f32("rope.freq_base")?.unwrap_or(GLOBAL_ROPE_BASE);
    let rope_local = meta
        .opt_f32("rope.local_freq_base")?
        .unwrap_or(LOCAL_ROPE_BASE);
    let global_scale = meta.linear_rope_scale()?;
    let layers = (0..n_layers)
        .map(|i| {
            if (i + 1) % pattern == 0 {
                LayerSpec {
                    sliding_window: None,
                    rope_theta,
                    rope_scale: global_scale,
                }
            } else {
                LayerSpec {
                    sliding_window: Some(window),
                    rope_theta: rope_local,
                    rope_scale: 1.0,
                }
            }
        })
        .collect();
    // query_pre_attn_scalar: head_dim, except Gemma 3 27B (62 layers): hidden / heads.
    let query_pre_attn_scalar = if n_layers == 62 {
        hidden / n_heads
    } else {
        head_dim
    };
    Ok(ModelConfig {
        family: "gemma3",
        arch_name: meta.arch.to_string(),
        n_layers,
        hidden,
        intermediate,
        n_heads,
        n_kv_heads,
        head_dim,
        vocab: meta.vocab()?,
        context_length: meta.opt_usize("context_length")?.unwrap_or(32_768),
        rms_eps,
        rope_style: RopeStyle::HalfSplit,
        rope_theta,
        rope_theta_local: Some(rope_local),
        sliding_window: Some(window),
        layers,
        attn_scale: 1.0 / (query_pre_attn_scalar as f64).sqrt(),
        embed_scale: Some((hidden as f64).sqrt() as f32),
        activation: Activation::GeluTanh,
        qk_norm: true,
        sandwich_norms: true,
        final_logit_softcap: meta.opt_f32("final_logit_softcapping")?.map(f64::from),
        attn_logit_softcap: meta.opt_f32("attn_logit_softcapping")?.map(f64::from),
        tied_embeddings: !meta.has_tensor("output.weight"),
    })
}

fn hf_config(cfg: &HfConfig<'_>, arch_name: &str, has_lm_head: bool) -> Result<ModelConfig> {
    let hidden = cfg.req_usize("hidden_size")?;
    let n_heads = cfg.req_usize("num_attention_heads")?;
    let n_layers = cfg.req_usize("num_hidden_layers")?;
    let head_dim = cfg.opt_usize("head_dim")?.unwrap_or(256);
    let window = cfg.opt_usize("sliding_window")?.unwrap_or(512);
    let rope_theta = cfg.rope_theta("full_attention", "rope_theta", 1_000_000.0)?;
    let rope_local = cfg.rope_theta("sliding_attention", "rope_local_base_freq", 10_000.0)?;
    let global_scale = cfg.linear_rope_scale("full_attention")?;
    let local_scale = match cfg.rope_parameters("sliding_attention") {
        // transformers 4 applied `rope_scaling` to the global layers only.
        Some(_) => cfg.linear_rope_scale("sliding_attention")?,
        None => 1.0,
    };
    // Which layers slide: `layer_types` when given, else every layer but each
    // `sliding_window_pattern`-th (6).
    let pattern = cfg.opt_usize("sliding_window_pattern")?.unwrap_or(6).max(1);
    let types = cfg.layer_types(n_layers)?;
    let layers = (0..n_layers)
        .map(|i| {
            let sliding = match &types {
                Some(t) => t[i] == "sliding_attention",
                None => (i + 1) % pattern != 0,
            };
            if sliding {
                LayerSpec {
                    sliding_window: Some(window),
                    rope_theta: rope_local,
                    rope_scale: local_scale,
                }
            } else {
                LayerSpec {
                    sliding_window: None,
                    rope_theta,
                    rope_scale: global_scale,
                }
            }
        })
        .collect();
    let query_pre_attn_scalar = cfg
        .opt_f64("query_pre_attn_scalar")?
        .unwrap_or(head_dim as f64);
    Ok(ModelConfig {
        family: "gemma3",
        arch_name: arch_name.to_string(),
        n_layers,
        hidden,
        intermediate: cfg.req_usize("intermediate_size")?,
        n_heads,
        n_kv_heads: cfg.opt_usize("num_key_value_heads")?.unwrap_or(n_heads),
        head_dim,
        vocab: cfg.req_usize("vocab_size")?,
        context_length: cfg.opt_usize("max_position_embeddings")?.unwrap_or(32_768),
        rms_eps: cfg.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
        rope_style: RopeStyle::HalfSplit,
        rope_theta,
        rope_theta_local: Some(rope_local),
        sliding_window: Some(window),
        layers,
        attn_scale: 1.0 / query_pre_attn_scalar.sqrt(),
        embed_scale: Some((hidden as f64).sqrt() as f32),
        activation: Activation::GeluTanh,
        qk_norm: true,
        sandwich_norms: true,
        final_logit_softcap: cfg.opt_f64("final_logit_softcapping")?,
        attn_logit_softcap: cfg.opt_f64("attn_logit_softcapping")?,
        tied_embeddings: cfg.opt_bool("tie_word_embeddings").unwrap_or(true) || !has_lm_head,
    })
}
