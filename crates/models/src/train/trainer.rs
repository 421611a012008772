//! The training loop: turns training lists into token sequences, computes
//! FIRST's losses with the differentiable forward pass, and updates LoRA
//! adapters (or, for full fine-tuning, every projection matrix) with AdamW,
//! warmup and decay, gradient accumulation and clipping; checkpoints for
//! `--resume` and the final adapter.
//!
//! One example is one sequence: the chat-formatted prompt exactly as
//! reranking builds it, then the target permutation and the end-of-turn
//! token. The ranking loss reads the identifier logits at the position
//! after the assistant's `[` (the position FIRST scores at inference); the
//! generation loss covers every target token. Ranking-only runs stop the
//! forward pass at that position. The examples of a step are sorted by
//! length and go through the model a micro-batch at a time, right-padded
//! into one batch, with each layer recomputed in the backward pass
//! ([`accumulate_batch_gradients`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use firstrank_core::significance::SplitMix64;
use firstrank_core::training::TrainingList;
use serde::{Deserialize, Serialize};

use super::lora::{qk_row_permutation, LoraConfig, LoraSet, LoraTarget};
use super::loss::{flat_ranknet_loss, lm_loss, weighted_ranknet, Objective, FIRST_RANKING_WEIGHT};
use super::optim::{clip_grad_norm, learning_rate, AdamW, Schedule};
use crate::chat::ChatMessage;
use crate::reranker::LlmReranker;
use crate::transformer::{CausalLm, DropoutMasks, TrainContext};

/// A training list as token ids, with the positions the losses read.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedExample {
    pub id: String,
    /// Prompt, `[`, target permutation, end-of-turn token.
    pub tokens: Vec<u32>,
    /// The position whose next-token logits score the identifiers.
    pub rank_position: usize,
    /// Target order of the window's passages (0-based, best first).
    pub order: Vec<usize>,
    /// The last prompt position: positions `lm_start..` predict the target.
    pub lm_start: usize,
}

/// Tokenizes a list with the reranker's chat template and tokenizer and
/// checks that it lines up with what FIRST scores at inference.
pub fn prepare_example(list: &TrainingList, reranker: &LlmReranker) -> Result<PreparedExample> {
    let template = &reranker.config().template;
    let order = list
        .target_order(template.identifiers)
        .map_err(|e| anyhow::anyhow!("list {}: {e}", list.id))?;
    let n = order.len();
    ensure!(
        n >= 2 && n <= reranker.identifier_ids().len(),
        "list {}: {n} passages; the model's identifiers cover 2..={}",
        list.id,
        reranker.identifier_ids().len()
    );
    let chat = reranker.chat();
    let tok = reranker.tokenizer();
    let prompt = chat.chat_prompt(list.system.as_deref(), &list.user)?;
    let mut messages = Vec::with_capacity(3);
    if let Some(s) = &list.system {
        messages.push(ChatMessage::system(s));
    }
    messages.push(ChatMessage::user(&list.user));
    messages.push(ChatMessage::assistant(&list.target));
    let rendered = chat.render(&messages, false)?;
    let full_text = match rendered.strip_prefix(&prompt) {
        Some(rest) if rest.starts_with(&list.target) => rendered.clone(),
        _ => {
            // Templates whose full rendering is not the prompt plus the
            // answer: append the answer and an end token ourselves.
            let eos = tok.eos.as_ref().map(|(t, _)| t.as_str()).unwrap_or("");
            format!("{prompt}{}{eos}", list.target)
        }
    };
    let prompt_ids = tok.encode_raw(&prompt)?;
    let with_prefix = tok.encode_raw(&format!("{prompt}{}", template.assistant_prefix))?;
    let mut tokens = tok.encode_raw(&full_text)?;
    ensure!(
        tokens.starts_with(&with_prefix) && with_prefix.starts_with(&prompt_ids),
        "list {}: the prompt does not tokenize as a prefix of prompt + answer (target `{}` must start with `{}`)",
        list.id,
        list.target,
        template.assistant_prefix
    );
    let rank_position = with_prefix.len() - 1;
    let first_identifier = reranker.identifier_ids()[order[0]];
    ensure!(
        tokens.get(rank_position + 1) == Some(&first_identifier),
        "list {}: after `{}` the answer's first token is not the identifier token of passage {}",
        list.id,
        template.assistant_prefix,
        order[0] + 1
    );
    // The answer ends at its first end-of-turn token.
    if let Some(end) = tokens[prompt_ids.len()..]
        .iter()
        .position(|t| reranker.stop_ids().contains(t))
    {
        tokens.truncate(prompt_ids.len() + end + 1);
    }
    Ok(PreparedExample {
        id: list.id.clone(),
        tokens,
        rank_position,
        order,
        lm_start: prompt_ids.len() - 1,
    })
}

