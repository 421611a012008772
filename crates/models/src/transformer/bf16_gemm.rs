//! bf16 matrix products for CPU prefill on machines with AVX512-BF16: the
//! packed weight layout, the `vdpbf16ps` micro-kernel, and the blocked,
//! multi-threaded driver around it.
//!
//! Hand-written because no maintained Rust crate multiplies in bf16 on the
//! CPU: the `gemm` crate (candle's CPU matmul) converts f16/bf16 inputs to
//! f32 and runs its f32 kernels, so it cannot use `vdpbf16ps`, which does two
//! multiply-adds per f32 lane and so twice the work of an f32 FMA per
//! instruction. Prefill is where FIRST spends its time (one forward pass over
//! ~2k tokens per window), and there the f32 GEMM was 72 % of a SmolLM2
//! window. Inputs are rounded to bf16 (round to nearest even) and products are
//! accumulated in f32, as bf16 inference on GPUs does; the exact f32 path
//! stays for `WeightMode::DequantizedF32`.
//!
//! Layout: `C[m, n] = A[m, k] · B[n, k]ᵀ` (B a weight matrix `[out, in]`, or
//! the keys of an attention head). B is packed once into panels of [`NR`]
//! rows; within a panel, for each pair of columns `(2p, 2p + 1)` of B, the
//! panel holds [`NR`] 32-bit words, one per row, with the bf16 of column `2p`
//! in the low half. A is converted per call, [`MR`] rows at a time, into the
//! same pairs. The micro-kernel keeps an `MR × NR` block of C in 24 AVX-512
//! registers and, per pair, broadcasts one A word per row against two B
//! vectors.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use std::ops::Range;

use rayon::prelude::*;

/// Rows of B (columns of C) per panel: two vectors of 16 f32 lanes.
pub(crate) const NR: usize = 32;
/// Rows of A (of C) per micro-kernel call.
const MR: usize = 12;
/// Column pairs of a k-block: a panel's block of B is `NR × KC_PAIRS` words
/// (16 KB), which stays in L1 while the micro-kernel walks down A.
const KC_PAIRS: usize = 128;
/// Columns of A and B summed per k-block. A product whose columns start on a
/// multiple of this sums each output in the same order however far the
/// columns extend, so results do not depend on where a range ends.
pub(crate) const K_BLOCK: usize = 2 * KC_PAIRS;
/// Rows of A converted per block (`MC × KC_PAIRS` words, 96 KB: L2).
const MC: usize = 16 * MR;

/// Whether this CPU runs the bf16 kernels (AVX-512F with AVX512-BF16).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// bf16 bits of `x`, rounded to nearest even, subnormals flushed to a signed
/// zero (NaN stays NaN): what `vcvtne2ps2bf16` does, so a value converts the
/// same whether it falls in a vector or a scalar part of a row.
#[inline(always)]
fn bf16_bits(x: f32) -> u32 {
    let b = x.to_bits();
    if x.is_nan() {
        return (b >> 16) | 0x40;
    }
    if x.is_subnormal() {
        return (b >> 16) & 0x8000;
    }
    (b.wrapping_add(0x7fff + ((b >> 16) & 1))) >> 16
}

/// The word holding the bf16 pair `(lo, hi)`: `lo` in the low half.
#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    bf16_bits(lo) | (bf16_bits(hi) << 16)
}

/// A matrix `B[n, k]` packed for [`matmul_bt`].
#[derive(Clone)]
pub(crate) struct PackedB {
    n: usize,
    k: usize,
    /// Column pairs, `ceil(k / 2)`.
    pairs: usize,
    /// `[panel][pair][NR]` words; rows past `n` and the column past an odd
    /// `k` are zero.
    words: Vec<u32>,
}

impl std::fmt::Debug for PackedB {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedB({} x {}, bf16)", self.n, self.k)
    }
}

