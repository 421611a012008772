//! The training loop: updates LoRA adapters (or, for full fine-tuning, every
//! projection matrix) with AdamW, warmup and decay, gradient accumulation and
//! clipping, over the examples of `example`, a micro-batch at a time through
//! `step`; checkpoints for `--resume` (`checkpoint`) and the final adapter.
//! The examples of a step are sorted by length so that similar lengths share
//! a micro-batch.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use firstrank_core::formats::write_atomically;
use firstrank_core::significance::SplitMix64;
use firstrank_models::adapter::full::{full_named_tensors, projection_from_hf, FULL_WEIGHTS};
use firstrank_models::adapter::{save_safetensors, LoraConfig, LoraSet};
use firstrank_models::reranker::LlmReranker;
use firstrank_models::transformer::{CausalLm, Projection, TrainContext};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::budget::TimeBudget;
use crate::checkpoint::{read_checkpoint, write_checkpoint, CheckpointState, RunIdentity};
use crate::evaluate::evaluate;
use crate::example::PreparedExample;
use crate::loss::{flat_ranknet_loss, Objective, FIRST_RANKING_WEIGHT};
use crate::optim::{clip_grad_norm, learning_rate, AdamW, Schedule};
use crate::step::{accumulate_batch_gradients, accumulate_lora_gradients, LossSpec};

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
    /// Weight of the per-passage ranking term ([`LossSpec::passage_weight`];
    /// 0: off, FIRST's objective as published).
    pub passage_loss_weight: f64,
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
    /// On CPUs with AVX512-BF16, run the frozen layers' projections in bf16
    /// (`CausalLm::bf16_frozen_layers`); false keeps them exact f32.
    pub bf16_frozen: bool,
    /// Evaluate on the held-out lists every this many steps (0: only at
    /// snapshots and at the end).
    pub eval_every: usize,
    /// Save the adapter as it stands when the run has seen each of these
    /// numbers of lists (`<output>/snapshots/lists-NNNNNN/`), for the
    /// learning curve's evaluations.
    pub snapshot_lists: Vec<usize>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            objective: Objective::Combined,
            ranking_weight: FIRST_RANKING_WEIGHT,
            passage_loss_weight: 0.0,
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
            bf16_frozen: true,
            eval_every: 0,
            snapshot_lists: Vec::new(),
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
        ensure!(
            self.passage_loss_weight >= 0.0 && self.passage_loss_weight.is_finite(),
            "the per-passage loss weight must be a non-negative number"
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
    /// The per-passage ranking loss, where it is on.
    pub passage_loss: Option<f64>,
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
    Full(Vec<((usize, Projection), Var)>),
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
/// `out_dir`; with `resume`, continues from `out_dir/checkpoint`. With
/// `held_out` lists, evaluates on them ([`crate::evaluate`]) before the first
/// step, every `eval_every` steps, at each snapshot and at the end, and
/// appends the results to `out_dir/eval.jsonl`.
pub fn train(
    reranker: &mut LlmReranker,
    examples: &[PreparedExample],
    held_out: &[PreparedExample],
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
                for target in Projection::ALL {
                    let var = Var::from_tensor(&model.projection_weight(layer, target)?)?;
                    model.set_projection(layer, target, var.as_tensor().clone())?;
                    vars.push(((layer, target), var));
                }
            }
            Trainable::Full(vars)
        }
    };
    if let (Trainable::Lora(set), true) = (&trainable, opts.bf16_frozen) {
        if let Some(lowest) = set.lowest_layer() {
            if reranker.model_mut().bf16_frozen_layers(lowest)? {
                tracing::info!("layers below {lowest} (frozen) multiply in bf16");
            }
        }
    }
    let vars = trainable.vars();
    // LoRA runs take the hand-derived backward pass; its gradients come by
    // adapter, in the variables' order (two each: A, B).
    let lora_slots: Option<Vec<(usize, Projection)>> = match &trainable {
        Trainable::Lora(s) => Some(s.iter().map(|(key, _)| *key).collect()),
        Trainable::Full(_) => None,
    };
    let trainable_parameters = vars.iter().map(|v| v.elem_count()).sum();
    let mut opt = AdamW::new(vars.clone(), opts.weight_decay)?;
    let mut total_steps = opts.total_steps(examples.len());
    let run = run_identity(&base_model_id, examples, opts);
    let mut consumed = 0usize;
    let mut tokens_seen = 0usize;
    let mut first_loss = f64::NAN;
    let mut elapsed_before = 0.0;
    if resume {
        let checkpoint = read_checkpoint(out_dir)?;
        let state = &checkpoint.state;
        match &state.run {
            Some(saved) => {
                let differences = saved.differences(&run);
                ensure!(
                    differences.is_empty(),
                    "--resume: the checkpoint in {} belongs to another run ({}); resume with the \
                     same options and data, or train into a new --output directory",
                    out_dir.display(),
                    differences.join("; ")
                );
            }
            None => ensure!(
                state.seed == opts.seed && state.objective == opts.objective.to_string(),
                "--resume: the checkpoint was written with seed {} and objective {}, not {} and {}",
                state.seed,
                state.objective,
                opts.seed,
                opts.objective
            ),
        }
        let weights = &checkpoint.weights;
        match &trainable {
            Trainable::Lora(s) => {
                s.check_resumable(weights)?;
                s.set_from(weights)?
            }
            Trainable::Full(vars) => {
                for ((layer, target), var) in vars {
                    let w = projection_from_hf(reranker.model(), weights, *layer, *target)?
                        .with_context(|| {
                            format!("--resume: `{}.weight` missing", target.hf_path(*layer))
                        })?;
                    var.set(&w.to_device(var.device())?)?;
                }
            }
        }
        opt.load_state(&checkpoint.optimizer)?;
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
    let spec = LossSpec {
        objective: opts.objective,
        ranking_weight: opts.ranking_weight,
        passage_weight: opts.passage_loss_weight,
        identifier_ids: &identifier_ids,
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
    if !held_out.is_empty() && !resume {
        // The curve's first point: the model before any update.
        log_evaluation(
            reranker.model(),
            &ctx_for(&trainable),
            held_out,
            &identifier_ids,
            opts,
            out_dir,
            0,
            0,
        )?;
    }
    while opt.steps() < total_steps {
        let step = opt.steps();
        let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
        let (mut loss_sum, mut rank_sum, mut gen_sum) = (0.0, 0.0, 0.0);
        let (mut rank_n, mut gen_n) = (0usize, 0usize);
        let (mut passage_sum, mut passage_n) = (0.0, 0usize);
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
            let scale = 1.0 / opts.grad_accum as f64;
            let model = reranker.model();
            let values = match &lora_slots {
                Some(slots) => {
                    accumulate_lora_gradients(model, &ctx, micro, &spec, scale, slots, &mut grads)
                }
                None => {
                    accumulate_batch_gradients(model, &ctx, micro, &spec, scale, &vars, &mut grads)
                }
            }
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
                if let Some(p) = v.passage {
                    passage_sum += p;
                    passage_n += 1;
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
            passage_loss: (passage_n > 0).then(|| passage_sum / passage_n as f64),
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
                weights_file: None,
                optimizer_file: None,
                run: Some(run.clone()),
            };
            let weights = trainable.named_tensors(reranker.model(), DType::F32)?;
            write_checkpoint(out_dir, &weights, &opt.state()?, &state)?;
        }
        let lists_before = consumed - opts.grad_accum;
        let snapshot = opts
            .snapshot_lists
            .iter()
            .copied()
            .find(|&t| lists_before < t && t <= consumed);
        if let (Some(lists), Trainable::Lora(set)) = (snapshot, &trainable) {
            let dir = out_dir.join("snapshots").join(format!("lists-{lists:06}"));
            set.save(&dir, DType::F16, &base_model_id)?;
        }
        let eval_due = opts.eval_every > 0 && opt.steps().is_multiple_of(opts.eval_every);
        if !held_out.is_empty() && (eval_due || snapshot.is_some() || done) {
            log_evaluation(
                reranker.model(),
                &ctx_for(&trainable),
                held_out,
                &identifier_ids,
                opts,
                out_dir,
                opt.steps(),
                consumed,
            )?;
        }
    }
    let seconds = elapsed_before + started.elapsed().as_secs_f64();
    match &trainable {
        Trainable::Lora(s) => s.save(out_dir, DType::F16, &base_model_id)?,
        Trainable::Full(vars) => {
            let tensors = full_named_tensors(reranker.model(), vars, DType::F16)?;
            save_safetensors(&tensors, &out_dir.join(FULL_WEIGHTS))?;
        }
    }
    let summary = TrainSummary {
        base_model: base_name,
        objective: opts.objective.to_string(),
        adapter: describe_adapter(&opts.adapter),
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
    let json = serde_json::to_string_pretty(&summary)? + "\n";
    write_atomically(out_dir.join("training.json"), json.as_bytes())?;
    Ok(summary)
}

/// The adapter of a run in one line (`training.json`, the run identity).
fn describe_adapter(adapter: &AdapterKind) -> String {
    match adapter {
        AdapterKind::Lora(c) => {
            let targets: Vec<&str> = c.targets.iter().map(|t| t.hf_name()).collect();
            // An explicit list is taken as given (sorted, deduplicated); the
            // model's depth does not matter for it.
            let layers = match &c.layers {
                Some(_) => {
                    let l: Vec<String> =
                        c.adapted_layers(0).iter().map(|i| i.to_string()).collect();
                    format!(" layers={}", l.join(","))
                }
                None => String::new(),
            };
            format!(
                "lora r={} alpha={} dropout={} targets={}{layers}",
                c.rank,
                c.alpha,
                c.dropout,
                targets.join(",")
            )
        }
        AdapterKind::Full => "full".into(),
    }
}

/// What identifies a run for `--resume` ([`RunIdentity`]).
fn run_identity(
    base_model: &str,
    examples: &[PreparedExample],
    opts: &TrainOptions,
) -> RunIdentity {
    let mut hash = Sha256::new();
    for ex in examples {
        hash.update((ex.id.len() as u64).to_le_bytes());
        hash.update(ex.id.as_bytes());
        hash.update((ex.tokens.len() as u64).to_le_bytes());
        for t in &ex.tokens {
            hash.update(t.to_le_bytes());
        }
    }
    let digest: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    RunIdentity {
        base_model: base_model.to_string(),
        objective: opts.objective.to_string(),
        seed: opts.seed,
        adapter: describe_adapter(&opts.adapter),
        learning_rate: opts.learning_rate,
        schedule: format!("{:?}", opts.schedule).to_lowercase(),
        warmup_steps: opts.warmup_steps,
        grad_accum: opts.grad_accum,
        ranking_weight: opts.ranking_weight,
        passage_loss_weight: opts.passage_loss_weight,
        neftune_alpha: opts.neftune_alpha.unwrap_or(0.0),
        weight_decay: opts.weight_decay,
        max_grad_norm: opts.max_grad_norm,
        data_sha256: digest,
        examples: examples.len(),
    }
}

/// The training context of the trained adapters without dropout or noise
/// (what evaluation runs with).
fn ctx_for(trainable: &Trainable) -> TrainContext<'_> {
    TrainContext {
        adapters: match trainable {
            Trainable::Lora(s) => Some(s),
            Trainable::Full(_) => None,
        },
        ..TrainContext::default()
    }
}

