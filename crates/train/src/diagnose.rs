//! Data diagnostics from layer-wise gradients (`train --diagnose`): for a
//! sample of lists from each data source, the spectrum of the gradient each
//! list sends into each adapted layer. Work on post-training data reads data
//! quality from such spectra: data that teaches more tends to give smaller
//! gradient nuclear norms and larger effective ranks, layer by layer.
//!
//! What is measured: the gradient of one list's loss with respect to the
//! LoRA `B` matrices of fresh adapters (`B = 0`, `A` random), which is the
//! full weight's gradient `G = ∂L/∂W` projected onto the adapter's random
//! input subspace (`∂B = scale · G·Aᵀ`): a rank-`r` sketch of `G`, cheap to
//! decompose. Per projection: the singular values `σ` of `∂B` (square roots
//! of the eigenvalues of the `r × r` Gram matrix `∂Bᵀ∂B`), the nuclear norm
//! `Σσ` and the effective rank `exp(−Σ pᵢ ln pᵢ)`, `pᵢ = σᵢ / Σσ` (Roy and
//! Vetterli). A layer's figure is the mean over its projections; a source's
//! is the mean over its lists.
//!
//! The eigenvalues of the small symmetric Gram matrices come from a cyclic
//! Jacobi iteration written here: candle has no eigensolver, and a 16 × 16
//! symmetric matrix needs a few dozen lines, not a linear-algebra crate.

use std::collections::BTreeMap;

use anyhow::Result;
use candle_core::Tensor;
use firstrank_models::transformer::{CausalLm, Projection, TrainContext};
use serde::Serialize;

use crate::example::PreparedExample;
use crate::step::{accumulate_lora_gradients, LossSpec};

/// One layer's gradient spectrum, averaged over lists and projections.
#[derive(Debug, Clone, Serialize)]
pub struct LayerSpectrum {
    pub layer: usize,
    pub nuclear_norm: f64,
    pub effective_rank: f64,
}

/// Eigenvalues of the symmetric `n × n` matrix `a` (row-major), by cyclic
/// Jacobi rotations until the off-diagonal mass is negligible.
pub fn symmetric_eigenvalues(mut a: Vec<f64>, n: usize) -> Vec<f64> {
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum();
        let scale: f64 = (0..n)
            .map(|i| a[i * n + i] * a[i * n + i])
            .sum::<f64>()
            .max(1e-300);
        if off <= 1e-24 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let (app, aqq) = (a[p * n + p], a[q * n + q]);
                let theta = (aqq - app) / (2.0 * apq);
                // The smaller root of t² + 2θt − 1 = 0: tan of the rotation
                // that zeroes a[p][q].
                let sign = if theta >= 0.0 { 1.0 } else { -1.0 };
                let t = sign / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
            }
        }
    }
    (0..n).map(|i| a[i * n + i]).collect()
}

/// Nuclear norm and effective rank of a `[rows, cols]` matrix from the
/// eigenvalues of its Gram matrix.
pub fn spectrum_figures(m: &Tensor) -> Result<(f64, f64)> {
    let gram = m.t()?.matmul(m)?.to_dtype(candle_core::DType::F64)?;
    let n = gram.dim(0)?;
    let values = gram.flatten_all()?.to_vec1::<f64>()?;
    let sigma: Vec<f64> = symmetric_eigenvalues(values, n)
        .into_iter()
        .map(|e| e.max(0.0).sqrt())
        .collect();
    let nuclear: f64 = sigma.iter().sum();
    if nuclear <= 0.0 {
        return Ok((0.0, 0.0));
    }
    let entropy: f64 = sigma
        .iter()
        .filter(|&&s| s > 0.0)
        .map(|&s| {
            let p = s / nuclear;
            -p * p.ln()
        })
        .sum();
    Ok((nuclear, entropy.exp()))
}

/// Per-layer spectra of the adapter gradients of `examples`, one list at a
/// time, with the adapters of `ctx` (fresh: `B = 0`) on the `slots` keys in
/// their variables' order.
pub fn gradient_spectra(
    model: &CausalLm,
    ctx: &TrainContext<'_>,
    examples: &[PreparedExample],
    spec: &LossSpec<'_>,
    slots: &[(usize, Projection)],
) -> Result<Vec<LayerSpectrum>> {
    let mut sums: BTreeMap<usize, (f64, f64, usize)> = BTreeMap::new();
    for ex in examples {
        let mut grads: Vec<Option<Tensor>> = vec![None; 2 * slots.len()];
        accumulate_lora_gradients(model, ctx, &[ex], spec, 1.0, slots, &mut grads)?;
        for (j, (layer, _)) in slots.iter().enumerate() {
            // Slot 2j is A (zero gradient while B = 0), 2j + 1 is B.
            let Some(g) = &grads[2 * j + 1] else { continue };
            let (nuclear, rank) = spectrum_figures(g)?;
            let e = sums.entry(*layer).or_insert((0.0, 0.0, 0));
            e.0 += nuclear;
            e.1 += rank;
            e.2 += 1;
        }
    }
    Ok(sums
        .into_iter()
        .map(|(layer, (n, r, count))| LayerSpectrum {
            layer,
            nuclear_norm: n / count.max(1) as f64,
            effective_rank: r / count.max(1) as f64,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn jacobi_finds_the_eigenvalues_of_a_symmetric_matrix() {
        // [[2, 1], [1, 2]] has eigenvalues 1 and 3.
        let mut e = symmetric_eigenvalues(vec![2.0, 1.0, 1.0, 2.0], 2);
        e.sort_by(f64::total_cmp);
        assert!(
            (e[0] - 1.0).abs() < 1e-12 && (e[1] - 3.0).abs() < 1e-12,
            "{e:?}"
        );
        // A diagonal matrix is its own spectrum.
        let mut d = symmetric_eigenvalues(vec![5.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 7.0], 3);
        d.sort_by(f64::total_cmp);
        assert_eq!(d, vec![2.0, 5.0, 7.0]);
    }

    #[test]
    fn effective_rank_counts_equal_directions() {
        let dev = Device::Cpu;
        // Orthogonal columns of equal norm: rank 3, nuclear norm 3·2.
        let m = Tensor::new(
            &[[2f32, 0., 0.], [0., 2., 0.], [0., 0., 2.], [0., 0., 0.]],
            &dev,
        )
        .unwrap();
        let (nuclear, rank) = spectrum_figures(&m).unwrap();
        assert!(
            (nuclear - 6.0).abs() < 1e-5 && (rank - 3.0).abs() < 1e-5,
            "{nuclear} {rank}"
        );
        // One direction only: rank 1.
        let m = Tensor::new(&[[1f32, 2.], [2., 4.]], &dev).unwrap();
        let (_, rank) = spectrum_figures(&m).unwrap();
        assert!((rank - 1.0).abs() < 1e-4, "{rank}");
    }
}