impl PackedB {
    /// Packs the row-major `b` (`n` rows of `k`).
    pub fn from_rows(b: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(b.len(), n * k, "PackedB::from_rows: {n} x {k} expected");
        let pairs = k.div_ceil(2);
        let panels = n.div_ceil(NR);
        let mut words = vec![0u32; panels * pairs * NR];
        words
            .par_chunks_mut(pairs * NR)
            .enumerate()
            .for_each(|(panel, dst)| {
                for lane in 0..NR.min(n - panel * NR) {
                    let row = &b[(panel * NR + lane) * k..][..k];
                    let (even, odd) = row.split_at(k - k % 2);
                    for (p, c) in even.chunks_exact(2).enumerate() {
                        dst[p * NR + lane] = pair(c[0], c[1]);
                    }
                    if let Some(&last) = odd.first() {
                        dst[(pairs - 1) * NR + lane] = pair(last, 0.0);
                    }
                }
            });
        Self { n, k, pairs, words }
    }

    /// Packs `Bᵀ` given the row-major `bt` (`k` rows of `n`): the values
    /// of an attention head, `[keys, head_dim]`, as B `[head_dim, keys]`.
    pub fn from_cols(bt: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(bt.len(), n * k, "PackedB::from_cols: {k} x {n} expected");
        let pairs = k.div_ceil(2);
        let panels = n.div_ceil(NR);
        let mut words = vec![0u32; panels * pairs * NR];
        for (panel, dst) in words.chunks_exact_mut(pairs * NR).enumerate() {
            let (j0, nr) = (panel * NR, NR.min(n - panel * NR));
            for (p, dst) in dst.chunks_exact_mut(NR).enumerate() {
                let lo = &bt[2 * p * n + j0..][..nr];
                if 2 * p + 1 < k {
                    let hi = &bt[(2 * p + 1) * n + j0..][..nr];
                    for ((d, &l), &h) in dst.iter_mut().zip(lo).zip(hi) {
                        *d = pair(l, h);
                    }
                } else {
                    for (d, &l) in dst.iter_mut().zip(lo) {
                        *d = pair(l, 0.0);
                    }
                }
            }
        }
        Self { n, k, pairs, words }
    }

    /// The whole matrix as a [`View`].
    pub fn all(&self) -> View<'_> {
        self.view(0..self.n, 0..self.k)
    }

    /// Rows `rows` and columns `cols` of B. `rows.start` must be a multiple
    /// of [`NR`] and `cols.start` even (panel and pair boundaries).
    pub fn view(&self, rows: Range<usize>, cols: Range<usize>) -> View<'_> {
        assert!(
            rows.start.is_multiple_of(NR) && cols.start.is_multiple_of(2),
            "PackedB::view: rows {rows:?} / columns {cols:?} off the panel grid"
        );
        assert!(rows.end <= self.n && cols.end <= self.k && rows.start <= rows.end);
        View {
            b: self,
            rows,
            cols,
        }
    }
}

/// A block of a [`PackedB`]: C gets one column per row of the view, and A's
/// column `j` meets B's column `cols.start + j`.
#[derive(Debug, Clone)]
pub(crate) struct View<'a> {
    b: &'a PackedB,
    rows: Range<usize>,
    cols: Range<usize>,
}

impl View<'_> {
    /// Columns of C (rows of the view).
    pub fn n(&self) -> usize {
        self.rows.len()
    }

    /// Columns of A (columns of the view).
    pub fn k(&self) -> usize {
        self.cols.len()
    }
}

/// `c = a · bᵀ` for row-major `a` (`m × k`) and `c` (`m × n`); `c` is
/// overwritten. Rows are split across rayon's threads. Panics unless
/// [`available`] and the sizes agree (callers check both).
pub(crate) fn matmul_bt(a: &[f32], m: usize, b: &PackedB, c: &mut [f32]) {
    let (n, k) = (b.n, b.k);
    assert!(
        available(),
        "bf16 matmul called on a CPU without AVX512-BF16"
    );
    assert_eq!(a.len(), m * k, "bf16 matmul: A is not {m} x {k}");
    assert_eq!(c.len(), m * n, "bf16 matmul: C is not {m} x {n}");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(0.0);
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    // Whole micro-kernel row blocks per thread, at least one.
    let rows_per = m.div_ceil(threads).div_ceil(MR) * MR;
    c.par_chunks_mut(rows_per * n)
        .zip(a.par_chunks(rows_per * k))
        .for_each(|(c, a)| {
            let rows = c.len() / n;
            matmul_serial(a, k, rows, &b.all(), c, n);
        });
}