/// LoRA adapters or full fine-tuning of the projection matrices.
#[derive(Debug, Clone, PartialEq)]
pub enum AdapterKind {
    Lora(LoraConfig),
    /// Every attention and MLP projection is trained (embeddings and norms
    /// stay frozen).
    Full,
}

/// Hyper-parameters of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    pub objective: Objective,
    /// λ in `generation + λ · ranking`.
    pub ranking_weight: f64,
    pub adapter: AdapterKind,
    pub learning_rate: f64,
    pub schedule: Schedule,
    pub warmup_steps: usize,
    pub epochs: usize,
    /// Stop after this many optimizer steps (else `epochs` over the data).
    pub max_steps: Option<usize>,
    /// Wall-clock budget of the training loop in seconds (loading and
    /// tokenizing excluded). The run stops after the last step that fits,
    /// and the decay schedule is stretched over the steps the budget allows
    /// at the measured pace, so the learning rate reaches its end value when
    /// the time runs out rather than being cut off mid-schedule.
    pub time_limit_s: Option<f64>,
    /// Examples per optimizer step.
    pub grad_accum: usize,
    /// Examples per forward pass (padded into one batch); a step runs
    /// `grad_accum / micro_batch` of them.
    pub micro_batch: usize,
    /// Global gradient-norm clip (0: off).
    pub max_grad_norm: f64,
    pub weight_decay: f64,
    /// NEFTune noise alpha (FIRST used 5; None: off).
    pub neftune_alpha: Option<f32>,
    pub seed: u64,
    /// Write a resumable checkpoint every this many optimizer steps, and at
    /// the end (0: only at the end).
    pub checkpoint_every: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            objective: Objective::Combined,
            ranking_weight: FIRST_RANKING_WEIGHT,
            adapter: AdapterKind::Lora(LoraConfig::default()),
            learning_rate: 2e-4,
            schedule: Schedule::Cosine,
            warmup_steps: 10,
            epochs: 1,
            max_steps: None,
            time_limit_s: None,
            grad_accum: 8,
            micro_batch: 4,
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            neftune_alpha: Some(5.0),
            seed: 1,
            checkpoint_every: 50,
        }
    }
}

impl TrainOptions {
    pub fn validate(&self) -> Result<()> {
        if let AdapterKind::Lora(c) = &self.adapter {
            c.validate()?;
        }
        ensure!(
            self.learning_rate > 0.0 && self.learning_rate.is_finite(),
            "learning rate must be positive"
        );
        ensure!(
            self.grad_accum >= 1,
            "gradient accumulation must be at least 1"
        );
        ensure!(self.micro_batch >= 1, "the micro-batch must be at least 1");
        ensure!(
            self.epochs >= 1 || self.max_steps.is_some(),
            "epochs must be at least 1"
        );
        ensure!(
            self.ranking_weight >= 0.0,
            "ranking weight must not be negative"
        );
        if let Some(t) = self.time_limit_s {
            ensure!(
                t > 0.0 && t.is_finite(),
                "the time limit must be a positive number of seconds"
            );
        }
        Ok(())
    }

    /// Optimizer steps the run takes over `examples`.
    pub fn total_steps(&self, examples: usize) -> usize {
        self.max_steps
            .unwrap_or_else(|| (examples * self.epochs).div_ceil(self.grad_accum))
    }
}

