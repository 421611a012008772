//! Held-out evaluation during training: how well the adapters order the
//! passages of lists the run does not train on, against those lists' target
//! order (the teacher's). The learning curve reads it at each evaluation.
//!
//! For each list: the FIRST scores (identifier logits at the ranking
//! position, as inference reads them), and, where the passages' ends are
//! known, the per-passage scores the optional per-passage loss trains
//! (each passage's own identifier logit at its end). Reported: pairwise
//! accuracy (the share of target-ordered pairs the scores order the same
//! way; a tie counts one half, so equal scores give 0.5), top-1 agreement
//! and the weighted RankNet loss.

use anyhow::{ensure, Result};
use candle_core::{Tensor, D};
use firstrank_models::transformer::{CausalLm, TrainContext};
use serde::Serialize;

use crate::example::PreparedExample;
use crate::loss::weighted_ranknet;

/// Mean scores over the held-out lists.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub lists: usize,
    /// FIRST's identifier logits against the target order.
    pub first_pairwise_accuracy: f64,
    pub first_top1: f64,
    pub first_ranking_loss: f64,
    /// The per-passage scores (None when no list has passage ends).
    pub passage_pairwise_accuracy: Option<f64>,
}

/// The share of pairs ordered by `order` (best first) that `scores` order
/// the same way, ties counting one half.
pub fn pairwise_accuracy(scores: &[f32], order: &[usize]) -> f64 {
    let mut agree = 0.0;
    let mut pairs = 0usize;
    for (a, &i) in order.iter().enumerate() {
        for &j in &order[a + 1..] {
            pairs += 1;
            agree += match scores[i].total_cmp(&scores[j]) {
                std::cmp::Ordering::Greater => 1.0,
                std::cmp::Ordering::Equal => 0.5,
                std::cmp::Ordering::Less => 0.0,
            };
        }
    }
    if pairs == 0 {
        0.5
    } else {
        agree / pairs as f64
    }
}

/// Evaluates the model with the adapters of `ctx` (no dropout, no noise) on
/// `examples`, `micro_batch` lists per forward pass.
pub fn evaluate(
    model: &CausalLm,
    ctx: &TrainContext<'_>,
    examples: &[PreparedExample],
    identifier_ids: &[u32],
    micro_batch: usize,
) -> Result<EvalReport> {
    ensure!(!examples.is_empty(), "no held-out lists to evaluate");
    let ctx = TrainContext {
        dropout: 0.0,
        embedding_noise: None,
        dropout_masks: None,
        ..*ctx
    };
    let first_trainable = ctx.adapters.and_then(|a| a.lowest_layer()).unwrap_or(0);
    let (mut first_acc, mut top1, mut loss) = (0.0, 0.0, 0.0);
    let (mut passage_acc, mut passage_n) = (0.0, 0usize);
    let mut sorted: Vec<&PreparedExample> = examples.iter().collect();
    sorted.sort_by_key(|e| e.rank_position);
    for batch in sorted.chunks(micro_batch.max(1)) {
        let seqs: Vec<&[u32]> = batch
            .iter()
            .map(|e| &e.tokens[..=e.rank_position])
            .collect();
        let tb = model.train_batch(&seqs)?;
        let mut x = model.train_embed(&tb, &ctx)?;
        for i in 0..model.config().n_layers {
            x = if i < first_trainable {
                model.frozen_layer(i, &x, &tb)?
            } else {
                model.train_block_forward(i, &x, &tb, &ctx)?.0
            };
        }
        let hidden = model.train_final_norm(&x)?;
        for (j, ex) in batch.iter().enumerate() {
            let n = ex.order.len();
            let ids = &identifier_ids[..n];
            let row = j * tb.len();
            let h = hidden.narrow(0, row + ex.rank_position, 1)?;
            let logits = model.logits_rows_train(&h, ids)?.squeeze(0)?;
            loss += weighted_ranknet(&logits, &ex.order)?.to_scalar::<f32>()? as f64;
            let scores = logits.to_vec1::<f32>()?;
            first_acc += pairwise_accuracy(&scores, &ex.order);
            let best = logits.argmax(D::Minus1)?.to_scalar::<u32>()? as usize;
            top1 += f64::from(u8::from(best == ex.order[0]));
            if ex.passage_ends.len() == n {
                let rows: Vec<u32> = ex.passage_ends.iter().map(|&p| (row + p) as u32).collect();
                let h = hidden.index_select(&Tensor::new(rows.as_slice(), hidden.device())?, 0)?;
                let all = model.logits_rows_train(&h, ids)?.to_vec2::<f32>()?;
                let own: Vec<f32> = (0..n).map(|i| all[i][i]).collect();
                passage_acc += pairwise_accuracy(&own, &ex.order);
                passage_n += 1;
            }
        }
    }
    let lists = examples.len();
    let mean = |v: f64| v / lists.max(1) as f64;
    Ok(EvalReport {
        lists,
        first_pairwise_accuracy: mean(first_acc),
        first_top1: mean(top1),
        first_ranking_loss: mean(loss),
        passage_pairwise_accuracy: (passage_n > 0).then(|| passage_acc / passage_n as f64),
    })
}

#[cfg(test)]
mod tests {
    use super::pairwise_accuracy;

    #[test]
    fn pairwise_accuracy_counts_agreeing_pairs_and_half_ties() {
        // Target: passage 2, then 0, then 1.
        let order = [2, 0, 1];
        assert_eq!(pairwise_accuracy(&[0.5, 0.1, 0.9], &order), 1.0);
        assert_eq!(pairwise_accuracy(&[0.5, 0.9, 0.1], &order), 0.0);
        assert_eq!(pairwise_accuracy(&[1.0, 1.0, 1.0], &order), 0.5);
        // 2 > 0 right, 2 > 1 right, 0 > 1 wrong.
        assert!((pairwise_accuracy(&[0.1, 0.5, 0.9], &order) - 2.0 / 3.0).abs() < 1e-12);
    }
}