/// `x · Bᵀ` as a candle op on a contiguous f32 CPU tensor `[..., k]`:
/// returns `[..., n]`. No backward pass (inference only).
pub(crate) struct MatmulBt<'a>(pub &'a PackedB);

impl CustomOp1 for MatmulBt<'_> {
    fn name(&self) -> &'static str {
        "matmul-bt-bf16"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let b = self.0;
        let CpuStorage::F32(all) = storage else {
            candle_core::bail!("matmul-bt-bf16: f32 input expected");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("matmul-bt-bf16: contiguous input expected");
        };
        let dims = layout.dims();
        if dims.last() != Some(&b.k) || !available() {
            candle_core::bail!(
                "matmul-bt-bf16: input {dims:?} against a {} x {} weight (AVX512-BF16: {})",
                b.n,
                b.k,
                available()
            );
        }
        let a = &all[start..end];
        let m = a.len() / b.k.max(1);
        let mut c = vec![0f32; m * b.n];
        matmul_bt(a, m, b, &mut c);
        let mut out = dims.to_vec();
        *out.last_mut().expect("rank >= 1") = b.n;
        Ok((CpuStorage::F32(c), Shape::from(out)))
    }
}

/// `c = a · viewᵀ` on the calling thread: `a` has `m` rows of stride `lda`
/// (its first `view.k()` columns are read), `c` has `m` rows of stride
/// `ldc` (its first `view.n()` columns are written). Panics unless
/// [`available`] and the slices are long enough.
pub(crate) fn matmul_serial(
    a: &[f32],
    lda: usize,
    m: usize,
    view: &View<'_>,
    c: &mut [f32],
    ldc: usize,
) {
    assert!(
        available(),
        "bf16 matmul called on a CPU without AVX512-BF16"
    );
    let (n, k) = (view.n(), view.k());
    assert!(
        lda >= k && ldc >= n,
        "bf16 matmul: strides {lda}/{ldc} below {k}/{n}"
    );
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        a.len() >= (m - 1) * lda + k,
        "bf16 matmul: A shorter than {m} rows"
    );
    assert!(
        c.len() >= (m - 1) * ldc + n,
        "bf16 matmul: C shorter than {m} rows"
    );
    if k == 0 {
        for row in c.chunks_mut(ldc).take(m) {
            row[..n].fill(0.0);
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX512-BF16 checked above; sizes checked above.
    unsafe {
        matmul_rows(a, lda, m, view, c, ldc)
    }
}

/// One thread's rows: k-blocks outermost (so a panel block is reused from
/// L1 down `MC` rows), then row blocks converted to bf16 pairs, then panels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn matmul_rows(a: &[f32], lda: usize, m: usize, view: &View<'_>, c: &mut [f32], ldc: usize) {
    let (b, n, k) = (view.b, view.n(), view.k());
    let pairs = k.div_ceil(2);
    let (panel0, pair0) = (view.rows.start / NR, view.cols.start / 2);
    let panels = n.div_ceil(NR);
    let mut a_pack = vec![0u32; MC * KC_PAIRS];
    let mut tile = [0f32; MR * NR];
    for p0 in (0..pairs).step_by(KC_PAIRS) {
        let kp = KC_PAIRS.min(pairs - p0);
        let first = p0 == 0;
        for i0 in (0..m).step_by(MC) {
            let mc = MC.min(m - i0);
            pack_a(a, lda, k, i0, mc, p0, kp, &mut a_pack);
            for panel in 0..panels {
                let b_block = &b.words[((panel0 + panel) * b.pairs + pair0 + p0) * NR..][..kp * NR];
                let j0 = panel * NR;
                let nr = NR.min(n - j0);
                for r0 in (0..mc).step_by(MR) {
                    let mr = MR.min(mc - r0);
                    let a_block = &a_pack[r0 * kp..][..MR * kp];
                    let c_at = (i0 + r0) * ldc + j0;
                    if mr == MR && nr == NR {
                        kernel(kp, a_block, b_block, c[c_at..].as_mut_ptr(), ldc, !first);
                    } else {
                        kernel(kp, a_block, b_block, tile.as_mut_ptr(), NR, false);
                        for r in 0..mr {
                            let dst = &mut c[c_at + r * ldc..][..nr];
                            let src = &tile[r * NR..][..nr];
                            if first {
                                dst.copy_from_slice(src);
                            } else {
                                dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Converts rows `i0..i0 + mc` of `a` (stride `lda`, `k` columns read),
/// pairs `p0..p0 + kp`, into
/// `[row][pair]` words (row blocks of `MR` rows, `kp` words per row); rows
/// past `mc` in the last block are zero.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn pack_a(
    a: &[f32],
    lda: usize,
    k: usize,
    i0: usize,
    mc: usize,
    p0: usize,
    kp: usize,
    dst: &mut [u32],
) {
    use std::arch::x86_64::*;
    let rows = mc.div_ceil(MR) * MR;
    for (row, dst) in dst[..rows * kp].chunks_exact_mut(kp).enumerate() {
        if row >= mc {
            dst.fill(0);
            continue;
        }
        let src = &a[(i0 + row) * lda..][..k];
        let col0 = 2 * p0;
        // Whole columns available for this block: up to 2·kp, fewer at the end.
        let avail = (k - col0).min(2 * kp);
        let full = avail / 32;
        for v in 0..full {
            let s = src.as_ptr().add(col0 + 32 * v);
            let lo = _mm512_loadu_ps(s);
            let hi = _mm512_loadu_ps(s.add(16));
            let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(dst.as_mut_ptr().add(16 * v).cast(), packed);
        }
        for (p, word) in dst.iter_mut().enumerate().take(kp).skip(16 * full) {
            let col = col0 + 2 * p;
            let lo = src[col];
            let hi = if col + 1 < k { src[col + 1] } else { 0.0 };
            *word = pair(lo, hi);
        }
    }
}

/// `C[MR, NR] (+)= A-block · B-block` over `kp` pairs; `c` has row stride
/// `ldc`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn kernel(kp: usize, a: &[u32], b: &[u32], c: *mut f32, ldc: usize, accumulate: bool) {
    use std::arch::x86_64::*;
    debug_assert!(a.len() >= kp * MR && b.len() >= kp * NR);
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    for p in 0..kp {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(p * NR).cast()));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(p * NR + 16).cast()));
        for (r, acc) in acc.iter_mut().enumerate() {
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(r * kp + p) as i32));
            acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
            acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let row = c.add(r * ldc);
        if accumulate {
            _mm512_storeu_ps(row, _mm512_add_ps(_mm512_loadu_ps(row), acc[0]));
            _mm512_storeu_ps(
                row.add(16),
                _mm512_add_ps(_mm512_loadu_ps(row.add(16)), acc[1]),
            );
        } else {
            _mm512_storeu_ps(row, acc[0]);
            _mm512_storeu_ps(row.add(16), acc[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|t| a[i * k + t] * b[j * k + t]).sum();
            }
        }
        c
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        // A small LCG: reproducible values in [-1, 1).
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
            })
            .collect()
    }

    #[test]
    fn views_and_transposed_packing_match_the_f32_product() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let (n, k) = (75, 41);
        let b = values(n * k, 3);
        // The same B packed from its transpose.
        let bt: Vec<f32> = (0..k * n).map(|i| b[(i % n) * k + i / n]).collect();
        for packed in [PackedB::from_rows(&b, n, k), PackedB::from_cols(&bt, k, n)] {
            // Rows 32..75 and columns 10..41 of B, against A of 5 rows with
            // a wider stride; C written with a wider stride too.
            let (rows, cols) = (32..75, 10..41);
            let (m, lda, ldc) = (5, 40, 50);
            let a = values(m * lda, 4);
            let mut c = vec![f32::NAN; m * ldc];
            matmul_serial(
                &a,
                lda,
                m,
                &packed.view(rows.clone(), cols.clone()),
                &mut c,
                ldc,
            );
            for i in 0..m {
                for (j, row) in rows.clone().enumerate() {
                    let want: f32 = cols
                        .clone()
                        .enumerate()
                        .map(|(t, col)| a[i * lda + t] * b[row * k + col])
                        .sum();
                    let got = c[i * ldc + j];
                    let bound = cols.len() as f32 * 2f32.powi(-8);
                    assert!((got - want).abs() <= bound, "({i}, {j}): {got} vs {want}");
                }
                // Columns of C past the view are left alone.
                assert!(c[i * ldc + rows.len()..(i + 1) * ldc]
                    .iter()
                    .all(|x| x.is_nan()));
            }
        }
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to even (1.0).
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: up.
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16_bits(-2.0), 0xc000);
        assert!(f32::from_bits(bf16_bits(f32::NAN) << 16).is_nan());
        assert_eq!(bf16_bits(1e-39), 0);
        assert_eq!(bf16_bits(-1e-39), 0x8000);
        assert_eq!(bf16_bits(f32::MIN_POSITIVE), 0x80);
    }

    #[test]
    fn vector_and_scalar_conversions_agree() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        // 37 columns: 32 go through the vector conversion, 5 through the
        // scalar one; the same values in both places.
        let mut row = values(37, 5);
        row[..5].copy_from_slice(&[1e-39, -1e-39, 1.0 + 1.0 / 256.0, f32::MIN_POSITIVE, -0.0]);
        row.copy_within(..5, 32);
        let mut dst = vec![0u32; MR * 19];
        // SAFETY: AVX512-BF16 checked above.
        unsafe { pack_a(&row, 37, 37, 0, 1, 0, 19, &mut dst) };
        let halves: Vec<u32> = dst[..19]
            .iter()
            .flat_map(|w| [w & 0xffff, w >> 16])
            .collect();
        assert_eq!(&halves[..5], &halves[32..37]);
        let scalar: Vec<u32> = row.iter().map(|&x| bf16_bits(x)).collect();
        assert_eq!(&halves[..37], &scalar[..]);
    }

    #[test]
    fn matches_f32_product_on_ragged_shapes() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        // Sizes that leave partial row blocks, panels, k-blocks and an odd k.
        for &(m, n, k) in &[(1, 1, 1), (13, 33, 7), (200, 70, 301), (25, 64, 256)] {
            let a = values(m * k, 1);
            let b = values(n * k, 2);
            let packed = PackedB::from_rows(&b, n, k);
            let mut c = vec![f32::NAN; m * n];
            matmul_bt(&a, m, &packed, &mut c);
            let want = naive(&a, &b, m, n, k);
            for (i, (got, want)) in c.iter().zip(&want).enumerate() {
                // Each input is rounded by at most 2^-9 relative, so a
                // product by at most ~2^-8; the terms are below 1 in size.
                let bound = k as f32 * 2f32.powi(-8) + 1e-5;
                assert!(
                    (got - want).abs() <= bound,
                    "({m}x{n}x{k}) element {i}: {got} vs {want}"
                );
            }
            // Exact when the inputs are already bf16 values.
            let a16: Vec<f32> = a
                .iter()
                .map(|&x| f32::from_bits(bf16_bits(x) << 16))
                .collect();
            let b16: Vec<f32> = b
                .iter()
                .map(|&x| f32::from_bits(bf16_bits(x) << 16))
                .collect();
            let want16 = naive(&a16, &b16, m, n, k);
            for (got, want) in c.iter().zip(&want16) {
                assert!(
                    (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "{got} vs {want}"
                );
            }
        }
    }
}