/// Progress after one optimizer step.
#[derive(Debug, Clone)]
pub struct StepReport {
    pub step: usize,
    pub total_steps: usize,
    /// Mean over the step's examples.
    pub loss: f64,
    pub ranking_loss: Option<f64>,
    /// What the ranking loss of the step's windows would be with all
    /// identifier logits equal ([`flat_ranknet_loss`]).
    pub ranking_loss_flat: Option<f64>,
    pub generation_loss: Option<f64>,
    pub learning_rate: f64,
    pub grad_norm: f64,
    pub tokens: usize,
    pub elapsed_s: f64,
}

/// What a finished run reports (also written as `training.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    pub base_model: String,
    pub objective: String,
    pub adapter: String,
    pub examples: usize,
    pub steps: usize,
    pub tokens: usize,
    pub seconds: f64,
    pub final_loss: f64,
    pub first_loss: f64,
    /// The last step's ranking loss and its flat level (ranking objectives).
    #[serde(default)]
    pub final_ranking_loss: Option<f64>,
    #[serde(default)]
    pub ranking_loss_flat: Option<f64>,
    pub trainable_parameters: usize,
    pub options: String,
}

enum Trainable {
    Lora(LoraSet),
    Full(Vec<((usize, LoraTarget), Var)>),
}

impl Trainable {
    fn vars(&self) -> Vec<Var> {
        match self {
            Trainable::Lora(s) => s.vars(),
            Trainable::Full(v) => v.iter().map(|(_, v)| v.clone()).collect(),
        }
    }

    fn named_tensors(&self, model: &CausalLm, dtype: DType) -> Result<HashMap<String, Tensor>> {
        match self {
            Trainable::Lora(s) => s.named_tensors(dtype),
            Trainable::Full(vars) => full_named_tensors(model, vars, dtype),
        }
    }
}

/// Full fine-tuning output: every projection under its Hugging Face name, rows
/// in Hugging Face order.
pub const FULL_WEIGHTS: &str = "projections.safetensors";

fn full_named_tensors(
    model: &CausalLm,
    vars: &[((usize, LoraTarget), Var)],
    dtype: DType,
) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for ((layer, target), var) in vars {
        let mut w = var.as_tensor().clone();
        if let Some(idx) = qk_row_permutation(model, *target, true) {
            w = w.index_select(&Tensor::new(idx.as_slice(), w.device())?, 0)?;
        }
        out.insert(
            format!("{}.weight", target.hf_path(*layer)),
            w.to_dtype(dtype)?.to_device(&Device::Cpu)?,
        );
    }
    Ok(out)
}

/// Loads a full fine-tuning output into `model`'s projections.
pub fn load_full_weights(model: &mut CausalLm, path: &Path) -> Result<usize> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("{}: cannot read the projection weights", path.display()))?;
    let mut n = 0;
    for layer in 0..model.config().n_layers {
        for target in LoraTarget::ALL {
            let name = format!("{}.weight", target.hf_path(layer));
            let Some(t) = tensors.get(&name) else {
                continue;
            };
            let mut w = t.to_dtype(DType::F32)?.to_device(model.device())?;
            if let Some(idx) = qk_row_permutation(model, target, false) {
                w = w.index_select(&Tensor::new(idx.as_slice(), w.device())?, 0)?;
            }
            model
                .set_projection(layer, target, w)
                .with_context(|| format!("{}: `{name}`", path.display()))?;
            n += 1;
        }
    }
    ensure!(n > 0, "{}: no projection weights found", path.display());
    Ok(n)
}

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointState {
    step: usize,
    examples: usize,
    seed: u64,
    objective: String,
    tokens: usize,
    first_loss: f64,
    elapsed_s: f64,
}

const CHECKPOINT_DIR: &str = "checkpoint";

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
/// ranking and generation parts.
pub struct ExampleLoss {
    pub total: Tensor,
    pub ranking: Option<f64>,
    pub generation: Option<f64>,
}

/// The values of an example's losses.
#[derive(Debug, Clone, Copy)]
pub struct LossValues {
    pub total: f64,
    pub ranking: Option<f64>,
    pub generation: Option<f64>,
}

