//! FIRST single-token scoring (Reddy et al. 2024, arXiv 2406.15657): one
//! forward pass over the chat-formatted prompt followed by `[`, then the
//! next-token logits of the window's identifier tokens (`A`, `B`, …) are the
//! passages' scores. Only the last position goes through the LM head, and only
//! the identifier rows of it.

use anyhow::{ensure, Result};

use crate::transformer::{CausalLm, KvCache, EXACT_MIN_TOKENS};

/// FIRST scores of one window: the next-token logits of `identifier_ids`
/// after `prompt_ids` (which must already end with the `[` token).
///
/// Runs exactly one [`CausalLm::forward`] call. The part of `prompt_ids` that
/// is already in `cache` (the longest common prefix, e.g. the system prompt and
/// query shared by the windows of one query) is reused; the rest is computed
/// and appended, so the cache afterwards holds `prompt_ids`. At least
/// [`EXACT_MIN_TOKENS`] tokens are always recomputed, so that the scores take
/// the same (f32-matmul) path whatever the cache held, also with quantized
/// weights.
pub fn first_logits(
    model: &mut CausalLm,
    cache: &mut KvCache,
    prompt_ids: &[u32],
    identifier_ids: &[u32],
) -> Result<Vec<f32>> {
    ensure!(
        !prompt_ids.is_empty(),
        "FIRST scoring needs a non-empty prompt"
    );
    let keep = cache.reuse_prefix_leaving(prompt_ids, EXACT_MIN_TOKENS);
    let hidden = model.forward(&prompt_ids[keep..], cache, None)?;
    model.logits_for(&hidden, identifier_ids)
}

/// Positions sorted by score, highest first; ties keep their input order
/// (the reference's stable sort).
pub fn order_by_scores(scores: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_stable_descending() {
        assert_eq!(order_by_scores(&[1.0, 3.0, 1.0, 2.0]), vec![1, 3, 0, 2]);
        assert!(order_by_scores(&[]).is_empty());
    }
}
