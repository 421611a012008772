//! The gated activation of the MLP on the CPU, fused: `act(gate) · up` in one
//! pass over two `[tokens, ffn]` tensors, for SiLU (llama, Qwen) and the tanh
//! GELU (Gemma).
//!
//! Hand-written because candle computes it as two ops (the activation, then
//! a multiply), each a pass over the tensors with its own allocation, and its
//! activations call scalar libm functions per element: `expf` for SiLU (with
//! the extra passes, 7 % of a SmolLM2 prefill), `expm1f` and `tanhf` for the
//! GELU (21 % of a Gemma-3 prefill in `perf`). Here both use the vectorizable
//! exponential of `softmax`. Inference only: training keeps candle's
//! differentiable ops.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::softmax::exp_nonpositive;

/// The activation applied to the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GateActivation {
    Silu,
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
    GeluTanh,
}

/// `act(gate) · up` for contiguous f32 CPU tensors of one shape.
pub(crate) fn gated(
    act: GateActivation,
    gate: &Tensor,
    up: &Tensor,
) -> candle_core::Result<Tensor> {
    gate.contiguous()?
        .apply_op2_no_bwd(&up.contiguous()?, &GatedOp(act))
}

struct GatedOp(GateActivation);

/// Elements per parallel task.
const CHUNK: usize = 16 * 1024;

impl CustomOp2 for GatedOp {
    fn name(&self) -> &'static str {
        "gated-activation"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(g), CpuStorage::F32(u)) = (gs, us) else {
            candle_core::bail!("gated-activation: f32 inputs expected");
        };
        let (Some((g0, g1)), Some((u0, u1))) = (gl.contiguous_offsets(), ul.contiguous_offsets())
        else {
            candle_core::bail!("gated-activation: contiguous inputs expected");
        };
        if gl.dims() != ul.dims() {
            candle_core::bail!(
                "gated-activation: shapes {:?} and {:?} differ",
                gl.dims(),
                ul.dims()
            );
        }
        let (g, u) = (&g[g0..g1], &u[u0..u1]);
        let mut out = vec![0f32; g.len()];
        out.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(o, (g, u))| gated_slice(self.0, o, g, u));
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }
}

/// `out = act(gate) · up`, compiled for AVX-512 and AVX2 and picked at run
/// time.
fn gated_slice(act: GateActivation, out: &mut [f32], gate: &[f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked just above.
            return unsafe { gated_avx512(act, out, gate, up) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            return unsafe { gated_avx2(act, out, gate, up) };
        }
    }
    gated_portable(act, out, gate, up)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn gated_avx512(act: GateActivation, out: &mut [f32], gate: &[f32], up: &[f32]) {
    gated_portable(act, out, gate, up)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gated_avx2(act: GateActivation, out: &mut [f32], gate: &[f32], up: &[f32]) {
    gated_portable(act, out, gate, up)
}

#[inline(always)]
fn gated_portable(act: GateActivation, out: &mut [f32], gate: &[f32], up: &[f32]) {
    // One loop per activation, so each vectorizes without a branch inside.
    match act {
        GateActivation::Silu => {
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = silu(g) * u;
            }
        }
        GateActivation::GeluTanh => {
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = gelu_tanh(g) * u;
            }
        }
    }
}

/// `x · sigmoid(x)`, with `e^{-|x|}` (never overflows) and a select instead
/// of a branch, so that loops over it vectorize.
#[inline(always)]
fn silu(x: f32) -> f32 {
    let t = exp_nonpositive(-x.abs());
    let sigmoid = if x >= 0.0 { 1.0 } else { t } / (1.0 + t);
    x * sigmoid
}

/// The tanh GELU, with `tanh(|u|) = (1 - e^{-2|u|}) / (1 + e^{-2|u|})`
/// (absolute error ~1e-7, which is what `1 + tanh` sees).
#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let u = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
    let t = exp_nonpositive(-2.0 * u.abs());
    let th = (1.0 - t) / (1.0 + t);
    let th = if u >= 0.0 { th } else { -th };
    0.5 * x * (1.0 + th)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transformer::test_support::max_abs_diff;
    use candle_core::Device;

    #[test]
    fn matches_candle_activation_times_up() {
        let dev = Device::Cpu;
        let gate = Tensor::randn(0f32, 4.0, (37, 129), &dev).unwrap();
        let up = Tensor::randn(0f32, 1.0, (37, 129), &dev).unwrap();
        for act in [GateActivation::Silu, GateActivation::GeluTanh] {
            let a = match act {
                GateActivation::Silu => candle_nn::ops::silu(&gate).unwrap(),
                GateActivation::GeluTanh => gate.gelu().unwrap(),
            };
            let want = (a * &up).unwrap();
            let got = gated(act, &gate, &up).unwrap();
            let diff = max_abs_diff(&got, &want);
            assert!(diff < 1e-5, "{act:?}: max difference {diff}");
        }
        // Extremes: no overflow or NaN.
        for (x, want) in [
            (-200.0f32, 0.0f32),
            (200.0, 200.0),
            (0.0, 0.0),
            (-1.0, -0.268_941_4),
        ] {
            assert!((silu(x) - want).abs() < 1e-5, "silu({x}) = {}", silu(x));
        }
        for (x, want) in [
            (-200.0f32, 0.0f32),
            (200.0, 200.0),
            (0.0, 0.0),
            (-1.0, -0.158_808),
        ] {
            assert!(
                (gelu_tanh(x) - want).abs() < 1e-5,
                "gelu({x}) = {}",
                gelu_tanh(x)
            );
        }
    }
}
