//! FIRST's training losses on candle tensors, with closed-form references for
//! the gradient checks.
//!
//! Definitions (FIRST, Reddy et al. 2024, and its training script):
//! - **Ranking loss**: weighted RankNet on the identifier logits `s` at the
//!   position that predicts the first identifier (after `[`). For every pair
//!   whose target ranks (1-based) satisfy `r_i < r_j`, the loss is
//!   `BCEWithLogits(s_i - s_j, 1) = softplus(-(s_i - s_j))` with weight
//!   `1 / (r_i + r_j)`; the result is the mean over pairs of the weighted
//!   terms (PyTorch's `BCEWithLogitsLoss(weight=w)` with mean reduction, i.e.
//!   divided by the number of pairs, not by the sum of weights).
//! - **Generation loss**: causal LM cross-entropy on the target permutation
//!   tokens (`C] > [A] > ... [T]` and the end-of-turn token), prompt tokens
//!   masked, averaged over target tokens.
//! - **Combined**: `generation + λ · ranking` with `λ = 10` for weighted
//!   RankNet ([`FIRST_RANKING_WEIGHT`]; FIRST used 1 for LambdaLoss and 0.1
//!   for ListNet).

use anyhow::{ensure, Result};
use candle_core::{Tensor, D};

/// FIRST's weight of the weighted-RankNet term in the combined objective.
pub const FIRST_RANKING_WEIGHT: f64 = 10.0;

/// Which loss a training run minimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Objective {
    /// Weighted RankNet on the first identifier's logits.
    Ranking,
    /// LM loss on the target permutation.
    Generation,
    /// FIRST: generation + λ x ranking (the default; λ = 10).
    Combined,
}

impl std::fmt::Display for Objective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Objective::Ranking => "ranking",
            Objective::Generation => "generation",
            Objective::Combined => "combined",
        })
    }
}

impl Objective {
    pub fn uses_ranking(self) -> bool {
        matches!(self, Objective::Ranking | Objective::Combined)
    }

    pub fn uses_generation(self) -> bool {
        matches!(self, Objective::Generation | Objective::Combined)
    }
}

/// The pairs of weighted RankNet for a target `order` (window positions,
/// best first): `(better, worse, weight)` with weight `1/(r_better + r_worse)`.
pub fn ranknet_pairs(order: &[usize]) -> (Vec<u32>, Vec<u32>, Vec<f32>) {
    let n = order.len();
    let mut better = Vec::with_capacity(n * n / 2);
    let mut worse = Vec::with_capacity(n * n / 2);
    let mut weight = Vec::with_capacity(n * n / 2);
    for a in 0..n {
        for b in a + 1..n {
            better.push(order[a] as u32);
            worse.push(order[b] as u32);
            weight.push(1.0 / ((a + 1) + (b + 1)) as f32);
        }
    }
    (better, worse, weight)
}

/// Weighted RankNet of a window of `n` passages whose identifier logits are
/// all equal: `ln 2 · mean over pairs of 1/(r_i + r_j)` (0.0411 for 20). A
/// ranking loss that settles here means the model has flattened its logits
/// and learned no order.
pub fn flat_ranknet_loss(n: usize) -> f64 {
    let mut sum = 0.0;
    let mut pairs = 0usize;
    for a in 1..=n {
        for b in a + 1..=n {
            sum += 1.0 / (a + b) as f64;
            pairs += 1;
        }
    }
    if pairs == 0 {
        return 0.0;
    }
    std::f64::consts::LN_2 * sum / pairs as f64
}

