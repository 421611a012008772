//! Causal self-attention of a CPU prefill with bf16 matrix products: scores,
//! masked softmax and the weighted sum of values for one layer in a single
//! candle op, on machines with AVX512-BF16 (`bf16_gemm`).
//!
//! Hand-written for the same reason as `bf16_gemm`: after the projections
//! moved to bf16, candle's f32 products in attention were the largest cost of
//! a SmolLM2 window (28 %). Work is split into units of one query head and
//! one block of queries, which run in parallel; each unit computes scores
//! only against the keys its queries can see (causal, and the sliding window
//! where the layer has one), the fused softmax of `softmax`, then the values.
//! Keys and values are packed once per kv head and shared by the heads of
//! its group. Inference only (no backward pass); training and the f32 weight
//! mode keep candle's f32 kernels.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::bf16_gemm::{self, PackedB, K_BLOCK};
use super::softmax::softmax_row;

/// The attention of one layer over a chunk of queries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CausalAttention {
    /// Key index (in the keys given) of query 0's position.
    pub first_query_key: usize,
    /// Sliding window: the query at key index `q` sees keys `k` with
    /// `q - k < w`.
    pub window: Option<usize>,
    /// Multiplier of the raw scores.
    pub scale: f32,
    /// Queries per unit of work.
    pub block: usize,
}

impl CausalAttention {
    /// `q: [batch, heads, s, hd]`, `k`/`v: [batch, kv_heads, keys, hd]` (f32,
    /// CPU) → `[batch · s, heads · hd]`, the layout the output projection
    /// reads. `heads` must be a multiple of `kv_heads`.
    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
        q.contiguous()?
            .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, self)
    }

    /// Visible keys `lo..=hi` of the query at key index `at`.
    fn visible(&self, at: usize) -> (usize, usize) {
        let lo = self.window.map_or(0, |w| (at + 1).saturating_sub(w));
        (lo, at)
    }
}

