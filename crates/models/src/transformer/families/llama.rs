//! The llama family: Llama, Mistral, SmolLM2 and other checkpoints with the
//! plain llama block (GGUF `llama`; `LlamaForCausalLM`,
//! `MistralForCausalLM`; FIRST's released reranker is a Mistral). The block
//! builders here also serve the Qwen family, which differs only in switches.
//!
//! llama.cpp's converter permutes the rows of `attn_q`/`attn_k` of llama
//! models so that each rotary pair is adjacent; with the weights as stored,
//! RoPE must rotate adjacent pairs ("normal"/interleaved RoPE), not the two
//! halves. Hugging Face checkpoints keep the original row order and rotate
//! halves. Projection biases are loaded wherever the checkpoint has them
//! (`attention_bias`); MLP biases are refused.

use anyhow::{bail, Context, Result};

use super::super::config::{Activation, HfConfig, LayerSpec, Meta, ModelConfig, RopeStyle};
use super::Family;

pub(in crate::transformer) static FAMILY: Family = Family {
    name: "llama",
    gguf_archs: &["llama"],
    hf_archs: &["LlamaForCausalLM", "MistralForCausalLM"],
    gguf_config: |meta| gguf_config(meta, "llama", RopeStyle::Interleaved, false),
    hf_config: |cfg, arch, lm_head| hf_config(cfg, arch, lm_head, "llama", false, false),
    hf_text_config: super::top_level_config,
    hf_block_module: super::llama_block_modules,
    hf_norm_offset: 0.0,
    default_chat_template: None,
};

/// The llama block from GGUF metadata; the variant decides how RoPE pairs
/// dimensions (llama GGUFs permute q/k rows, Qwen's do not) and whether
/// queries and keys have per-head norms.
pub(super) fn gguf_config(
    meta: &Meta<'_>,
    family: &'static str,
    rope_style: RopeStyle,
    qk_norm: bool,
) -> Result<ModelConfig> {
    let n_layers = meta.req_usize("block_count")?;
    let hidden = meta.req_usize("embedding_length")?;
    let intermediate = meta.req_usize("feed_forward_length")?;
    let n_heads = meta.req_usize("attention.head_count")?;
    let n_kv_heads = meta
        .opt_usize("attention.head_count_kv")?
        .unwrap_or(n_heads);
    let head_dim = match meta.opt_usize("attention.key_length")? {
        Some(d) => d,
        None if n_heads > 0 && hidden % n_heads == 0 => hidden / n_heads,
        None => bail!(
            "{}: embedding_length {hidden} is not a multiple of head_count {n_heads}",
            meta.path.display()
        ),
    };
    if let Some(rot) = meta.opt_usize("rope.dimension_count")? {
        if rot != head_dim {
            bail!(
                "{}: partial rotary embeddings (rope.dimension_count {rot} < head_dim {head_dim}) are not supported",
                meta.path.display()
            );
        }
    }
    let rms_eps = meta
        .opt_f32("attention.layer_norm_rms_epsilon")?
        .unwrap_or(1e-5) as f64;
    let rope_theta = meta.opt_f32("rope.freq_base")?.unwrap_or(10_000.0);
    let rope_scale = meta.linear_rope_scale()?;
    let layers = (0..n_layers)
        .map(|_| LayerSpec {
            sliding_window: None,
            rope_theta,
            rope_scale,
        })
        .collect();
    Ok(ModelConfig {
        family,
        arch_name: meta.arch.to_string(),
        n_layers,
        hidden,
        intermediate,
        n_heads,
        n_kv_heads,
        head_dim,
        vocab: meta.vocab()?,
        context_length: meta.opt_usize("context_length")?.unwrap_or(4096),
        rms_eps,
        rope_style,
        rope_theta,
        rope_theta_local: None,
        sliding_window: None,
        layers,
        attn_scale: 1.0 / (head_dim as f64).sqrt(),
        embed_scale: None,
        activation: Activation::Silu,
        qk_norm,
        sandwich_norms: false,
        final_logit_softcap: None,
        attn_logit_softcap: None,
        tied_embeddings: !meta.has_tensor("output.weight"),
    })
}

