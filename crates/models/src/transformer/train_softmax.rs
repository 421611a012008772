//! The softmax of training attention: candle's fused last-dimension softmax
//! kernel for the forward pass, with a backward pass attached.
//!
//! candle's fused `softmax_last_dim` has no gradient, so training used the
//! composed softmax (max, subtract, exp, sum, divide), whose forward and
//! backward each walk the `[batch, heads, tokens, tokens]` score tensor about
//! a dozen times, every op's gradient adding another zero-filled buffer. Here
//! the forward is the fused kernel (one read, one write) and the backward is
//! the closed form `∂L/∂x = y ⊙ (g − Σ g ⊙ y)` over the last dimension (four
//! passes). The gradient is attached by a two-input op that hands the fused
//! result through (one copy) and whose backward sends the closed form to the
//! scores: no device code of our own, so CPU and CUDA share it.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, D};

/// Softmax over the last dimension of `scores`, differentiable. Equal to
/// `candle_nn::ops::softmax(scores, D::Minus1)` up to rounding.
pub(crate) fn softmax_last_dim(scores: &Tensor) -> Result<Tensor> {
    let scores = scores.contiguous()?;
    let probs = candle_nn::ops::softmax_last_dim(&scores.detach())?;
    scores.apply_op2(&probs, WithSoftmaxGrad)
}

/// `(scores, probs) → probs`, whose gradient flows to `scores` as the
/// softmax Jacobian applied to the incoming gradient.
struct WithSoftmaxGrad;

impl CustomOp2 for WithSoftmaxGrad {
    fn name(&self) -> &'static str {
        "softmax-last-dim-with-grad"
    }

    fn cpu_fwd(
        &self,
        _scores: &CpuStorage,
        scores_layout: &Layout,
        probs: &CpuStorage,
        probs_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        check_shapes(scores_layout, probs_layout)?;
        Ok((probs.try_clone(probs_layout)?, probs_layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _scores: &candle_core::CudaStorage,
        scores_layout: &Layout,
        probs: &candle_core::CudaStorage,
        probs_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        check_shapes(scores_layout, probs_layout)?;
        Ok((probs.try_clone(probs_layout)?, probs_layout.shape().clone()))
    }

    fn bwd(
        &self,
        _scores: &Tensor,
        _probs: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dot = (grad_res * res)?.sum_keepdim(D::Minus1)?;
        let grad = (grad_res.broadcast_sub(&dot)? * res)?;
        Ok((Some(grad), None))
    }
}

/// The probabilities must be the fresh, contiguous output of the softmax of
/// scores of the same shape (the forward pass copies their buffer whole).
fn check_shapes(scores: &Layout, probs: &Layout) -> Result<()> {
    if scores.shape() != probs.shape()
        || probs.contiguous_offsets() != Some((0, probs.shape().elem_count()))
    {
        candle_core::bail!(
            "softmax-with-grad: probabilities {:?} do not match scores {:?}",
            probs.shape(),
            scores.shape()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transformer::test_support::{additive_mask, max_abs_diff};
    use candle_core::{DType, Device, IndexOp, Var};

    /// Gradients of `sum(w ⊙ softmax(x))` through both softmaxes.
    fn grads(x: &Tensor, w: &Tensor, fused: bool) -> (Tensor, Tensor) {
        let v = Var::from_tensor(x).unwrap();
        let y = if fused {
            softmax_last_dim(v.as_tensor()).unwrap()
        } else {
            candle_nn::ops::softmax(v.as_tensor(), D::Minus1).unwrap()
        };
        let loss = (&y * w).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap().get(v.as_tensor()).unwrap().clone();
        (y, g)
    }

    /// Both softmaxes and their gradients agree on `x` with weights `w`.
    fn assert_matches_composed(x: &Tensor, w: &Tensor) -> Tensor {
        let (y_ref, g_ref) = grads(x, w, false);
        let (y, g) = grads(x, w, true);
        let (dy, dg) = (max_abs_diff(&y, &y_ref), max_abs_diff(&g, &g_ref));
        assert!(dy < 1e-6, "forward differs by {dy}");
        assert!(dg < 1e-5, "gradient differs by {dg}");
        g
    }

    #[test]
    fn matches_the_composed_softmax_and_its_gradient() {
        let dev = Device::Cpu;
        // Leading batch/head dimensions, keys masked as in causal attention
        // (query q sees keys 0..=q + 2).
        let mask = additive_mask(5, 7, |q| (0, q + 2));
        let x = Tensor::randn(0f32, 3f32, (2, 3, 5, 7), &dev)
            .unwrap()
            .broadcast_add(&mask)
            .unwrap();
        let w = Tensor::randn(0f32, 1f32, (2, 3, 5, 7), &dev).unwrap();
        let g = assert_matches_composed(&x, &w);
        // Masked keys get no gradient.
        let masked = g.i((.., .., 0, 3..)).unwrap().abs().unwrap();
        assert_eq!(masked.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        // A gradient that is constant along the last dimension cancels.
        let ones = Tensor::ones((2, 3, 5, 7), DType::F32, &dev).unwrap();
        let (_, g_const) = grads(&x, &ones, true);
        assert!(max_abs_diff(&g_const, &ones.zeros_like().unwrap()) < 1e-6);
    }

    #[test]
    fn non_contiguous_scores_are_accepted() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1f32, (4, 6), &dev)
            .unwrap()
            .t()
            .unwrap();
        let w = Tensor::randn(0f32, 1f32, (6, 4), &dev).unwrap();
        assert_matches_composed(&x, &w);
    }
}
