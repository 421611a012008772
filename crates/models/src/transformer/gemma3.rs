//! The `gemma3` GGUF architecture. Several of Gemma 3's hyper-parameters are
//! not stored in the GGUF and are filled in here the way Hugging Face's config
//! and llama.cpp define them:
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

use anyhow::{bail, Result};

use super::{Activation, Arch, LayerSpec, Meta, ModelConfig, RopeStyle};

const SLIDING_PATTERN: usize = 6;
const LOCAL_ROPE_BASE: f32 = 10_000.0;
const GLOBAL_ROPE_BASE: f32 = 1_000_000.0;

pub(super) fn config(meta: &Meta<'_>) -> Result<ModelConfig> {
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
        arch: Arch::Gemma3,
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
