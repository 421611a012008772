//! Helpers shared by the unit tests of the CPU kernels and the training softmax: the plain additive
//! attention mask they are checked against, and the distance between results.

use candle_core::{Device, Tensor};

/// Largest `|a - b|` over two tensors of one shape.
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The additive mask `[rows, keys]`: 0 where the key lies in row `r`'s
/// inclusive range `visible(r)`, minus infinity elsewhere.
pub(crate) fn additive_mask(
    rows: usize,
    keys: usize,
    visible: impl Fn(usize) -> (usize, usize),
) -> Tensor {
    let mask: Vec<f32> = (0..rows)
        .flat_map(|r| {
            let (lo, hi) = visible(r);
            (0..keys).map(move |k| {
                if k >= lo && k <= hi {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (rows, keys), &Device::Cpu).unwrap()
}
