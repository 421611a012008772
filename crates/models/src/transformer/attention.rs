//! Self-attention of one layer: queries, keys and values from their
//! projections, q/k norms and RoPE, the KV cache, and the scores/softmax/values
//! product on the path that fits the call (fused bf16 on AVX512-BF16 CPUs,
//! the fused f32 causal softmax with block-causal key skipping on other CPUs,
//! candle's ops for training and CUDA), plus the causal masks.

use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};

use super::norm::{rms_norm, rms_norm_train};
use super::projection::Projection;
use super::weights::Linear;
use super::{bf16_attention, softmax, train_softmax, with_bias, CausalLm, Layer, RopeStyle};

/// Queries per block of the bf16 CPU attention op, and of the block-causal
/// inference attention on CUDA (chunks longer than a block skip the keys the
/// block cannot see).
const ATTENTION_BLOCK: usize = 256;

/// Queries per block of the block-causal f32 attention on the CPU: smaller
/// blocks compute fewer masked scores (a block wastes about half a block of
/// keys per query), and at 128 the products over a 1.8k-token SmolLM2 prompt
/// still run at full speed; 128 was 4 % faster per window than 256 and
/// level with 64 on a Zen 3 (BENCHMARKS.md, "CPUs without AVX512-BF16").
const CPU_F32_ATTENTION_BLOCK: usize = 128;

