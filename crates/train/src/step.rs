//! One micro-batch's forward and backward pass: the examples padded into one
//! batch, the frozen layers below the lowest adapter through the inference
//! kernels, and the losses read from the final hidden states. Two ways
//! through the trained layers:
//! - [`accumulate_lora_gradients`] (LoRA runs): each trained block's forward
//!   keeps a tape and its hand-derived backward pass
//!   (`CausalLm::train_block_backward`) gives the adapters' gradients;
//! - [`accumulate_batch_gradients`] (full fine-tuning, and the reference the
//!   tests hold the first against): candle's autograd, each trained layer
//!   recomputed in the backward pass (gradient checkpointing).

use anyhow::{ensure, Context, Result};
use candle_core::{Tensor, Var};
use firstrank_models::transformer::{CausalLm, DeltaGrads, DropoutMasks, Projection, TrainContext};

use crate::example::PreparedExample;
use crate::loss::{lm_loss, weighted_ranknet, Objective};

/// What the losses of a step are: the objective, the weights of its terms,
/// and the identifier tokens the ranking terms read.
#[derive(Debug, Clone, Copy)]
pub struct LossSpec<'a> {
    pub objective: Objective,
    /// λ in `generation + λ · ranking` (combined objective).
    pub ranking_weight: f64,
    /// Weight of the per-passage ranking term (0: off). It reads, at the
    /// newline that ends each passage, the logit of that passage's own
    /// identifier, and ranks those scores with the same weighted RankNet
    /// against the target order: 20 relevance readings per list where FIRST
    /// has one ranking. Inference does not use them.
    pub passage_weight: f64,
    /// The identifier tokens (`A`, `B`, ...).
    pub identifier_ids: &'a [u32],
}

/// The number of leading tokens of `ex` the forward pass needs: the whole
/// sequence but its last token for objectives with a generation part, up
/// to the ranking position otherwise.
fn forward_len(ex: &PreparedExample, objective: Objective) -> usize {
    if objective.uses_generation() {
        ex.tokens.len() - 1
    } else {
        ex.rank_position + 1
    }
}

/// One example's loss: the total to minimise (with its graph) and the
/// ranking, generation and per-passage parts.
pub struct ExampleLoss {
    pub total: Tensor,
    pub ranking: Option<f64>,
    pub generation: Option<f64>,
    pub passage: Option<f64>,
}

/// The values of an example's losses.
#[derive(Debug, Clone, Copy)]
pub struct LossValues {
    pub total: f64,
    pub ranking: Option<f64>,
    pub generation: Option<f64>,
    pub passage: Option<f64>,
}

impl ExampleLoss {
    fn values(&self) -> Result<LossValues> {
        Ok(LossValues {
            total: self.total.to_scalar::<f32>()? as f64,
            ranking: self.ranking,
            generation: self.generation,
            passage: self.passage,
        })
    }
}

/// Losses of the examples of a padded batch from its final hidden states
/// `[batch · len, hidden]` (example `j` at rows `j · len ..`).
pub fn batch_losses(
    model: &CausalLm,
    hidden: &Tensor,
    len: usize,
    batch: &[&PreparedExample],
    spec: &LossSpec<'_>,
) -> Result<Vec<ExampleLoss>> {
    let objective = spec.objective;
    let mut out = Vec::with_capacity(batch.len());
    for (j, ex) in batch.iter().enumerate() {
        let upto = forward_len(ex, objective);
        let row0 = j * len;
        let n = ex.order.len();
        let ids = &spec.identifier_ids[..n];
        let mut terms: Vec<Tensor> = Vec::with_capacity(3);
        let mut ranking = None;
        let mut generation = None;
        let mut passage = None;
        if objective.uses_ranking() {
            let h = hidden.narrow(0, row0 + ex.rank_position, 1)?;
            let scores = model.logits_rows_train(&h, ids)?.squeeze(0)?;
            let l = weighted_ranknet(&scores, &ex.order)?;
            ranking = Some(l.to_scalar::<f32>()? as f64);
            let weight = if objective == Objective::Combined {
                spec.ranking_weight
            } else {
                1.0
            };
            terms.push((l * weight)?);
        }
        if spec.passage_weight > 0.0 && ex.passage_ends.len() == n {
            // Passage i's score: the logit of identifier i at its end.
            let rows: Vec<u32> = ex.passage_ends.iter().map(|&p| (row0 + p) as u32).collect();
            let h = hidden.index_select(&Tensor::new(rows.as_slice(), hidden.device())?, 0)?;
            let logits = model.logits_rows_train(&h, ids)?;
            let diagonal: Vec<u32> = (0..n).map(|i| (i * n + i) as u32).collect();
            let scores = logits
                .flatten_all()?
                .index_select(&Tensor::new(diagonal.as_slice(), hidden.device())?, 0)?;
            let l = weighted_ranknet(&scores, &ex.order)?;
            passage = Some(l.to_scalar::<f32>()? as f64);
            terms.push((l * spec.passage_weight)?);
        }
        if objective.uses_generation() {
            let h = hidden.narrow(0, row0 + ex.lm_start, upto - ex.lm_start)?;
            let logits = model.logits_all_train(&h)?;
            let l = lm_loss(&logits, &ex.tokens[ex.lm_start + 1..])?;
            generation = Some(l.to_scalar::<f32>()? as f64);
            terms.push(l);
        }
        let mut terms = terms.into_iter();
        let mut total = terms.next().context("no loss")?;
        for t in terms {
            total = (total + t)?;
        }
        out.push(ExampleLoss {
            total,
            ranking,
            generation,
            passage,
        });
    }
    Ok(out)
}

