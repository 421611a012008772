//! RMSNorm, fused for inference and composed of elementary ops for the
//! differentiable training pass.

use anyhow::Result;
use candle_core::Tensor;

/// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) * w`.
pub(super) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32)?)
}

/// [`rms_norm`] from elementary ops, so gradients flow through it (candle's
/// fused kernel has no backward pass).
pub(super) fn rms_norm_train(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(candle_nn::ops::rms_norm_slow(x, w, eps as f32)?)
}