/// Weighted RankNet of `scores` (`[n]`, one per window position) against the
/// target `order`; a scalar tensor that carries gradients.
pub fn weighted_ranknet(scores: &Tensor, order: &[usize]) -> Result<Tensor> {
    let n = scores.dim(0)?;
    ensure!(
        order.len() == n && n >= 2,
        "ranking loss: {} scores for a target of {} passages (need at least 2)",
        n,
        order.len()
    );
    let dev = scores.device();
    let (better, worse, weight) = ranknet_pairs(order);
    let pairs = weight.len();
    let better = Tensor::new(better.as_slice(), dev)?;
    let worse = Tensor::new(worse.as_slice(), dev)?;
    let weight = Tensor::new(weight.as_slice(), dev)?;
    let diff = (scores.index_select(&better, 0)? - scores.index_select(&worse, 0)?)?;
    // softplus(-d) = max(-d, 0) + log(1 + exp(-|d|)), stable for any d.
    let neg = diff.neg()?;
    let softplus = (neg.relu()? + (diff.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    Ok(((softplus * weight)?.sum_all()? / pairs as f64)?)
}

/// Closed-form weighted RankNet loss and its gradient w.r.t. `scores` (f64),
/// the reference the tensor version is checked against.
pub fn weighted_ranknet_reference(scores: &[f64], order: &[usize]) -> (f64, Vec<f64>) {
    let (better, worse, weight) = ranknet_pairs(order);
    let p = weight.len() as f64;
    let mut loss = 0.0;
    let mut grad = vec![0.0; scores.len()];
    for ((&i, &j), &w) in better.iter().zip(&worse).zip(&weight) {
        let d = scores[i as usize] - scores[j as usize];
        let w = f64::from(w);
        // softplus(-d) and its derivative -sigmoid(-d).
        loss += w * ((-d).max(0.0) + (-d.abs()).exp().ln_1p());
        let sig = 1.0 / (1.0 + d.exp());
        grad[i as usize] -= w * sig / p;
        grad[j as usize] += w * sig / p;
    }
    (loss / p, grad)
}

/// Mean negative log-likelihood of `targets` under `logits` (`[m, vocab]`).
pub fn lm_loss(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let m = logits.dim(0)?;
    ensure!(
        m == targets.len() && m > 0,
        "language-modelling loss: {m} positions for {} targets",
        targets.len()
    );
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let idx = Tensor::new(targets, logits.device())?.unsqueeze(1)?;
    let picked = logp.gather(&idx, 1)?;
    Ok((picked.sum_all()?.neg()? / m as f64)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn ranknet_gradient_matches_closed_form_and_finite_differences() {
        let scores = [0.3, -1.2, 2.5, 0.0, 0.7, -0.4];
        let order = [2, 0, 5, 1, 4, 3];
        let (loss, grad) = weighted_ranknet_reference(&scores, &order);
        // Autograd through the tensor version.
        let v = Var::new(&scores.map(|x| x as f32)[..], &Device::Cpu).unwrap();
        let l = weighted_ranknet(v.as_tensor(), &order).unwrap();
        let auto_loss = l.to_scalar::<f32>().unwrap() as f64;
        assert!((auto_loss - loss).abs() < 1e-6, "{auto_loss} vs {loss}");
        let g = l.backward().unwrap();
        let auto = g.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        // Central finite differences of the closed form.
        let h = 1e-5;
        for k in 0..scores.len() {
            let mut up = scores;
            let mut down = scores;
            up[k] += h;
            down[k] -= h;
            let fd = (weighted_ranknet_reference(&up, &order).0
                - weighted_ranknet_reference(&down, &order).0)
                / (2.0 * h);
            assert!(
                (fd - grad[k]).abs() < 1e-7,
                "closed form {k}: {fd} vs {}",
                grad[k]
            );
            assert!(
                (auto[k] as f64 - grad[k]).abs() < 1e-6,
                "autograd {k}: {} vs {}",
                auto[k],
                grad[k]
            );
        }
        // The gradient pushes the best passage up and the worst down.
        assert!(grad[2] < 0.0 && grad[3] > 0.0);
    }

    #[test]
    fn flat_level_is_the_loss_of_equal_scores() {
        for n in [2usize, 3, 20] {
            let order: Vec<usize> = (0..n).rev().collect();
            let (loss, _) = weighted_ranknet_reference(&vec![1.5; n], &order);
            assert!((loss - flat_ranknet_loss(n)).abs() < 1e-7, "n={n}");
        }
        assert!((flat_ranknet_loss(20) - 0.04107).abs() < 1e-5);
    }

    #[test]
    fn ranknet_weights_favour_the_top() {
        let (_, _, w) = ranknet_pairs(&[0, 1, 2]);
        assert_eq!(w, vec![1.0 / 3.0, 1.0 / 4.0, 1.0 / 5.0]);
        // A correct order with large margins has a loss near zero.
        let (l, _) = weighted_ranknet_reference(&[30.0, 20.0, 10.0], &[0, 1, 2]);
        assert!(l < 1e-4);
    }

    #[test]
    fn lm_loss_is_mean_nll() {
        let logits = Tensor::new(&[[0.0f32, 1.0, 2.0], [3.0, 0.0, 0.0]], &Device::Cpu).unwrap();
        let l = lm_loss(&logits, &[2, 0])
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let lse1 = (1f64 + 1f64.exp() + 2f64.exp()).ln();
        let lse2 = (3f64.exp() + 2.0).ln();
        let want = ((lse1 - 2.0) + (lse2 - 3.0)) / 2.0;
        assert!((l - want).abs() < 1e-6, "{l} vs {want}");
    }
}