/// The llama block from `config.json`. `qwen_windows`: sliding windows are
/// switched on Qwen's way (`use_sliding_window` from `max_window_layers`
/// on) rather than Mistral's (`sliding_window` on every layer).
pub(super) fn hf_config(
    cfg: &HfConfig<'_>,
    arch_name: &str,
    has_lm_head: bool,
    family: &'static str,
    qk_norm: bool,
    qwen_windows: bool,
) -> Result<ModelConfig> {
    let hidden = cfg.req_usize("hidden_size")?;
    let n_heads = cfg.req_usize("num_attention_heads")?;
    let head_dim = match cfg.opt_usize("head_dim")? {
        Some(d) => d,
        None if n_heads > 0 && hidden % n_heads == 0 => hidden / n_heads,
        None => bail!(
            "{}: hidden_size {hidden} is not a multiple of num_attention_heads {n_heads} \
             (and `head_dim` is not given)",
            cfg.path.display()
        ),
    };
    if cfg.opt_bool("mlp_bias") == Some(true) {
        bail!(
            "{}: `mlp_bias` is true; MLP biases are not supported",
            cfg.path.display()
        );
    }
    let n_layers = cfg.req_usize("num_hidden_layers")?;
    let window = cfg.opt_usize("sliding_window")?;
    let types = cfg.layer_types(n_layers)?;
    let mut layers = Vec::with_capacity(n_layers);
    for i in 0..n_layers {
        // Which layers slide: `layer_types` (transformers 5); else Qwen's
        // `use_sliding_window` from layer `max_window_layers` on; else
        // Mistral's `sliding_window` on every layer.
        let sliding = match &types {
            Some(t) => t[i] == "sliding_attention",
            None if qwen_windows => {
                cfg.opt_bool("use_sliding_window") == Some(true)
                    && i >= cfg.opt_usize("max_window_layers")?.unwrap_or(0)
            }
            None => window.is_some(),
        };
        let layer_type = if sliding {
            "sliding_attention"
        } else {
            "full_attention"
        };
        let sliding_window = match sliding {
            true => Some(window.with_context(|| {
                format!(
                    "{}: layer {i} uses sliding-window attention but `sliding_window` is not set",
                    cfg.path.display()
                )
            })?),
            false => None,
        };
        layers.push(LayerSpec {
            sliding_window,
            rope_theta: cfg.rope_theta(layer_type, "rope_theta", 10_000.0)?,
            rope_scale: cfg.linear_rope_scale(layer_type)?,
        });
    }
    Ok(ModelConfig {
        family,
        arch_name: arch_name.to_string(),
        n_layers,
        hidden,
        intermediate: cfg.req_usize("intermediate_size")?,
        n_heads,
        n_kv_heads: cfg.opt_usize("num_key_value_heads")?.unwrap_or(n_heads),
        head_dim,
        vocab: cfg.req_usize("vocab_size")?,
        context_length: cfg.opt_usize("max_position_embeddings")?.unwrap_or(4096),
        rms_eps: cfg.opt_f64("rms_norm_eps")?.unwrap_or(1e-5),
        rope_style: RopeStyle::HalfSplit,
        rope_theta: cfg.rope_theta("full_attention", "rope_theta", 10_000.0)?,
        rope_theta_local: None,
        sliding_window: layers.iter().find_map(|l| l.sliding_window),
        layers,
        attn_scale: 1.0 / (head_dim as f64).sqrt(),
        embed_scale: None,
        activation: Activation::Silu,
        qk_norm,
        sandwich_norms: false,
        final_logit_softcap: None,
        attn_logit_softcap: None,
        tied_embeddings: cfg.opt_bool("tie_word_embeddings").unwrap_or(false) || !has_lm_head,
    })
}
