//! Rotary position embeddings: inverse-frequency tables and the cos/sin
//! tables of a range of positions (the rotation itself is candle's
//! `rotary_emb` ops).

use anyhow::Result;
use candle_core::{Device, Tensor};

/// Inverse frequencies `1 / (theta^(2i/d) · scale · factor_i)`, in f32 like
/// the reference.
pub(super) fn inv_freqs(
    head_dim: usize,
    theta: f32,
    scale: f32,
    factors: Option<&[f32]>,
) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let e = (2 * i) as f32 / head_dim as f32;
            let mut f = 1.0f32 / theta.powf(e);
            if scale != 1.0 {
                f /= scale;
            }
            if let Some(fs) = factors {
                f /= fs[i];
            }
            f
        })
        .collect()
}

/// `cos`/`sin` of `pos · inv_freq` for positions `offset..offset+n`, each
/// `[n, d/2]`.
pub(super) fn rope_tables(
    inv: &[f32],
    offset: usize,
    n: usize,
    dev: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = inv.len();
    let mut cos = Vec::with_capacity(n * half);
    let mut sin = Vec::with_capacity(n * half);
    for p in offset..offset + n {
        let pf = p as f32;
        for &f in inv {
            let a = f * pf;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    Ok((
        Tensor::from_vec(cos, (n, half), dev)?,
        Tensor::from_vec(sin, (n, half), dev)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inv_freqs_first_is_one() {
        let f = inv_freqs(64, 100_000.0, 1.0, None);
        assert_eq!(f.len(), 32);
        assert_eq!(f[0], 1.0);
        assert!((f[1] - 100_000f32.powf(-2.0 / 64.0)).abs() < 1e-9);
    }
}
