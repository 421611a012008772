//! The causal softmax of inference attention on the CPU, fused: scale, causal
//! (and sliding-window) mask and softmax in one pass over the score matrix.
//!
//! Hand-written because candle's CPU path takes three passes and three
//! allocations (scale, mask add, softmax) and its softmax calls the scalar
//! libm `expf` per element: that `expf` alone was 13 % of a SmolLM2 prefill
//! in `perf`. Here only the keys a query can see are exponentiated, with a
//! polynomial `exp` written so the compiler vectorizes it, compiled for
//! AVX-512 and AVX2 and chosen at run time. Training keeps candle's
//! differentiable ops, and CUDA keeps candle's kernels.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Which keys each row of a score matrix may see.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CausalRows {
    /// Rows per query block: row `r` (of every leading batch/head index) is
    /// query `r % rows`.
    pub rows: usize,
    /// Key index (in the score matrix) of the position of query 0.
    pub first_query_key: usize,
    /// Sliding window: query at key index `q` sees keys `k` with `q - k < w`.
    pub window: Option<usize>,
    /// Multiplier of the raw scores.
    pub scale: f32,
}

impl CausalRows {
    /// The visible key range of query `r`, `lo..=hi`.
    fn visible(&self, r: usize) -> (usize, usize) {
        let hi = self.first_query_key + r;
        let lo = self.window.map_or(0, |w| (hi + 1).saturating_sub(w));
        (lo, hi)
    }
}

/// `softmax(scale · scores + causal mask)` over the last dimension of
/// contiguous f32 CPU `scores` `[..., rows, keys]`; masked keys get exactly 0.
pub(crate) fn causal_softmax(scores: &Tensor, rows: CausalRows) -> candle_core::Result<Tensor> {
    scores.apply_op1_no_bwd(&rows)
}

impl CustomOp1 for CausalRows {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(all) = storage else {
            candle_core::bail!("causal-softmax: f32 scores expected");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("causal-softmax: contiguous scores expected");
        };
        let src = &all[start..end];
        let keys = layout.dims().last().copied().unwrap_or(0);
        let rows_total = src.len().checked_div(keys).unwrap_or(0);
        if keys == 0 || self.rows == 0 || rows_total % self.rows != 0 {
            candle_core::bail!(
                "causal-softmax: shape {:?} does not hold rows of {}",
                layout.dims(),
                self.rows
            );
        }
        let (_, last_hi) = self.visible(self.rows - 1);
        if last_hi >= keys {
            candle_core::bail!(
                "causal-softmax: query {} sees key {last_hi} of only {keys}",
                self.rows - 1
            );
        }
        let mut dst = vec![0f32; src.len()];
        dst.par_chunks_mut(keys)
            .zip(src.par_chunks(keys))
            .enumerate()
            .for_each(|(i, (d, s))| {
                let (lo, hi) = self.visible(i % self.rows);
                softmax_row(&s[lo..=hi], &mut d[lo..=hi], self.scale);
            });
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

/// `dst = softmax(scale · src)`.
pub(crate) fn softmax_row(src: &[f32], dst: &mut [f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked just above.
            return unsafe { softmax_row_avx512(src, dst, scale) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            return unsafe { softmax_row_avx2(src, dst, scale) };
        }
    }
    softmax_row_portable(src, dst, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn softmax_row_avx512(src: &[f32], dst: &mut [f32], scale: f32) {
    softmax_row_portable(src, dst, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn softmax_row_avx2(src: &[f32], dst: &mut [f32], scale: f32) {
    softmax_row_portable(src, dst, scale)
}

/// Lanes of the explicit accumulators (a multiple of every SIMD width).
const LANES: usize = 16;

#[inline(always)]
fn softmax_row_portable(src: &[f32], dst: &mut [f32], scale: f32) {
    debug_assert_eq!(src.len(), dst.len());
    // Maximum, in LANES independent lanes so the loop vectorizes.
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = src.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    let mut max = tail
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    for m in lanes {
        max = if m > max { m } else { max };
    }
    let shift = max * scale;
    // Exponentials and their sum.
    let mut sums = [0f32; LANES];
    let mut d_chunks = dst.chunks_exact_mut(LANES);
    let mut s_chunks = src.chunks_exact(LANES);
    for (d, s) in (&mut d_chunks).zip(&mut s_chunks) {
        for ((o, &x), acc) in d.iter_mut().zip(s).zip(sums.iter_mut()) {
            let e = exp_nonpositive(x * scale - shift);
            *o = e;
            *acc += e;
        }
    }
    let mut sum = 0f32;
    for (o, &x) in d_chunks
        .into_remainder()
        .iter_mut()
        .zip(s_chunks.remainder())
    {
        let e = exp_nonpositive(x * scale - shift);
        *o = e;
        sum += e;
    }
    sum += sums.iter().sum::<f32>();
    let inv = 1.0 / sum;
    for o in dst.iter_mut() {
        *o *= inv;
    }
}

/// `e^x` for `x <= 0` (a softmax after subtracting the maximum), relative
/// error about 2e-7; arguments below -87 give about 1e-38 instead of a
/// subnormal. Branch-free so that loops over it vectorize: `x = n·ln2 + r`
/// with `|r| <= ln2/2`, a degree-6 Taylor polynomial for `e^r`, and `2^n`
/// built in the exponent bits.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n·LN2_HI is exact for the n that occur.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 · 2^23: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = if x < -87.0 { -87.0 } else { x };
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // n sits in the low bits of t; n + 127 shifted into the exponent is 2^n.
    let n_bits = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let pow2 = f32::from_bits((n_bits.wrapping_add(127) << 23) as u32);
    p * pow2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transformer::test_support::{additive_mask, max_abs_diff};
    use candle_core::{Device, D};

    #[test]
    fn exp_matches_std_on_the_softmax_range() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let want = x.exp();
            let got = exp_nonpositive(x);
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-1000.0) < 1e-37);
    }

    /// The fused op against candle's scale + additive mask + softmax, with
    /// and without a sliding window, rows longer and shorter than LANES.
    #[test]
    fn fused_softmax_equals_masked_softmax() {
        let dev = Device::Cpu;
        for (rows, keys, first, window) in [
            (5, 9, 4, None),
            (37, 70, 33, None),
            (40, 90, 50, Some(7)),
            (1, 1, 0, None),
        ] {
            let scores = Tensor::randn(0f32, 3.0, (2, 3, rows, keys), &dev).unwrap();
            let spec = CausalRows {
                rows,
                first_query_key: first,
                window,
                scale: 0.125,
            };
            let got = causal_softmax(&scores, spec).unwrap();
            let scores = scores.clone();
            let mask = additive_mask(rows, keys, |r| spec.visible(r));
            let masked = (scores * 0.125).unwrap().broadcast_add(&mask).unwrap();
            let want = candle_nn::ops::softmax(&masked, D::Minus1).unwrap();
            let diff = max_abs_diff(&got, &want);
            assert!(diff < 1e-6, "rows {rows} keys {keys}: {diff}");
        }
    }

    #[test]
    fn rows_past_the_keys_are_refused() {
        let scores = Tensor::zeros((4, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
        let spec = CausalRows {
            rows: 4,
            first_query_key: 2,
            window: None,
            scale: 1.0,
        };
        assert!(causal_softmax(&scores, spec).is_err());
    }
}