/// Losses of one example through the plain (not checkpointed) training
/// forward pass.
pub fn example_loss(
    model: &CausalLm,
    ctx: &TrainContext<'_>,
    ex: &PreparedExample,
    spec: &LossSpec<'_>,
) -> Result<ExampleLoss> {
    let upto = forward_len(ex, spec.objective);
    let hidden = model.forward_train(&ex.tokens[..upto], ctx)?;
    let mut losses = batch_losses(model, &hidden, upto, &[ex], spec)?;
    losses.pop().context("no loss")
}

/// Adds `g` to the gradient slot of every variable it has a gradient for.
fn accumulate(
    store: &candle_core::backprop::GradStore,
    vars: &[Var],
    grads: &mut [Option<Tensor>],
) -> Result<()> {
    for (slot, var) in grads.iter_mut().zip(vars) {
        if let Some(g) = store.get(var.as_tensor()) {
            let g = g.detach();
            *slot = Some(match slot.take() {
                Some(acc) => (acc + g)?,
                None => g,
            });
        }
    }
    Ok(())
}

/// Forward and backward pass of a micro-batch, padded into one batch, with
/// gradient checkpointing per layer: the first pass keeps only each layer's
/// input; the backward pass recomputes one layer at a time from it and
/// pushes the gradient of its output through (`sum(y ⊙ ∂L/∂y)`), so memory
/// holds one layer's activations instead of all of them, which is what lets
/// several 2,000-token lists share a forward pass. Dropout masks are kept
/// for the recomputation. Adds `scale ·` the gradients of the summed example
/// losses to `grads` (one slot per `vars` entry) and returns each example's
/// losses (values only).
pub fn accumulate_batch_gradients(
    model: &CausalLm,
    ctx: &TrainContext<'_>,
    batch: &[&PreparedExample],
    spec: &LossSpec<'_>,
    scale: f64,
    vars: &[Var],
    grads: &mut [Option<Tensor>],
) -> Result<Vec<LossValues>> {
    let objective = spec.objective;
    // Recomputing a layer must drop the same inputs: a store for the masks
    // (the caller's, if it keeps one).
    let masks = DropoutMasks::default();
    let ctx = TrainContext {
        dropout_masks: ctx.dropout_masks.or(Some(&masks)),
        ..*ctx
    };
    let seqs: Vec<&[u32]> = batch
        .iter()
        .map(|ex| &ex.tokens[..forward_len(ex, objective)])
        .collect();
    let tb = model.train_batch(&seqs)?;
    let n_layers = model.config().n_layers;
    // Layers below the lowest adapter hold nothing trainable (embeddings and
    // norms are frozen): they run forward only, through the faster inference
    // kernels, and the backward pass stops at the first adapted layer.
    let first_trainable = match ctx.adapters {
        Some(set) => set.lowest_layer().context("no LoRA adapters")?,
        None => 0,
    };
    let mut inputs = Vec::with_capacity(n_layers - first_trainable);
    let mut x = model.train_embed(&tb, &ctx)?.detach();
    for i in 0..n_layers {
        if i < first_trainable {
            x = model.frozen_layer(i, &x, &tb)?;
            continue;
        }
        let y = model.train_layer(i, &x, &tb, &ctx)?.detach();
        inputs.push(x);
        x = y;
    }
    let top = Var::from_tensor(&x)?;
    drop(x);
    let hidden = model.train_final_norm(top.as_tensor())?;
    let losses = batch_losses(model, &hidden, tb.len(), batch, spec)?;
    let mut values = Vec::with_capacity(losses.len());
    let mut sum: Option<Tensor> = None;
    for l in losses {
        values.push(l.values()?);
        sum = Some(match sum {
            Some(s) => (s + l.total)?,
            None => l.total,
        });
    }
    let sum = sum.context("empty batch")?;
    let store = (sum * scale)?.backward()?;
    accumulate(&store, vars, grads)?;
    let mut upstream = store
        .get(top.as_tensor())
        .context("no gradient reached the last layer")?
        .detach();
    drop(store);
    drop(hidden);
    for i in (first_trainable..n_layers).rev() {
        let input = Var::from_tensor(&inputs.pop().context("layer input")?)?;
        let y = model.train_layer(i, input.as_tensor(), &tb, &ctx)?;
        let store = (y * &upstream)?.sum_all()?.backward()?;
        accumulate(&store, vars, grads)?;
        if i > first_trainable {
            upstream = store
                .get(input.as_tensor())
                .with_context(|| format!("no gradient reached layer {i}"))?
                .detach();
        }
    }
    Ok(values)
}