fn f32_slice<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(all) = storage else {
        candle_core::bail!("bf16 attention: f32 {what} expected");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("bf16 attention: contiguous {what} expected");
    };
    Ok(&all[start..end])
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "causal-attention-bf16"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, heads, s, hd) = ql.shape().dims4()?;
        let (kb, kv_heads, keys, khd) = kl.shape().dims4()?;
        if !bf16_gemm::available()
            || kb != batch
            || khd != hd
            || vl.dims() != kl.dims()
            || kv_heads == 0
            || heads % kv_heads != 0
            || self.block == 0
            || self.first_query_key + s > keys
        {
            candle_core::bail!(
                "bf16 attention: q {:?}, k {:?}, v {:?}, first query at key {} (AVX512-BF16: {})",
                ql.dims(),
                kl.dims(),
                vl.dims(),
                self.first_query_key,
                bf16_gemm::available()
            );
        }
        let (q, k, v) = (
            f32_slice(qs, ql, "queries")?,
            f32_slice(ks, kl, "keys")?,
            f32_slice(vs, vl, "values")?,
        );
        let group = heads / kv_heads;
        let head_len = keys * hd;
        // Keys as B of the scores (`[keys, hd]`), values transposed as B of
        // the output (`[hd, keys]`), per (batch, kv head).
        let packed: Vec<(PackedB, PackedB)> = (0..batch * kv_heads)
            .into_par_iter()
            .map(|bh| {
                let kh = &k[bh * head_len..][..head_len];
                let vh = &v[bh * head_len..][..head_len];
                (
                    PackedB::from_rows(kh, keys, hd),
                    PackedB::from_cols(vh, keys, hd),
                )
            })
            .collect();
        let units: Vec<(usize, usize, usize)> = (0..batch)
            .flat_map(|b| {
                (0..heads).flat_map(move |h| (0..s).step_by(self.block).map(move |q0| (b, h, q0)))
            })
            .collect();
        let outputs: Vec<Vec<f32>> = units
            .par_iter()
            .map(|&(b, h, q0)| {
                let len = self.block.min(s - q0);
                let (keys_packed, values_packed) = &packed[b * kv_heads + h / group];
                let first = self.first_query_key + q0;
                let (lo, _) = self.visible(first);
                // Keys from a k-block boundary (also on the packing's panel
                // grid) to the block's last query: the weighted sum of
                // values then adds each key in the same order whichever
                // block, chunk or cached prefix a query comes in, so a query's
                // output does not depend on how the prompt was split.
                let key0 = lo / K_BLOCK * K_BLOCK;
                let key_end = first + len;
                let width = key_end - key0;
                let qh = &q[((b * heads + h) * s + q0) * hd..][..len * hd];
                let mut probs = vec![0f32; len * width];
                bf16_gemm::matmul_serial(
                    qh,
                    hd,
                    len,
                    &keys_packed.view(key0..key_end, 0..hd),
                    &mut probs,
                    width,
                );
                let mut row_scores = vec![0f32; width];
                for (r, row) in probs.chunks_exact_mut(width).enumerate() {
                    let (lo, hi) = self.visible(first + r);
                    let (lo, hi) = (lo - key0, hi - key0);
                    row_scores[lo..=hi].copy_from_slice(&row[lo..=hi]);
                    softmax_row(&row_scores[lo..=hi], &mut row[lo..=hi], self.scale);
                    row[..lo].fill(0.0);
                    row[hi + 1..].fill(0.0);
                }
                let mut out = vec![0f32; len * hd];
                bf16_gemm::matmul_serial(
                    &probs,
                    width,
                    len,
                    &values_packed.view(0..hd, key0..key_end),
                    &mut out,
                    hd,
                );
                out
            })
            .collect();
        // [batch, s, heads, hd]
        let mut dst = vec![0f32; batch * s * heads * hd];
        for (&(b, h, q0), out) in units.iter().zip(&outputs) {
            for (r, row) in out.chunks_exact(hd).enumerate() {
                let at = ((b * s + q0 + r) * heads + h) * hd;
                dst[at..at + hd].copy_from_slice(row);
            }
        }
        Ok((CpuStorage::F32(dst), Shape::from((batch * s, heads * hd))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transformer::test_support::{additive_mask, max_abs_diff};
    use candle_core::{Device, Tensor, D};

    /// The plain masked attention in f32 candle ops.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, att: &CausalAttention) -> Tensor {
        let (batch, heads, s, hd) = q.dims4().unwrap();
        let (_, kv_heads, keys, _) = k.dims4().unwrap();
        let group = heads / kv_heads;
        let rep = |t: &Tensor| {
            t.unsqueeze(2)
                .unwrap()
                .expand((batch, kv_heads, group, keys, hd))
                .unwrap()
                .reshape((batch, heads, keys, hd))
                .unwrap()
        };
        let scores = (q.matmul(&rep(k).t().unwrap()).unwrap() * att.scale as f64).unwrap();
        let mask = additive_mask(s, keys, |r| att.visible(att.first_query_key + r));
        let probs =
            candle_nn::ops::softmax(&scores.broadcast_add(&mask).unwrap(), D::Minus1).unwrap();
        probs
            .matmul(&rep(v))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((batch * s, heads * hd))
            .unwrap()
    }

    #[test]
    fn matches_masked_f32_attention() {
        if !bf16_gemm::available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let dev = Device::Cpu;
        // 2 sequences, 6 query heads on 2 kv heads, 70 queries after 45
        // cached keys, blocks of 32; causal, then a sliding window of 40.
        let (batch, heads, kv_heads, s, cached, hd) = (2, 6, 2, 70, 45, 16);
        let q = Tensor::randn(0f32, 1.0, (batch, heads, s, hd), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (batch, kv_heads, cached + s, hd), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (batch, kv_heads, cached + s, hd), &dev).unwrap();
        for window in [None, Some(40)] {
            let att = CausalAttention {
                first_query_key: cached,
                window,
                scale: 0.25,
                block: 32,
            };
            let got = att.forward(&q, &k, &v).unwrap();
            let want = reference(&q, &k, &v, &att);
            let diff = max_abs_diff(&got, &want);
            // bf16 inputs (2^-9 relative) on unit-scale values.
            assert!(diff < 0.03, "window {window:?}: max difference {diff}");
        }
    }
}
