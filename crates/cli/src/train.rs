//! `firstrank label` and `firstrank train`: making FIRST training lists from
//! candidates (labels from qrels or from the dense MiniLM teacher) and
//! fine-tuning an LLM on them with the ranking, generation or combined
//! objective (LoRA or full), with checkpoints, `--resume` and a progress bar.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use firstrank_core::formats::output::AtomicWriter;
use firstrank_core::formats::{open_requests, InputSpec};
use firstrank_core::prompt::{PromptOptions, PromptTemplate};
use firstrank_core::qrels::Qrels;
use firstrank_core::significance::SplitMix64;
use firstrank_core::training::{
    fuse_with_first_stage, make_lists, read_training_lists, Presentation, WindowSampling,
};
use firstrank_models::adapter::merge::MergedType;
use firstrank_models::adapter::LoraConfig;
use firstrank_models::embed::{BiEncoderScorer, SentenceEncoder};
use firstrank_models::fetch::ensure_model;
use firstrank_models::transformer::Projection;
use firstrank_models::transformer::WeightMode;
use firstrank_train::{prepare_example, train, AdapterKind, Objective, Schedule, TrainOptions};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::model_args::{LlmArgs, ModelArg};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Teacher {
    /// Relevance grades from --qrels (unjudged passages count as 0).
    Qrels,
    /// Cosine similarity of all-MiniLM-L6-v2 embeddings (query vs. passage).
    Dense,
}

#[derive(Args, Debug)]
#[command(after_help = "Example:\n  \
    firstrank label --input ../shared/data/dl22-unlabeled/bm25-top100.json --teacher dense --output lists.jsonl")]
pub struct LabelArgs {
    /// Candidates (rank_llm JSON or request JSONL), or a dataset name (its
    /// BM25 candidates; `dl22` is the training pool).
    #[arg(long, short, value_name = "FILE|DATASET")]
    pub input: PathBuf,
    /// Where the labels come from.
    #[arg(long, value_enum)]
    pub teacher: Teacher,
    /// Qrels for `--teacher qrels`.
    #[arg(long, value_name = "FILE", required_if_eq("teacher", "qrels"))]
    pub qrels: Option<PathBuf>,
    /// Training lists to write (rank_zephyr conversation JSONL).
    #[arg(long, short, value_name = "FILE")]
    pub output: PathBuf,
    /// Passages per list.
    #[arg(long, default_value_t = 20)]
    pub window: usize,
    /// Lists per query: the first-stage top window, then random slices and subsets.
    #[arg(long, default_value_t = 20)]
    pub lists_per_query: usize,
    /// Sample only from the first N candidates.
    #[arg(long, default_value_t = 100)]
    pub depth: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Order of the passages in each list: first-stage order (as reranking
    /// shows them) or shuffled (the same windows either way).
    #[arg(long, value_enum, default_value_t = Presentation::FirstStage)]
    pub order: Presentation,
    /// Prompt template: `rank_zephyr_alpha` (FIRST's), `rank_zephyr_numeric`, or a TOML file.
    #[arg(long, default_value = "rank_zephyr_alpha", value_name = "NAME|FILE")]
    pub prompt_template: String,
    /// Words kept per passage for a window of 20 (rank_llm: 300, scaled by 20/n).
    #[arg(long, value_name = "N")]
    pub max_passage_words: Option<usize>,
    /// Also cut each passage to its first N tokens of `--tokenizer`'s model
    /// (as `rerank --max-passage-tokens` does at inference).
    #[arg(long, value_name = "N")]
    pub max_passage_tokens: Option<usize>,
    /// The model whose tokenizer counts `--max-passage-tokens` (a `--model`
    /// value: the model the lists will train).
    #[arg(
        long,
        default_value = "smollm2",
        value_name = "MODEL",
        requires = "max_passage_tokens"
    )]
    pub tokenizer: String,
    /// Blend the first-stage order into the targets by reciprocal-rank fusion:
    /// label = 1/(60 + teacher rank) + W/(60 + first-stage rank). 0 keeps the
    /// teacher's order; 1 weighs both equally.
    #[arg(
        long,
        default_value_t = 0.0,
        value_name = "W",
        allow_negative_numbers = true
    )]
    pub first_stage_weight: f64,
}

