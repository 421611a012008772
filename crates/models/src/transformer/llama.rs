//! The `llama` GGUF architecture (Llama, Mistral, SmolLM2, …) and its
//! relatives `qwen2` (q/k/v biases, which the model builder loads wherever
//! the file has them) and `qwen3` (per-head q/k RMSNorms): reads their
//! hyper-parameters from the GGUF metadata.
//!
//! llama.cpp's converter permutes the rows of `attn_q`/`attn_k` of llama
//! models so that each rotary pair is adjacent; with the weights as stored,
//! RoPE must rotate adjacent pairs ("normal"/interleaved RoPE), not the two
//! halves. Qwen rows are stored unpermuted and rotate halves (NeoX RoPE).

use anyhow::{bail, Result};

use super::{Activation, Arch, LayerSpec, Meta, ModelConfig, RopeStyle};

pub(super) fn config(meta: &Meta<'_>) -> Result<ModelConfig> {
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
    let qwen = matches!(meta.arch, "qwen2" | "qwen3");
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
        arch: Arch::Llama,
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
        rope_style: if qwen {
            RopeStyle::HalfSplit
        } else {
            RopeStyle::Interleaved
        },
        rope_theta,
        rope_theta_local: None,
        sliding_window: None,
        layers,
        attn_scale: 1.0 / (head_dim as f64).sqrt(),
        embed_scale: None,
        activation: Activation::Silu,
        qk_norm: meta.arch == "qwen3",
        sandwich_norms: false,
        final_logit_softcap: None,
        attn_logit_softcap: None,
        tied_embeddings: !meta.has_tensor("output.weight"),
    })
}