/// Losses of the examples of a padded batch from its final hidden states
/// `[batch · len, hidden]` (example `j` at rows `j · len ..`).
pub fn batch_losses(
    model: &CausalLm,
    hidden: &Tensor,
    len: usize,
    batch: &[&PreparedExample],
    objective: Objective,
    ranking_weight: f64,
    identifier_ids: &[u32],
) -> Result<Vec<ExampleLoss>> {
    let mut out = Vec::with_capacity(batch.len());
    for (j, ex) in batch.iter().enumerate() {
        let upto = forward_len(ex, objective);
        let row0 = j * len;
        let mut total: Option<Tensor> = None;
        let mut ranking = None;
        let mut generation = None;
        if objective.uses_ranking() {
            let h = hidden.narrow(0, row0 + ex.rank_position, 1)?;
            let n = ex.order.len();
            let scores = model
                .logits_rows_train(&h, &identifier_ids[..n])?
                .squeeze(0)?;
            let l = weighted_ranknet(&scores, &ex.order)?;
            ranking = Some(l.to_scalar::<f32>()? as f64);
            let weight = if objective == Objective::Combined {
                ranking_weight
            } else {
                1.0
            };
            total = Some((l * weight)?);
        }
        if objective.uses_generation() {
            let h = hidden.narrow(0, row0 + ex.lm_start, upto - ex.lm_start)?;
            let logits = model.logits_all_train(&h)?;
            let l = lm_loss(&logits, &ex.tokens[ex.lm_start + 1..])?;
            generation = Some(l.to_scalar::<f32>()? as f64);
            total = Some(match total {
                Some(t) => (t + l)?,
                None => l,
            });
        }
        out.push(ExampleLoss {
            total: total.context("no loss")?,
            ranking,
            generation,
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
    objective: Objective,
    ranking_weight: f64,
    identifier_ids: &[u32],
) -> Result<ExampleLoss> {
    let upto = forward_len(ex, objective);
    let hidden = model.forward_train(&ex.tokens[..upto], ctx)?;
    let mut losses = batch_losses(
        model,
        &hidden,
        upto,
        &[ex],
        objective,
        ranking_weight,
        identifier_ids,
    )?;
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
#[allow(clippy::too_many_arguments)]
pub fn accumulate_batch_gradients(
    model: &CausalLm,
    ctx: &TrainContext<'_>,
    batch: &[&PreparedExample],
    objective: Objective,
    ranking_weight: f64,
    identifier_ids: &[u32],
    scale: f64,
    vars: &[Var],
    grads: &mut [Option<Tensor>],
) -> Result<Vec<LossValues>> {
    let masks = DropoutMasks::default();
    let ctx = TrainContext {
        dropout_masks: Some(&masks),
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
    let losses = batch_losses(
        model,
        &hidden,
        tb.len(),
        batch,
        objective,
        ranking_weight,
        identifier_ids,
    )?;
    let mut values = Vec::with_capacity(losses.len());
    let mut sum: Option<Tensor> = None;
    for l in losses {
        values.push(LossValues {
            total: l.total.to_scalar::<f32>()? as f64,
            ranking: l.ranking,
            generation: l.generation,
        });
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

/// Fits a run into a wall-clock budget. The step count is fixed once, at the
/// end of the warmup (at least 3 steps in), from the pace of the steps
/// after the first (which carries one-off costs such as CUDA kernel
/// compilation): as many steps as fit in what is left, at most the planned
/// number. Until then the warmup's learning rate does not depend on the
/// count, so the same run replayed with `--max-steps` set to the count it
/// reached follows the same schedule. Otherwise it only ends a run early:
/// when the next step, at the mean pace or the last step's, would pass the
/// budget.
#[derive(Debug, Clone)]
pub struct TimeBudget {
    limit_s: f64,
    fix_after: usize,
    /// Steps of this invocation and the time they ended at.
    done: usize,
    first_step_end_s: f64,
    last_step_end_s: f64,
    fixed: bool,
}

impl TimeBudget {
    pub fn new(limit_s: f64, warmup_steps: usize) -> Self {
        Self {
            limit_s,
            fix_after: warmup_steps.max(3),
            done: 0,
            first_step_end_s: 0.0,
            last_step_end_s: 0.0,
            fixed: false,
        }
    }

    /// After a step of this invocation ended at `now_s` (seconds since the
    /// loop started), with `steps` taken in all (resumed ones included) and
    /// `total` planned: the new total.
    pub fn after_step(&mut self, steps: usize, total: usize, now_s: f64) -> usize {
        self.done += 1;
        if self.done == 1 {
            self.first_step_end_s = now_s;
        }
        let pace = if self.done > 1 {
            (now_s - self.first_step_end_s) / (self.done - 1) as f64
        } else {
            now_s
        };
        let last = now_s - self.last_step_end_s;
        self.last_step_end_s = now_s;
        if now_s + pace.max(last) > self.limit_s {
            return steps.min(total);
        }
        if !self.fixed && self.done >= self.fix_after {
            self.fixed = true;
            let fitting = steps + ((self.limit_s - now_s) / pace).floor() as usize;
            return fitting.clamp(steps, total);
        }
        total
    }
}

/// Sets up a CUDA device for the training loop, best effort (a failure is
/// logged, not fatal). Two of cudarc's defaults cost a training step dearly:
/// - the device's default memory pool hands freed memory back to the driver
///   at every synchronisation (release threshold 0), so the gigabyte-sized
///   attention buffers of each layer are mapped afresh after every loss
///   read; the threshold is raised so the pool keeps what it has;
/// - every tensor records and waits on CUDA events at each use, which only
///   multi-stream programs need; the loop runs on one stream, so tensors
///   created from here on skip it.
#[cfg(feature = "cuda")]
fn prepare_training_device(device: &Device) {
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    let Device::Cuda(dev) = device else {
        return;
    };
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    let keep_pool = || -> std::result::Result<(), result::DriverError> {
        ctx.bind_to_thread()?;
        // SAFETY: the device handle comes from a live context, and the
        // attribute takes a u64 by pointer.
        unsafe {
            let pool = result::device::get_default_mem_pool(ctx.cu_device())?;
            let mut threshold = u64::MAX;
            result::mem_pool::set_attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold as *mut u64).cast(),
            )
        }
    };
    if let Err(e) = keep_pool() {
        tracing::warn!("could not raise the CUDA memory pool's release threshold: {e:?}");
    }
    // SAFETY: the training loop issues all its work from this thread on the
    // device's one stream, so stream-ordered frees need no events.
    unsafe { dev.disable_event_tracking() };
}

#[cfg(not(feature = "cuda"))]
fn prepare_training_device(_device: &Device) {}

/// Trains on `examples` and writes the adapter (or projections) into
/// `out_dir`; with `resume`, continues from `out_dir/checkpoint`.
pub fn train(
    reranker: &mut LlmReranker,
    examples: &[PreparedExample],
    opts: &TrainOptions,
    out_dir: &Path,
    resume: bool,
    on_step: &mut dyn FnMut(&StepReport),
) -> Result<TrainSummary> {
    opts.validate()?;
    ensure!(!examples.is_empty(), "no training examples");
    prepare_training_device(reranker.model().device());
    let identifier_ids = reranker.identifier_ids().to_vec();
    let base_name = reranker.name().to_string();
    let base_model_id = reranker.base_model_id().to_string();
    let trainable = match &opts.adapter {
        AdapterKind::Lora(c) => Trainable::Lora(LoraSet::new(reranker.model(), c, opts.seed)?),
        AdapterKind::Full => {
            let model = reranker.model_mut();
            let mut vars = Vec::new();
            for layer in 0..model.config().n_layers {
                for target in LoraTarget::ALL {
                    let var = Var::from_tensor(&model.projection_weight(layer, target)?)?;
                    model.set_projection(layer, target, var.as_tensor().clone())?;
                    vars.push(((layer, target), var));
                }
            }
            Trainable::Full(vars)
        }
    };
    let vars = trainable.vars();
    let trainable_parameters = vars.iter().map(|v| v.elem_count()).sum();
    let mut opt = AdamW::new(vars.clone(), opts.weight_decay)?;
    let mut total_steps = opts.total_steps(examples.len());
    let checkpoint = out_dir.join(CHECKPOINT_DIR);
    let mut consumed = 0usize;
    let mut tokens_seen = 0usize;
    let mut first_loss = f64::NAN;
    let mut elapsed_before = 0.0;
    if resume {
        let state_path = checkpoint.join("state.json");
        let state: CheckpointState = serde_json::from_str(
            &std::fs::read_to_string(&state_path)
                .with_context(|| format!("--resume: cannot read {}", state_path.display()))?,
        )
        .with_context(|| format!("{}: not a firstrank checkpoint", state_path.display()))?;
        ensure!(
            state.seed == opts.seed && state.objective == opts.objective.to_string(),
            "--resume: the checkpoint was written with seed {} and objective {}, not {} and {}",
            state.seed,
            state.objective,
            opts.seed,
            opts.objective
        );
        let weights =
            candle_core::safetensors::load(checkpoint.join("weights.safetensors"), &Device::Cpu)
                .context("--resume: checkpoint weights")?;
        match &trainable {
            Trainable::Lora(s) => {
                s.check_resumable(&weights)?;
                s.set_from(&weights)?
            }
            Trainable::Full(vars) => {
                for ((layer, target), var) in vars {
                    let name = format!("{}.weight", target.hf_path(*layer));
                    let mut w = weights
                        .get(&name)
                        .with_context(|| format!("--resume: `{name}` missing"))?
                        .to_device(var.device())?;
                    if let Some(idx) = qk_row_permutation(reranker.model(), *target, false) {
                        w = w.index_select(&Tensor::new(idx.as_slice(), w.device())?, 0)?;
                    }
                    var.set(&w)?;
                }
            }
        }
        let opt_state =
            candle_core::safetensors::load(checkpoint.join("optimizer.safetensors"), &Device::Cpu)
                .context("--resume: optimizer state")?;
        opt.load_state(&opt_state)?;
        ensure!(
            opt.steps() == state.step,
            "--resume: checkpoint step mismatch"
        );
        consumed = state.examples;
        tokens_seen = state.tokens;
        first_loss = state.first_loss;
        elapsed_before = state.elapsed_s;
        tracing::info!(
            "resuming at step {} ({} examples done)",
            state.step,
            consumed
        );
    }
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let started = Instant::now();
    // Example order: a fresh shuffle per epoch from the seed.
    let order_for_epoch = |epoch: usize| -> Vec<usize> {
        let mut idx: Vec<usize> = (0..examples.len()).collect();
        SplitMix64(opts.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9)).shuffle(&mut idx);
        idx
    };
    let lora_dropout = match &opts.adapter {
        AdapterKind::Lora(c) => c.dropout,
        AdapterKind::Full => 0.0,
    };
    let mut last_loss = f64::NAN;
    let mut last_ranking: Option<(f64, f64)> = None;
    let mut epoch_cache: Option<(usize, Vec<usize>)> = None;
    let mut time_budget = opts
        .time_limit_s
        .map(|limit| TimeBudget::new(limit, opts.warmup_steps));
    while opt.steps() < total_steps {
        let step = opt.steps();
        let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
        let (mut loss_sum, mut rank_sum, mut gen_sum) = (0.0, 0.0, 0.0);
        let (mut rank_n, mut gen_n) = (0usize, 0usize);
        let mut flat_sum = 0.0;
        let mut step_tokens = 0;
        let mut picked = Vec::with_capacity(opts.grad_accum);
        for _ in 0..opts.grad_accum {
            let epoch = consumed / examples.len();
            if epoch_cache.as_ref().map(|(e, _)| *e) != Some(epoch) {
                epoch_cache = Some((epoch, order_for_epoch(epoch)));
            }
            let idx = epoch_cache
                .as_ref()
                .map(|(_, o)| o[consumed % examples.len()])
                .unwrap_or(0);
            consumed += 1;
            picked.push(&examples[idx]);
        }
        // Similar lengths share a micro-batch, so little is padding.
        picked.sort_by_key(|ex| ex.tokens.len());
        let ctx = TrainContext {
            adapters: match &trainable {
                Trainable::Lora(s) => Some(s),
                Trainable::Full(_) => None,
            },
            dropout: lora_dropout,
            embedding_noise: opts.neftune_alpha,
            dropout_masks: None,
        };
        for micro in picked.chunks(opts.micro_batch) {
            let values = accumulate_batch_gradients(
                reranker.model(),
                &ctx,
                micro,
                opts.objective,
                opts.ranking_weight,
                &identifier_ids,
                1.0 / opts.grad_accum as f64,
                &vars,
                &mut grads,
            )
            .with_context(|| {
                let ids: Vec<&str> = micro.iter().map(|e| e.id.as_str()).collect();
                format!("training examples {}", ids.join(", "))
            })?;
            for (ex, v) in micro.iter().zip(values) {
                let value = v.total;
                if !value.is_finite() {
                    bail!(
                        "training example {}: the loss is {value}; lower the learning rate",
                        ex.id
                    );
                }
                loss_sum += value;
                if let Some(r) = v.ranking {
                    flat_sum += flat_ranknet_loss(ex.order.len());
                    rank_sum += r;
                    rank_n += 1;
                }
                if let Some(g) = v.generation {
                    gen_sum += g;
                    gen_n += 1;
                }
                step_tokens += ex.tokens.len();
            }
        }
        let grad_norm = clip_grad_norm(&mut grads, opts.max_grad_norm)?;
        let lr = learning_rate(
            opts.learning_rate,
            opts.schedule,
            opts.warmup_steps,
            total_steps,
            step,
        );
        opt.step(&grads, lr)?;
        if let Some(budget) = time_budget.as_mut() {
            total_steps =
                budget.after_step(opt.steps(), total_steps, started.elapsed().as_secs_f64());
        }
        tokens_seen += step_tokens;
        last_loss = loss_sum / opts.grad_accum as f64;
        if rank_n > 0 {
            last_ranking = Some((rank_sum / rank_n as f64, flat_sum / rank_n as f64));
        }
        if first_loss.is_nan() {
            first_loss = last_loss;
        }
        let elapsed = elapsed_before + started.elapsed().as_secs_f64();
        on_step(&StepReport {
            step: opt.steps(),
            total_steps,
            loss: last_loss,
            ranking_loss: (rank_n > 0).then(|| rank_sum / rank_n as f64),
            ranking_loss_flat: (rank_n > 0).then(|| flat_sum / rank_n as f64),
            generation_loss: (gen_n > 0).then(|| gen_sum / gen_n as f64),
            learning_rate: lr,
            grad_norm,
            tokens: step_tokens,
            elapsed_s: elapsed,
        });
        let done = opt.steps() >= total_steps;
        if done || (opts.checkpoint_every > 0 && opt.steps().is_multiple_of(opts.checkpoint_every))
        {
            let state = CheckpointState {
                step: opt.steps(),
                examples: consumed,
                seed: opts.seed,
                objective: opts.objective.to_string(),
                tokens: tokens_seen,
                first_loss,
                elapsed_s: elapsed,
            };
            write_checkpoint(out_dir, &trainable, reranker.model(), &opt, &state)?;
        }
    }
    let seconds = elapsed_before + started.elapsed().as_secs_f64();
    match &trainable {
        Trainable::Lora(s) => s.save(out_dir, DType::F16, &base_model_id)?,
        Trainable::Full(vars) => {
            let tensors = full_named_tensors(reranker.model(), vars, DType::F16)?;
            super::save_safetensors(&tensors, &out_dir.join(FULL_WEIGHTS))?;
        }
    }
    let summary = TrainSummary {
        base_model: base_name,
        objective: opts.objective.to_string(),
        adapter: match &opts.adapter {
            AdapterKind::Lora(c) => format!(
                "lora r={} alpha={} dropout={} targets={}{}",
                c.rank,
                c.alpha,
                c.dropout,
                c.targets
                    .iter()
                    .map(|t| t.peft_name())
                    .collect::<Vec<_>>()
                    .join(","),
                match &trainable {
                    Trainable::Lora(s) if c.layers.is_some() => format!(
                        " layers={}",
                        s.layers()
                            .iter()
                            .map(|l| l.to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    ),
                    _ => String::new(),
                }
            ),
            AdapterKind::Full => "full".into(),
        },
        examples: examples.len(),
        steps: opt.steps(),
        tokens: tokens_seen,
        seconds,
        final_loss: last_loss,
        first_loss,
        final_ranking_loss: last_ranking.map(|r| r.0),
        ranking_loss_flat: last_ranking.map(|r| r.1),
        trainable_parameters,
        options: format!("{opts:?}"),
    };
    let path = out_dir.join("training.json");
    let tmp = out_dir.join(".training.json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&summary)? + "\n")?;
    std::fs::rename(&tmp, &path)?;
    Ok(summary)
}

fn write_checkpoint(
    out_dir: &Path,
    trainable: &Trainable,
    model: &CausalLm,
    opt: &AdamW,
    state: &CheckpointState,
) -> Result<()> {
    let tmp: PathBuf = out_dir.join(format!(".{CHECKPOINT_DIR}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    super::save_safetensors(
        &trainable.named_tensors(model, DType::F32)?,
        &tmp.join("weights.safetensors"),
    )?;
    super::save_safetensors(&opt.state()?, &tmp.join("optimizer.safetensors"))?;
    std::fs::write(
        tmp.join("state.json"),
        serde_json::to_string_pretty(state)? + "\n",
    )?;
    let dest = out_dir.join(CHECKPOINT_DIR);
    if dest.exists() {
        std::fs::remove_dir_all(&dest)?;
    }
    std::fs::rename(&tmp, &dest)
        .with_context(|| format!("cannot write checkpoint {}", dest.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::TimeBudget;

    /// Feeds step end times to a budget; returns the totals it set.
    fn run(budget: &mut TimeBudget, start_step: usize, total: usize, ends: &[f64]) -> Vec<usize> {
        let mut total = total;
        ends.iter()
            .enumerate()
            .map(|(i, &t)| {
                total = budget.after_step(start_step + i + 1, total, t);
                total
            })
            .collect()
    }

    #[test]
    fn time_budget_fixes_the_step_count_after_warmup() {
        // 60 s budget, warmup 4; the first step takes 10 s (compilation),
        // then 2 s each: at step 4 (16 s) 22 more fit → 26, then it holds.
        let mut b = TimeBudget::new(60.0, 4);
        let totals = run(&mut b, 0, 1000, &[10.0, 12.0, 14.0, 16.0, 18.0, 20.0]);
        assert_eq!(totals, vec![1000, 1000, 1000, 26, 26, 26]);
        // Never more than planned.
        let mut b = TimeBudget::new(60.0, 4);
        assert_eq!(
            run(&mut b, 0, 10, &[10.0, 12.0, 14.0, 16.0]),
            vec![10, 10, 10, 10]
        );
        // At least 3 steps are timed even without warmup.
        let mut b = TimeBudget::new(60.0, 0);
        assert_eq!(run(&mut b, 0, 1000, &[1.0, 2.0, 3.0]), vec![1000, 1000, 60]);
        // A resumed run counts its own steps and pace.
        let mut b = TimeBudget::new(60.0, 3);
        assert_eq!(
            run(&mut b, 100, 1000, &[5.0, 10.0, 15.0]),
            vec![1000, 1000, 112]
        );
    }

    #[test]
    fn time_budget_stops_a_run_that_slows_down() {
        let mut b = TimeBudget::new(60.0, 3);
        let mut totals = run(&mut b, 0, 1000, &[2.0, 4.0, 6.0]);
        assert_eq!(totals, vec![1000, 1000, 30]);
        // Steps of 20 s from here: the next one would end past 60 s.
        totals = run(&mut b, 3, 30, &[26.0, 46.0]);
        assert_eq!(totals, vec![30, 5]);
        // A budget spent before the count is fixed ends the run there.
        let mut b = TimeBudget::new(5.0, 3);
        assert_eq!(run(&mut b, 0, 1000, &[2.0, 4.0]), vec![1000, 2]);
    }
}