/// k of the reciprocal-rank fusion behind `--first-stage-weight` (Cormack et al.'s 60).
const LABEL_FUSION_K: f64 = 60.0;

pub fn label(mut args: LabelArgs, quiet: bool) -> Result<()> {
    args.input = crate::data::candidates(&args.input, "bm25", quiet)?;
    if let Some(q) = &args.qrels {
        args.qrels = Some(crate::data::qrels(q, quiet)?);
    }
    if args.window < 2 {
        bail!("--window must be at least 2");
    }
    if args.lists_per_query == 0 {
        bail!("--lists-per-query must be at least 1");
    }
    if !(args.first_stage_weight.is_finite() && args.first_stage_weight >= 0.0) {
        bail!(
            "--first-stage-weight must be a non-negative number, got {}",
            args.first_stage_weight
        );
    }
    let template = PromptTemplate::resolve(&args.prompt_template)?;
    let mut options = PromptOptions::rank_llm();
    if let Some(w) = args.max_passage_words {
        if w == 0 {
            bail!("--max-passage-words must be at least 1");
        }
        options.max_words = Some(w);
    }
    let tokenizer = match args.max_passage_tokens {
        Some(0) => bail!("--max-passage-tokens must be at least 1"),
        Some(n) => {
            options.max_tokens = Some(n);
            let location = firstrank_models::fetch::resolve_model_arg(&args.tokenizer)?;
            Some(match &location {
                firstrank_models::fetch::ModelLocation::Gguf { path, .. } => {
                    firstrank_models::gguf_tokenizer::tokenizer_from_gguf_file(path)?
                }
                firstrank_models::fetch::ModelLocation::HfDir { dir, .. } => {
                    firstrank_models::gguf_tokenizer::tokenizer_from_hf_dir(dir)?
                }
            })
        }
        None => None,
    };
    let counter = tokenizer
        .as_ref()
        .map(|t| t as &dyn firstrank_core::prompt::TokenCounter);
    let sampling = WindowSampling {
        window: args.window,
        per_query: args.lists_per_query,
        depth: args.depth,
        seed: args.seed,
        presentation: args.order,
    };
    let qrels = match &args.qrels {
        Some(p) => Some(Qrels::load(p)?),
        None => None,
    };
    let encoder = match args.teacher {
        Teacher::Dense => Some(BiEncoderScorer {
            encoder: SentenceEncoder::load(&ensure_model("minilm")?, &candle_core::Device::Cpu)
                .context("loading the dense teacher")?,
        }),
        Teacher::Qrels => None,
    };
    let requests: Vec<_> = open_requests(&InputSpec::Auto(args.input.clone()))?
        .collect::<firstrank_core::Result<Vec<_>>>()?;
    let bar = crate::progress::query_bar(Some(requests.len() as u64), quiet);
    let mut rng = SplitMix64(args.seed);
    let mut out = AtomicWriter::create(&args.output)?;
    let (mut lists_written, mut skipped) = (0usize, 0usize);
    let mut passage_embeddings = HashMap::new();
    for request in &requests {
        let labels: HashMap<String, f64> = match (&qrels, &encoder) {
            (Some(q), _) => request
                .candidates
                .iter()
                .filter_map(|c| {
                    q.grade(&request.query.qid, &c.docid)
                        .map(|g| (c.docid.clone(), f64::from(g)))
                })
                .collect(),
            (None, Some(teacher)) => {
                let scores = teacher.scores_cached(
                    &request.query.text,
                    &request.candidates,
                    &mut passage_embeddings,
                )?;
                request
                    .candidates
                    .iter()
                    .zip(scores)
                    .map(|(c, s)| (c.docid.clone(), f64::from(s)))
                    .collect()
            }
            (None, None) => bail!("--teacher qrels needs --qrels"),
        };
        let labels = if args.first_stage_weight > 0.0 {
            fuse_with_first_stage(
                &request.candidates,
                &labels,
                0.0,
                args.first_stage_weight,
                LABEL_FUSION_K,
            )
        } else {
            labels
        };
        if request.candidates.len() < 2 {
            skipped += 1;
            bar.inc(1);
            continue;
        }
        for list in make_lists(
            request, &labels, 0.0, &template, &options, counter, &sampling, &mut rng,
        )? {
            writeln!(out, "{}", list.to_json_line())
                .with_context(|| format!("writing {}", args.output.display()))?;
            lists_written += 1;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    out.commit()?;
    if !quiet {
        eprintln!(
            "wrote {lists_written} lists for {} queries to {}{}",
            requests.len() - skipped,
            args.output.display(),
            if skipped > 0 {
                format!(" ({skipped} queries with fewer than 2 candidates skipped)")
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
#[command(
    after_help = "Example (the default adapter's recipe is in the README):\n  \
    firstrank label --input ../shared/data/dl22-unlabeled/bm25-top100.json --teacher dense --output lists.jsonl\n  \
    firstrank train --model smollm2 --data lists.jsonl --output adapters/smollm2-first"
)]
pub struct TrainArgs {
    /// The base model (trained in f32, always without a bundled adapter).
    #[command(flatten)]
    pub model: ModelArg,
    /// Training lists (rank_zephyr conversation JSONL); repeat for several files.
    #[arg(long, required = true, value_name = "FILE")]
    pub data: Vec<PathBuf>,
    /// Directory for the adapter, `training.json` and the checkpoint.
    #[arg(long, short, value_name = "DIR", required_unless_present_any = ["bench", "diagnose"])]
    pub output: Option<PathBuf>,
    /// Continue from `<output>/checkpoint`.
    #[arg(long, conflicts_with = "bench")]
    pub resume: bool,
    /// Diagnose the data instead of training: for N lists of each `--data`
    /// file, the nuclear norm and effective rank of the gradients each list
    /// sends into each adapted layer's fresh LoRA adapters (mean over the
    /// layer's projections and the lists), printed per source and layer.
    #[arg(long, value_name = "N", conflicts_with_all = ["bench", "resume", "output"])]
    pub diagnose: Option<usize>,
    /// Measure the recipe instead of training: one warm-up step, then STEPS
    /// timed steps (in a temporary directory, nothing kept); prints tokens/s,
    /// seconds per list and peak memory.
    #[arg(long, value_name = "STEPS", conflicts_with_all = ["max_time", "max_steps"])]
    pub bench: Option<usize>,
    #[arg(long, value_enum, default_value_t = Objective::Combined)]
    pub objective: Objective,
    /// λ of the ranking term in the combined objective (FIRST: 10).
    #[arg(long, default_value_t = 10.0)]
    pub ranking_weight: f64,
    /// Weight of an extra per-passage ranking term (0: off): at the newline
    /// that ends each passage the logit of its own identifier is read as a
    /// relevance score, and the scores are ranked against the target with
    /// the same weighted RankNet. It densifies the training signal (one
    /// reading per passage instead of one per list); inference stays FIRST.
    #[arg(long, default_value_t = 0.0, value_name = "W")]
    pub passage_loss: f64,
    /// Train every projection matrix instead of LoRA adapters.
    #[arg(long)]
    pub full: bool,
    #[arg(long, default_value_t = 16)]
    pub lora_rank: usize,
    #[arg(long, default_value_t = 32.0)]
    pub lora_alpha: f64,
    #[arg(long, default_value_t = 0.05)]
    pub lora_dropout: f32,
    /// Projections that get adapters (comma-separated PEFT names).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    )]
    pub lora_targets: Vec<String>,
    /// Layers that get adapters: `all`, `top:N` (the last N layers), or
    /// indices and ranges such as `20-29` or `0,4,8-11`. Layers below the
    /// lowest adapted one stay frozen and skip the backward pass, which makes
    /// a step much cheaper (PEFT's `layers_to_transform`).
    #[arg(long, default_value = "all", value_name = "SPEC", value_parser = parse_layer_spec)]
    pub lora_layers: LayerSpec,
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    #[arg(long, value_enum, default_value_t = Schedule::Cosine)]
    pub schedule: Schedule,
    /// Linear warmup steps.
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Stop after this many optimizer steps.
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Train for at most this long (`90s`, `25m`, `2h`; a bare number is
    /// seconds), counted from the first step: the run ends after the last
    /// step that fits, and the learning-rate decay is stretched over the
    /// steps that fit at the measured pace. `--max-steps`/`--epochs` still
    /// cap the run.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_time: Option<f64>,
    /// Lists per optimizer step (gradient accumulation).
    #[arg(long, default_value_t = 8)]
    pub grad_accum: usize,
    /// Lists per forward pass, padded into one batch (layers are recomputed
    /// during the backward pass, so memory holds one layer's activations for
    /// them); larger is faster on a GPU.
    #[arg(long, default_value_t = 4)]
    pub micro_batch: usize,
    /// Clip the global gradient norm (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// NEFTune embedding-noise alpha (FIRST used 5; 0: off).
    #[arg(long, default_value_t = 5.0)]
    pub neftune: f32,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Checkpoint every N optimizer steps and at the end (0: only at the end).
    #[arg(long, default_value_t = 50)]
    pub checkpoint_every: usize,
    /// Held-out training lists (not trained on) to evaluate on: FIRST's
    /// pairwise accuracy against their targets before the first step, every
    /// `--eval-every` steps, at snapshots and at the end, appended to
    /// `<output>/eval.jsonl`. Repeat for several files.
    #[arg(long, value_name = "FILE")]
    pub eval_data: Vec<PathBuf>,
    /// Keep the frozen layers (below the lowest adapter) in exact f32 on CPUs
    /// with AVX512-BF16, where they otherwise multiply in bf16 (twice as
    /// fast; the trained layers and gradients are f32 either way).
    #[arg(long)]
    pub frozen_f32: bool,
    /// Evaluate on `--eval-data` every N optimizer steps (0: only at
    /// snapshots and at the end).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub eval_every: usize,
    /// Save the adapter when the run has seen these numbers of lists
    /// (comma-separated, e.g. 250,1000,4000,16000) into
    /// `<output>/snapshots/lists-NNNNNN/`, for a learning curve.
    #[arg(long, value_delimiter = ',', value_name = "LISTS")]
    pub snapshot_lists: Vec<usize>,
    /// Skip lists longer than this many tokens.
    #[arg(long, default_value_t = 4096)]
    pub max_tokens: usize,
    #[command(flatten)]
    pub llm: LlmArgs,
}

/// `--lora-layers`: which layers get adapters, resolved once the model's
/// depth is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerSpec {
    All,
    /// The last N layers.
    Top(usize),
    /// Layer indices (ascending, no repeats).
    Listed(Vec<usize>),
}

impl LayerSpec {
    /// The layer list for a model of `n_layers` layers (`None`: all).
    fn resolve(&self, n_layers: usize) -> Result<Option<Vec<usize>>> {
        match self {
            LayerSpec::All => Ok(None),
            LayerSpec::Top(n) => {
                if *n > n_layers {
                    bail!("--lora-layers top:{n}: the model has only {n_layers} layers");
                }
                Ok(Some((n_layers - n..n_layers).collect()))
            }
            LayerSpec::Listed(l) => Ok(Some(l.clone())),
        }
    }
}

/// `--max-time`: seconds, or a number with an `s`, `m` or `h` suffix.
fn parse_duration(text: &str) -> std::result::Result<f64, String> {
    let t = text.trim();
    let (number, unit) = match t.char_indices().last() {
        Some((i, 's')) => (&t[..i], 1.0),
        Some((i, 'm')) => (&t[..i], 60.0),
        Some((i, 'h')) => (&t[..i], 3600.0),
        _ => (t, 1.0),
    };
    match number.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v * unit),
        _ => Err(format!(
            "`{text}`: expected a positive duration such as 600, 90s, 25m or 2h"
        )),
    }
}

fn parse_layer_spec(spec: &str) -> std::result::Result<LayerSpec, String> {
    let spec = spec.trim();
    if spec == "all" {
        return Ok(LayerSpec::All);
    }
    if let Some(n) = spec.strip_prefix("top:") {
        return match n.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Ok(LayerSpec::Top(n)),
            _ => Err(format!("`{spec}`: expected top:N with N at least 1")),
        };
    }
    let index = |s: &str| {
        s.trim()
            .parse::<usize>()
            .map_err(|_| format!("`{s}` is not a layer index (expected all, top:N, or indices and ranges like 0,4-7)"))
    };
    let mut layers = Vec::new();
    for part in spec.split(',') {
        match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (index(lo)?, index(hi)?);
                if lo > hi {
                    return Err(format!("`{part}`: a range runs from low to high"));
                }
                layers.extend(lo..=hi);
            }
            None => layers.push(index(part)?),
        }
    }
    layers.sort_unstable();
    layers.dedup();
    Ok(LayerSpec::Listed(layers))
}

