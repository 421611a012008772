//! The hand-derived backward pass of the taped blocks against candle's
//! autograd, on the tiny random checkpoints of every family the transformer
//! runs (`crates/models/tests/data/tiny-hf`: Qwen2 biases, Qwen3 q/k norms,
//! Llama with attention biases, Mistral's sliding window, Gemma 3's sandwich
//! norms, tanh-GELU and sliding/global layers): the same losses and the same
//! gradient for every adapter matrix on all seven projections, for padded
//! batches of sequences of different lengths, with and without LoRA dropout
//! masks and the per-passage loss. No model download is needed.

use candle_core::{Device, Tensor, Var};
use firstrank_core::significance::SplitMix64;
use firstrank_models::adapter::{LoraConfig, LoraSet};
use firstrank_models::transformer::{CausalLm, Projection, TrainContext, WeightMode};
use firstrank_train::step::{accumulate_batch_gradients, accumulate_lora_gradients, LossSpec};
use firstrank_train::{Objective, PreparedExample};

/// The tiny checkpoints live with the model crate's tests.
fn tiny_hf_dir(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/data/tiny-hf")
        .join(name)
}

const FAMILIES: &[&str] = &["qwen2", "qwen3", "llama-bias", "mistral-window", "gemma3"];

/// A synthetic example of `len` tokens: four "passages" ending at every
/// 40th position, the ranking position 12 tokens before the end, a
/// 4-passage target order, the LM target after it.
fn example(id: &str, len: usize, seed: u64, vocab: usize) -> PreparedExample {
    let mut rng = SplitMix64(seed);
    let tokens: Vec<u32> = (0..len)
        .map(|_| (rng.unit_f64() * vocab as f64) as u32 % vocab as u32)
        .collect();
    PreparedExample {
        id: id.into(),
        tokens,
        rank_position: len - 12,
        order: vec![2, 0, 3, 1],
        lm_start: len - 14,
        passage_ends: vec![40, 80, 120, 160],
    }
}

/// Rank-3 adapters on every projection of every layer, with non-zero `B`.
fn adapters(model: &CausalLm) -> LoraSet {
    let config = LoraConfig {
        rank: 3,
        alpha: 6.0,
        dropout: 0.0,
        targets: Projection::ALL.to_vec(),
        layers: None,
    };
    let set = LoraSet::new(model, &config, 3).unwrap();
    let mut rng = SplitMix64(11);
    for (_, pair) in set.iter() {
        let dims = pair.b.dims().to_vec();
        let vals: Vec<f32> = (0..dims[0] * dims[1])
            .map(|_| (rng.unit_f64() as f32 - 0.5) * 0.4)
            .collect();
        pair.b
            .set(&Tensor::from_vec(vals, (dims[0], dims[1]), &Device::Cpu).unwrap())
            .unwrap();
    }
    set
}

fn flat(t: &Option<Tensor>) -> Vec<f32> {
    t.as_ref()
        .expect("a gradient")
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

#[test]
fn taped_backward_matches_autograd_on_every_family() {
    for &name in FAMILIES {
        let model =
            CausalLm::load_hf_dir(tiny_hf_dir(name), WeightMode::DequantizedF32, &Device::Cpu)
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let vocab = model.config().vocab;
        let set = adapters(&model);
        let slots: Vec<(usize, Projection)> = set.iter().map(|(k, _)| *k).collect();
        let vars: Vec<Var> = set.vars();
        // Two lengths (one padded), longer than the 128-query attention
        // blocks (three blocks, the last one partial) and than the tiny
        // Mistral's and Gemma's 48-token windows.
        let a = example("a", 300, 1, vocab);
        let b = example("b", 171, 2, vocab);
        let ids: Vec<u32> = (10..14).collect();
        for (objective, dropout, passage_weight) in [
            (Objective::Combined, 0.0f32, 0.0),
            (Objective::Ranking, 0.0, 0.0),
            (Objective::Combined, 0.3, 0.0),
            (Objective::Combined, 0.0, 2.0),
        ] {
            // The same dropout masks for both passes: a shared store, drawn
            // by the first pass.
            let masks = firstrank_models::transformer::DropoutMasks::default();
            let ctx = TrainContext {
                adapters: Some(&set),
                dropout,
                embedding_noise: None,
                dropout_masks: Some(&masks),
            };
            let spec = LossSpec {
                objective,
                ranking_weight: 10.0,
                passage_weight,
                identifier_ids: &ids,
            };
            let mut autograd: Vec<Option<Tensor>> = vec![None; vars.len()];
            let want = accumulate_batch_gradients(
                &model,
                &ctx,
                &[&a, &b],
                &spec,
                0.5,
                &vars,
                &mut autograd,
            )
            .unwrap();
            let mut taped: Vec<Option<Tensor>> = vec![None; vars.len()];
            let got =
                accumulate_lora_gradients(&model, &ctx, &[&a, &b], &spec, 0.5, &slots, &mut taped)
                    .unwrap();
            if passage_weight > 0.0 {
                assert!(
                    got.iter().all(|v| v.passage.is_some()),
                    "{name}: no passage loss"
                );
            }
            let label =
                format!("{name} {objective} dropout {dropout} passage weight {passage_weight}");
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g.total - w.total).abs() < 1e-4 * w.total.abs().max(1.0),
                    "{label}: loss {} vs {}",
                    g.total,
                    w.total
                );
            }
            for (k, (t, r)) in taped.iter().zip(&autograd).enumerate() {
                let (t, r) = (flat(t), flat(r));
                let scale = r.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
                let worst = t
                    .iter()
                    .zip(&r)
                    .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                let (layer, proj) = slots[k / 2];
                assert!(
                    worst < 1e-4 * scale,
                    "{label}: layer {layer} {proj:?} {}: differs by {worst} (largest entry {scale})",
                    if k % 2 == 0 { "A" } else { "B" }
                );
            }
        }
    }
}