/// Evaluates on the held-out lists and appends the result to
/// `out_dir/eval.jsonl` (the file is rewritten whole, atomically, so a kill
/// never leaves half a line).
#[allow(clippy::too_many_arguments)]
fn log_evaluation(
    model: &CausalLm,
    ctx: &TrainContext<'_>,
    held_out: &[PreparedExample],
    identifier_ids: &[u32],
    opts: &TrainOptions,
    out_dir: &Path,
    step: usize,
    lists_seen: usize,
) -> Result<()> {
    let started = Instant::now();
    let report = evaluate(model, ctx, held_out, identifier_ids, opts.micro_batch)?;
    let mut line = serde_json::to_value(&report)?;
    line["step"] = step.into();
    line["lists_seen"] = lists_seen.into();
    line["seconds"] = started.elapsed().as_secs_f64().into();
    tracing::info!(
        "held-out after {lists_seen} lists: FIRST pairwise accuracy {:.4}, top-1 {:.3}{}",
        report.first_pairwise_accuracy,
        report.first_top1,
        report
            .passage_pairwise_accuracy
            .map(|p| format!(", per-passage pairwise accuracy {p:.4}"))
            .unwrap_or_default()
    );
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let path = out_dir.join("eval.jsonl");
    let mut text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    text.push_str(&(line.to_string() + "\n"));
    write_atomically(&path, text.as_bytes())?;
    Ok(())
}