impl CausalLm {
    /// Self-attention of one layer over `batch` sequences; `proj` applies a
    /// projection (plus its adapter when training); `kernel`: a short call
    /// (decoding) that uses the quantized kernels; `train` selects
    /// differentiable kernels.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        batch: usize,
        slot: &mut Option<(Tensor, Tensor)>,
        (cos, sin): (&Tensor, &Tensor),
        (k0, mask): (usize, &Tensor),
        proj: &dyn Fn(Projection, &Linear, &Tensor) -> Result<Tensor>,
        kernel: bool,
        train: bool,
        last_only: bool,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (hd, nh, nkv) = (c.head_dim, c.n_heads, c.n_kv_heads);
        let s = x.dim(0)? / batch;
        // [batch·rows, n·hd] → [batch, n, rows, hd]
        let heads_of = |t: Tensor, n: usize, rows: usize| -> Result<Tensor> {
            Ok(t.reshape((batch, rows, n, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let heads = |t: Tensor, n: usize| heads_of(t, n, s);
        // Queries: of every position, or of the last one only (its keys and
        // values are still computed for all positions, for the cache).
        let (xq, q_rows, cos_q, sin_q) = if last_only {
            (
                x.narrow(0, s - 1, 1)?,
                1,
                cos.narrow(0, s - 1, 1)?,
                sin.narrow(0, s - 1, 1)?,
            )
        } else {
            (x.clone(), s, cos.clone(), sin.clone())
        };
        let mut q = heads_of(
            with_bias(proj(Projection::Q, &layer.wq, &xq)?, &layer.bq)?,
            nh,
            q_rows,
        )?;
        let mut k = heads(
            with_bias(proj(Projection::K, &layer.wk, x)?, &layer.bk)?,
            nkv,
        )?;
        let v = heads(
            with_bias(proj(Projection::V, &layer.wv, x)?, &layer.bv)?,
            nkv,
        )?;
        if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
            if train {
                q = rms_norm_train(&q, qn, c.rms_eps)?;
                k = rms_norm_train(&k, kn, c.rms_eps)?;
            } else {
                q = rms_norm(&q, qn, c.rms_eps)?;
                k = rms_norm(&k, kn, c.rms_eps)?;
            }
        }
        let rope = |t: &Tensor, cos: &Tensor, sin: &Tensor| -> Result<Tensor> {
            Ok(match (c.rope_style, train) {
                (RopeStyle::Interleaved, false) => candle_nn::rotary_emb::rope_i(t, cos, sin)?,
                (RopeStyle::HalfSplit, false) => candle_nn::rotary_emb::rope(t, cos, sin)?,
                (RopeStyle::Interleaved, true) => candle_nn::rotary_emb::rope_i_slow(t, cos, sin)?,
                (RopeStyle::HalfSplit, true) => candle_nn::rotary_emb::rope_slow(t, cos, sin)?,
            })
        };
        let q = rope(&q, &cos_q, &sin_q)?;
        let k = rope(&k, cos, sin)?;
        let (k_all, v_all) = match slot.take() {
            Some((kc, vc)) => (Tensor::cat(&[&kc, &k], 2)?, Tensor::cat(&[&vc, &v], 2)?),
            None => (k, v),
        };
        if !train {
            *slot = Some((k_all.clone(), v_all.clone()));
        }
        let total = k_all.dim(2)?;
        if !train && !kernel && self.bf16_attention() {
            // All keys, at their absolute positions (the op applies the
            // sliding window itself): its summation order then depends only
            // on positions, not on where the chunk or cached prefix starts.
            let out = bf16_attention::CausalAttention {
                first_query_key: total - q_rows,
                window: layer.spec.sliding_window,
                scale: c.attn_scale as f32,
                block: ATTENTION_BLOCK,
            }
            .forward(&q, &k_all, &v_all)?;
            return with_bias(proj(Projection::O, &layer.wo, &out)?, &layer.bo);
        }
        let (k_use, v_use) = if k0 > 0 {
            (
                k_all.narrow(2, k0, total - k0)?,
                v_all.narrow(2, k0, total - k0)?,
            )
        } else {
            (k_all, v_all)
        };
        let tk = total - k0;
        let group = nh / nkv;
        if last_only {
            // One query per head against all visible keys: the fused softmax
            // with a single row per head.
            ensure!(
                !train && self.fused_softmax(),
                "last-position attention needs the fused CPU softmax"
            );
            let q = q.reshape((batch, nkv, group, hd))?;
            let probs = softmax::causal_softmax(
                &q.matmul(&k_use.t()?)?,
                softmax::CausalRows {
                    rows: 1,
                    first_query_key: tk - 1,
                    window: layer.spec.sliding_window,
                    scale: c.attn_scale as f32,
                },
            )?;
            let out = probs
                .matmul(&v_use.contiguous()?)?
                .reshape((batch, nh * hd))?;
            return with_bias(proj(Projection::O, &layer.wo, &out)?, &layer.bo);
        }
        if !train && s > self.attention_block() {
            let out = self.block_causal_attention(
                layer,
                &q,
                (&k_use, &v_use),
                (batch, s, total - s, k0),
                mask,
            )?;
            return with_bias(proj(Projection::O, &layer.wo, &out)?, &layer.bo);
        }
        // Query heads of one kv head are adjacent: [batch, nkv, group*s, hd].
        let q = q.reshape((batch, nkv, group * s, hd))?;
        if !train && self.fused_softmax() {
            let scores = q.matmul(&k_use.t()?)?;
            let probs = softmax::causal_softmax(
                &scores,
                softmax::CausalRows {
                    rows: s,
                    first_query_key: total - s - k0,
                    window: layer.spec.sliding_window,
                    scale: c.attn_scale as f32,
                },
            )?;
            let out = probs
                .matmul(&v_use.contiguous()?)?
                .reshape((batch, nh, s, hd))?
                .transpose(1, 2)?
                .reshape((batch * s, nh * hd))?;
            return with_bias(proj(Projection::O, &layer.wo, &out)?, &layer.bo);
        }
        // The scale goes on the queries, a score matrix's 1/keys of the work
        // (and one pass fewer in the backward pass).
        let q = (q * c.attn_scale)?;
        let mut scores = q.matmul(&k_use.t()?)?;
        if let Some(cap) = c.attn_logit_softcap {
            scores = ((scores / cap)?.tanh()? * cap)?;
        }
        let scores = scores
            .reshape((batch, nkv, group, s, tk))?
            .broadcast_add(mask)?;
        let probs = if train {
            train_softmax::softmax_last_dim(&scores)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        let probs = probs.reshape((batch, nkv, group * s, tk))?;
        let out = probs.matmul(&v_use.contiguous()?)?;
        let out = out
            .reshape((batch, nh, s, hd))?
            .transpose(1, 2)?
            .reshape((batch * s, nh * hd))?;
        with_bias(proj(Projection::O, &layer.wo, &out)?, &layer.bo)
    }

    /// Inference attention for a long chunk, one block of
    /// [`CausalLm::attention_block`] queries at a time over only the keys some query
    /// of the block can see (causal, and the sliding window where the layer
    /// has one). Skipping the masked keys halves the score and softmax work
    /// of a prefill and keeps each score matrix small; the result equals the
    /// full masked computation, since masked keys get probability exactly 0.
    /// `q: [batch, heads, s, hd]`, `k`/`v: [batch, kv_heads, keys, hd]`
    /// (keys from absolute position `k0`), `mask: [s, keys]`; returns
    /// `[batch · s, heads · hd]`.
    pub(super) fn block_causal_attention(
        &self,
        layer: &Layer,
        q: &Tensor,
        (k, v): (&Tensor, &Tensor),
        (batch, s, offset, k0): (usize, usize, usize, usize),
        mask: &Tensor,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (hd, nh, nkv) = (c.head_dim, c.n_heads, c.n_kv_heads);
        let group = nh / nkv;
        let q = q.reshape((batch, nkv, group, s, hd))?;
        let block = self.attention_block();
        let mut outs = Vec::with_capacity(s.div_ceil(block));
        for q0 in (0..s).step_by(block) {
            let len = block.min(s - q0);
            let first_key = match layer.spec.sliding_window {
                Some(w) => (offset + q0 + 1).saturating_sub(w),
                None => 0,
            };
            let start = first_key.saturating_sub(k0);
            let keys = offset + q0 + len - k0 - start;
            let qb = q
                .narrow(3, q0, len)?
                .contiguous()?
                .reshape((batch, nkv, group * len, hd))?;
            let kb = k.narrow(2, start, keys)?;
            let vb = v.narrow(2, start, keys)?.contiguous()?;
            if self.fused_softmax() {
                let probs = softmax::causal_softmax(
                    &qb.matmul(&kb.t()?)?,
                    softmax::CausalRows {
                        rows: len,
                        first_query_key: offset + q0 - k0 - start,
                        window: layer.spec.sliding_window,
                        scale: c.attn_scale as f32,
                    },
                )?;
                outs.push(probs.matmul(&vb)?.reshape((batch, nkv, group, len, hd))?);
                continue;
            }
            let mut scores = (qb.matmul(&kb.t()?)? * c.attn_scale)?;
            if let Some(cap) = c.attn_logit_softcap {
                scores = ((scores / cap)?.tanh()? * cap)?;
            }
            let mb = mask.narrow(0, q0, len)?.narrow(1, start, keys)?;
            let scores = scores
                .reshape((batch, nkv, group, len, keys))?
                .broadcast_add(&mb)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?.reshape((
                batch,
                nkv,
                group * len,
                keys,
            ))?;
            outs.push(probs.matmul(&vb)?.reshape((batch, nkv, group, len, hd))?);
        }
        Ok(Tensor::cat(&outs, 3)?
            .reshape((batch, nh, s, hd))?
            .transpose(1, 2)?
            .reshape((batch * s, nh * hd))?)
    }

    /// Queries per block of [`CausalLm::block_causal_attention`].
    pub(super) fn attention_block(&self) -> usize {
        if self.device.is_cpu() {
            CPU_F32_ATTENTION_BLOCK
        } else {
            ATTENTION_BLOCK
        }
    }

    /// Whether inference attention uses the fused CPU softmax (`softmax`
    /// module): on the CPU, for models without an attention logit soft-cap.
    pub(super) fn fused_softmax(&self) -> bool {
        self.device.is_cpu() && self.config.attn_logit_softcap.is_none()
    }

    /// Whether prefill attention runs in bf16 (`bf16_attention`): the fused
    /// CPU path of a quantized-mode model on a CPU with AVX512-BF16, like the
    /// projections around it (f32 mode stays exact).
    pub(super) fn bf16_attention(&self) -> bool {
        self.fused_softmax() && self.bf16_prefill()
    }
}

/// Causal (and sliding-window) additive mask for queries at absolute
/// positions `offset..offset+s`. Keys before the returned first index are
/// outside every query's window and are left out; the mask is
/// `[s, offset + s - k0]`.
pub(super) fn attention_mask(
    offset: usize,
    s: usize,
    window: Option<usize>,
    dev: &Device,
) -> Result<(usize, Tensor)> {
    let total = offset + s;
    let k0 = match window {
        Some(w) => (offset + 1).saturating_sub(w),
        None => 0,
    };
    let tk = total - k0;
    let mut m = vec![0f32; s * tk];
    for i in 0..s {
        let p = offset + i;
        for (j, slot) in m[i * tk..(i + 1) * tk].iter_mut().enumerate() {
            let k = k0 + j;
            let visible = k <= p && window.is_none_or(|w| p - k < w);
            if !visible {
                *slot = f32::NEG_INFINITY;
            }
        }
    }
    Ok((k0, Tensor::from_vec(m, (s, tk), dev)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_mask_matches_q_minus_k_below_window() {
        // 6 positions, window 3, queries 4 and 5 after 4 cached positions.
        let (k0, m) = attention_mask(4, 2, Some(3), &Device::Cpu).unwrap();
        assert_eq!(k0, 2);
        let m = m.to_vec2::<f32>().unwrap();
        // query 4 sees keys 2,3,4; query 5 sees 3,4,5.
        let vis: Vec<Vec<bool>> = m
            .iter()
            .map(|r| r.iter().map(|v| *v == 0.0).collect())
            .collect();
        assert_eq!(
            vis,
            vec![vec![true, true, true, false], vec![false, true, true, true]]
        );
        let (k0, m) = attention_mask(0, 3, None, &Device::Cpu).unwrap();
        assert_eq!(k0, 0);
        let m = m.to_vec2::<f32>().unwrap();
        assert_eq!(m[0][1], f32::NEG_INFINITY);
        assert_eq!(m[2][0], 0.0);
    }
}