/// Forward and backward pass of a micro-batch of a LoRA run, padded into one
/// batch: the layers below the lowest adapter run forward only (inference
/// kernels); each adapted layer runs forward once keeping its tape, the
/// final norm and the losses go through autograd (a few rows), and the
/// layers' hand-derived backward passes carry the gradient down. Adds
/// `scale ·` the gradients of the summed example losses to `grads`, whose
/// slots follow `slots` (the adapters' keys in their variables' order, two
/// variables each: `A` then `B`), and returns each example's losses.
pub fn accumulate_lora_gradients(
    model: &CausalLm,
    ctx: &TrainContext<'_>,
    batch: &[&PreparedExample],
    spec: &LossSpec<'_>,
    scale: f64,
    slots: &[(usize, Projection)],
    grads: &mut [Option<Tensor>],
) -> Result<Vec<LossValues>> {
    let objective = spec.objective;
    ensure!(
        grads.len() == 2 * slots.len(),
        "{} gradient slots for {} adapters",
        grads.len(),
        slots.len()
    );
    let adapters = ctx.adapters.context("LoRA training without adapters")?;
    let first_trainable = adapters.lowest_layer().context("no LoRA adapters")?;
    let seqs: Vec<&[u32]> = batch
        .iter()
        .map(|ex| &ex.tokens[..forward_len(ex, objective)])
        .collect();
    let tb = model.train_batch(&seqs)?;
    let n_layers = model.config().n_layers;
    let mut x = model.train_embed(&tb, ctx)?.detach();
    let mut tapes = Vec::with_capacity(n_layers - first_trainable);
    for i in 0..n_layers {
        if i < first_trainable {
            x = model.frozen_layer(i, &x, &tb)?;
            continue;
        }
        let (y, tape) = model.train_block_forward(i, &x, &tb, ctx)?;
        tapes.push(tape);
        x = y;
    }
    let top = Var::from_tensor(&x)?;
    drop(x);
    let hidden = model.train_final_norm(top.as_tensor())?;
    let losses = batch_losses(model, &hidden, tb.len(), batch, spec)?;
    let mut values = Vec::with_capacity(losses.len());
    let mut sum: Option<Tensor> = None;
    for l in losses {
        values.push(l.values()?);
        sum = Some(match sum {
            Some(s) => (s + l.total)?,
            None => l.total,
        });
    }
    let store = (sum.context("empty batch")? * scale)?.backward()?;
    let mut upstream = store
        .get(top.as_tensor())
        .context("no gradient reached the last layer")?
        .detach();
    drop((store, hidden));
    let mut delta_grads = DeltaGrads::new();
    while let Some(tape) = tapes.pop() {
        upstream = model.train_block_backward(tape, &upstream, &tb, ctx, &mut delta_grads)?;
    }
    for (j, key) in slots.iter().enumerate() {
        let Some(g) = delta_grads.remove(key) else {
            continue;
        };
        for (k, g) in g.into_iter().enumerate() {
            let slot = &mut grads[2 * j + k];
            *slot = Some(match slot.take() {
                Some(acc) => (acc + g)?,
                None => g,
            });
        }
    }
    ensure!(
        delta_grads.is_empty(),
        "gradients for adapters outside the trained set"
    );
    Ok(values)
}