pub fn run(mut args: TrainArgs, quiet: bool) -> Result<()> {
    let lora = LoraConfig {
        rank: args.lora_rank,
        alpha: args.lora_alpha,
        dropout: args.lora_dropout,
        targets: args
            .lora_targets
            .iter()
            .map(|t| Projection::parse(t))
            .collect::<Result<Vec<_>>>()
            .context("--lora-targets")?,
        layers: None,
    };
    if !args.full {
        lora.validate().context("LoRA options")?;
    }
    let mut opts = TrainOptions {
        objective: args.objective,
        ranking_weight: args.ranking_weight,
        passage_loss_weight: args.passage_loss,
        adapter: if args.full {
            AdapterKind::Full
        } else {
            AdapterKind::Lora(lora)
        },
        learning_rate: args.lr,
        schedule: args.schedule,
        warmup_steps: args.warmup,
        epochs: args.epochs,
        max_steps: args.max_steps,
        time_limit_s: args.max_time,
        grad_accum: args.grad_accum,
        micro_batch: args.micro_batch,
        max_grad_norm: args.max_grad_norm,
        weight_decay: args.weight_decay,
        neftune_alpha: (args.neftune > 0.0).then_some(args.neftune),
        seed: args.seed,
        checkpoint_every: args.checkpoint_every,
        bf16_frozen: !args.frozen_f32,
        eval_every: args.eval_every,
        snapshot_lists: args.snapshot_lists.clone(),
    };
    if let Some(steps) = args.bench {
        if steps == 0 {
            bail!("--bench needs at least 1 timed step");
        }
        opts.max_steps = Some(steps + 1);
        opts.checkpoint_every = 0;
    }
    opts.validate()?;
    let mut lists = Vec::new();
    for path in &args.data {
        lists.extend(read_training_lists(path)?);
    }
    if args.llm.adapter.is_some() {
        bail!("--adapter applies to rerank; to continue training use --resume");
    }
    // The lists hold their prompts as `label` rendered them: options that
    // shape passages would change nothing here, so they are refused.
    let passage_options = [
        (
            "--max-passage-tokens",
            args.llm.max_passage_tokens.is_some(),
        ),
        ("--max-passage-words", args.llm.max_passage_words.is_some()),
        ("--context-size", args.llm.context_size.is_some()),
        (
            "--passages",
            args.llm.passages != crate::model_args::PassagePrep::RankLlm,
        ),
    ];
    if let Some((flag, _)) = passage_options.iter().find(|(_, given)| *given) {
        bail!(
            "{flag} does not apply to train: the training lists hold their prompts as `firstrank label` \
             rendered them; pass passage options to label (it takes --max-passage-words and \
             --max-passage-tokens)"
        );
    }
    // Training needs dense f32 weights for the backward pass.
    args.llm.weights = WeightMode::DequantizedF32;
    let max_window = lists
        .iter()
        .map(|l| l.target.matches('>').count() + 1)
        .max()
        .unwrap_or(20)
        .max(2);
    if args.llm.device == crate::model_args::DeviceKind::Cuda {
        // TF32 tensor-core matmuls for the f32 training graph on NVIDIA GPUs
        // (10-bit mantissa products, f32 accumulation).
        candle_core::cuda::set_gemm_reduced_precision_f32(true);
    }
    // Training starts from the base model, never from a bundled adapter.
    let mut reranker = args.llm.load_base(&args.model.model, max_window)?;
    debug_assert_eq!(reranker.model().weight_mode(), WeightMode::DequantizedF32);
    if let AdapterKind::Lora(lora) = &mut opts.adapter {
        let n_layers = reranker.model().config().n_layers;
        lora.layers = args.lora_layers.resolve(n_layers)?;
        lora.validate_for(n_layers).context("--lora-layers")?;
    } else if args.lora_layers != LayerSpec::All {
        bail!("--lora-layers applies to LoRA adapters, not --full");
    }
    if let Some(n) = args.diagnose {
        return diagnose(&args, &reranker, &opts, n, quiet);
    }
    // Tokenizing tens of thousands of lists takes minutes on one core: all
    // cores share it (the tokenizer is read-only).
    let prepared: Vec<_> = {
        use rayon::prelude::*;
        lists
            .par_iter()
            .map(|l| prepare_example(l, &reranker))
            .collect::<Result<_>>()?
    };
    let mut examples = Vec::with_capacity(prepared.len());
    let mut too_long = 0;
    for ex in prepared {
        if ex.tokens.len() > args.max_tokens {
            too_long += 1;
            continue;
        }
        examples.push(ex);
    }
    if too_long > 0 {
        tracing::warn!(
            "{too_long} lists longer than --max-tokens {} skipped",
            args.max_tokens
        );
    }
    let mut held_out = Vec::new();
    for path in &args.eval_data {
        for l in read_training_lists(path)? {
            held_out.push(
                prepare_example(&l, &reranker)
                    .with_context(|| format!("{}: held-out list {}", path.display(), l.id))?,
            );
        }
    }
    if !held_out.is_empty() {
        // Held-out lists must not be trained on.
        let trained: std::collections::HashSet<&[u32]> =
            examples.iter().map(|e| e.tokens.as_slice()).collect();
        let shared = held_out
            .iter()
            .filter(|e| trained.contains(e.tokens.as_slice()))
            .count();
        if shared > 0 {
            bail!("{shared} of the --eval-data lists are also in --data; hold them out of the training lists");
        }
    }
    if examples.is_empty() {
        bail!(
            "no training lists left (all longer than --max-tokens {})",
            args.max_tokens
        );
    }
    let total = opts.total_steps(examples.len());
    if !quiet {
        eprintln!(
            "training {} on {} lists ({} tokens on average): {}{} steps of {} lists, objective {}",
            reranker.name(),
            examples.len(),
            examples.iter().map(|e| e.tokens.len()).sum::<usize>() / examples.len(),
            if opts.time_limit_s.is_some() {
                "at most "
            } else {
                ""
            },
            total,
            opts.grad_accum,
            opts.objective
        );
        if let Some(t) = opts.time_limit_s {
            eprintln!(
                "time budget {t:.0} s: the step count is fixed from the pace of the warmup steps"
            );
        }
    }
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(total as u64).with_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps  {msg}  {elapsed} (ETA {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_draw_target(ProgressDrawTarget::stderr_with_hz(2));
        b
    };
    let started = Instant::now();
    let mut tokens_done = 0usize;
    let mut timings: Vec<(usize, f64)> = Vec::new();
    let mut log = |s: &firstrank_train::StepReport| {
        tokens_done += s.tokens;
        timings.push((s.tokens, s.elapsed_s));
        let parts = [
            Some(format!("loss {:.4}", s.loss)),
            s.ranking_loss.map(|r| match s.ranking_loss_flat {
                Some(f) => format!("rank {r:.4} (flat {f:.4})"),
                None => format!("rank {r:.4}"),
            }),
            s.generation_loss.map(|g| format!("lm {g:.4}")),
            s.passage_loss.map(|p| format!("passage {p:.4}")),
            Some(format!("lr {:.2e}", s.learning_rate)),
            Some(format!(
                "{:.0} tok/s",
                tokens_done as f64 / started.elapsed().as_secs_f64().max(1e-9)
            )),
        ];
        let msg = parts.into_iter().flatten().collect::<Vec<_>>().join("  ");
        bar.set_length(s.total_steps as u64);
        bar.set_position(s.step as u64);
        bar.set_message(msg.clone());
        if bar.is_hidden() || s.step.is_multiple_of(10) || s.step == s.total_steps {
            tracing::info!(
                "step {}/{}: {msg} grad-norm {:.3}",
                s.step,
                s.total_steps,
                s.grad_norm
            );
        }
    };
    let bench_dir = match args.bench {
        Some(_) => Some(tempfile::tempdir().context("a temporary directory for --bench")?),
        None => None,
    };
    let output = match (&args.output, &bench_dir) {
        (_, Some(tmp)) => tmp.path().to_path_buf(),
        (Some(out), None) => out.clone(),
        (None, None) => bail!("--output DIR is required (or --bench STEPS)"),
    };
    let summary = train(
        &mut reranker,
        &examples,
        &held_out,
        &opts,
        &output,
        args.resume,
        &mut log,
    )?;
    if args.bench.is_some() {
        bar.finish_and_clear();
        return report_bench(&timings, &examples, &opts, quiet);
    }
    bar.finish_and_clear();
    if !quiet {
        eprintln!(
            "trained {} steps on {} tokens in {:.0}s; loss {:.4} -> {:.4}; adapter in {}",
            summary.steps,
            summary.tokens,
            summary.seconds,
            summary.first_loss,
            summary.final_loss,
            output.display()
        );
    }
    if let (Some(r), Some(flat)) = (summary.final_ranking_loss, summary.ranking_loss_flat) {
        if r >= 0.97 * flat {
            tracing::warn!(
                "the ranking loss ended at {r:.4}, the level of equal identifier logits ({flat:.4}): \
                 the adapter has not learned to order passages (more lists, more queries or a larger \
                 model may help; check it against --shuffle-input before using it)"
            );
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
#[command(after_help = "Example:\n  \
    firstrank merge --model smollm2 --adapter adapters/smollm2-first --output smollm2-first.gguf")]
pub struct MergeArgs {
    /// The base model (a GGUF file).
    #[command(flatten)]
    pub model: ModelArg,
    /// LoRA adapter directory (`firstrank train` output or any PEFT LoRA for this model).
    #[arg(long, value_name = "DIR")]
    pub adapter: PathBuf,
    /// GGUF file to write.
    #[arg(long, short, value_name = "FILE")]
    pub output: PathBuf,
    /// Storage of the merged projections (other tensors are copied).
    #[arg(long, value_enum, default_value_t = MergedType::F16)]
    pub merged_type: MergedType,
}

pub fn merge(args: MergeArgs, quiet: bool) -> Result<()> {
    use firstrank_models::adapter::merge::merge_into_gguf;
    use firstrank_models::fetch::{resolve_model_arg, ModelLocation};
    let merged = args.merged_type;
    let base = match resolve_model_arg(&args.model.model)? {
        ModelLocation::Gguf { path, .. } => path,
        ModelLocation::HfDir { dir, .. } => bail!(
            "{}: merging writes GGUF files; give a GGUF base model",
            dir.display()
        ),
    };
    if args.output == base {
        bail!("--output must differ from the base model file");
    }
    let n = merge_into_gguf(&base, &args.adapter, &args.output, merged)?;
    if !quiet {
        eprintln!(
            "merged {n} projections of {} into {}",
            args.adapter.display(),
            args.output.display()
        );
    }
    Ok(())
}

/// `train --diagnose N`: gradient spectra of N lists of each data file.
fn diagnose(
    args: &TrainArgs,
    reranker: &firstrank_models::reranker::LlmReranker,
    opts: &TrainOptions,
    n: usize,
    quiet: bool,
) -> Result<()> {
    use firstrank_models::adapter::LoraSet;
    use firstrank_models::transformer::TrainContext;
    use firstrank_train::diagnose::gradient_spectra;
    use firstrank_train::step::LossSpec;
    if n == 0 {
        bail!("--diagnose needs at least 1 list per source");
    }
    let AdapterKind::Lora(config) = &opts.adapter else {
        bail!("--diagnose measures LoRA adapter gradients; it does not apply to --full");
    };
    let set = LoraSet::new(reranker.model(), config, opts.seed)?;
    let slots: Vec<_> = set.iter().map(|(k, _)| *k).collect();
    // Dropout and noise off: the spectra of the data, not of the noise.
    let ctx = TrainContext {
        adapters: Some(&set),
        ..TrainContext::default()
    };
    let spec = LossSpec {
        objective: opts.objective,
        ranking_weight: opts.ranking_weight,
        passage_weight: opts.passage_loss_weight,
        identifier_ids: reranker.identifier_ids(),
    };
    for path in &args.data {
        let mut lists = read_training_lists(path)?;
        SplitMix64(opts.seed).shuffle(&mut lists);
        let mut examples = Vec::with_capacity(n);
        for l in lists.iter().take(n) {
            examples.push(prepare_example(l, reranker)?);
        }
        let started = Instant::now();
        let spectra = gradient_spectra(reranker.model(), &ctx, &examples, &spec, &slots)?;
        for s in &spectra {
            println!(
                "{}",
                serde_json::json!({
                    "source": path.display().to_string(),
                    "lists": examples.len(),
                    "layer": s.layer,
                    "nuclear_norm": s.nuclear_norm,
                    "effective_rank": s.effective_rank,
                })
            );
        }
        if !quiet {
            let mean = |f: fn(&firstrank_train::diagnose::LayerSpectrum) -> f64| {
                spectra.iter().map(f).sum::<f64>() / spectra.len().max(1) as f64
            };
            eprintln!(
                "{}: {} lists in {:.0}s; mean over layers: nuclear norm {:.4}, effective rank {:.3}",
                path.display(),
                examples.len(),
                started.elapsed().as_secs_f64(),
                mean(|s| s.nuclear_norm),
                mean(|s| s.effective_rank)
            );
        }
    }
    Ok(())
}

/// What `train --bench` prints: the timed steps' throughput (the first,
/// warm-up step is left out), from the trainer's own step reports.
fn report_bench(
    timings: &[(usize, f64)],
    examples: &[firstrank_train::PreparedExample],
    opts: &TrainOptions,
    quiet: bool,
) -> Result<()> {
    let (Some(&(_, warm_end)), Some(&(_, end))) = (timings.first(), timings.last()) else {
        bail!("--bench: no step finished");
    };
    let timed = &timings[1..];
    let tokens: usize = timed.iter().map(|(t, _)| t).sum();
    let lists = timed.len() * opts.grad_accum;
    let seconds = end - warm_end;
    if seconds <= 0.0 || lists == 0 {
        bail!("--bench: the timed steps took no measurable time");
    }
    let mean_tokens =
        examples.iter().map(|e| e.tokens.len()).sum::<usize>() as f64 / examples.len() as f64;
    let report = serde_json::json!({
        "timed_steps": timed.len(),
        "lists": lists,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens as f64 / seconds,
        "seconds_per_list": seconds / lists as f64,
        "lists_per_s": lists as f64 / seconds,
        "mean_tokens_per_list": mean_tokens,
        "micro_batch": opts.micro_batch,
        "grad_accum": opts.grad_accum,
        "objective": opts.objective.to_string(),
        "peak_rss_mb": crate::bench::peak_rss_mb(),
        "threads": rayon_threads(),
    });
    if !quiet {
        eprintln!(
            "train --bench: {:.0} tokens/s, {:.2} s per list ({} lists, {} tokens in {:.1} s after one warm-up step)",
            tokens as f64 / seconds,
            seconds / lists as f64,
            lists,
            tokens,
            seconds
        );
    }
    println!("{report}");
    Ok(())
}

/// CPU threads the kernels use (`RAYON_NUM_THREADS`, else every core).
fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_specs_parse_and_resolve() {
        assert_eq!(parse_layer_spec("all").unwrap(), LayerSpec::All);
        assert_eq!(parse_layer_spec("top:4").unwrap(), LayerSpec::Top(4));
        assert_eq!(
            parse_layer_spec("8-10, 2,9").unwrap(),
            LayerSpec::Listed(vec![2, 8, 9, 10])
        );
        assert_eq!(
            LayerSpec::Top(3).resolve(30).unwrap(),
            Some(vec![27, 28, 29])
        );
        assert_eq!(LayerSpec::All.resolve(30).unwrap(), None);
        assert!(LayerSpec::Top(31)
            .resolve(30)
            .unwrap_err()
            .to_string()
            .contains("only 30 layers"));
        for bad in ["top:0", "top:x", "5-2", "a", "1,,2", ""] {
            assert!(parse_layer_spec(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("600").unwrap(), 600.0);
        assert_eq!(parse_duration("90s").unwrap(), 90.0);
        assert_eq!(parse_duration("2.5m").unwrap(), 150.0);
        assert_eq!(parse_duration(" 2h ").unwrap(), 7200.0);
        for bad in ["", "m", "0", "-5m", "ten", "5d", "nan"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("positive duration"), "{bad}: {err}");
        }
    }
}
