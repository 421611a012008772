//! `firstrank pipeline --config pipeline.toml`: retrieve → rerank → relevance
//! feedback → retrieve → (rerank) in one command, evaluated after every stage.
//! This module only reads the config, checks it, runs the stages in order and
//! reports; the work is firstrank-retrieval's (retrieval, ReFIT feedback in
//! `firstrank_retrieval::feedback`), firstrank-core's (window strategies,
//! metrics) and firstrank-models' (LLM reranker, MiniLM encoder).
//!
//! Config (TOML; relative paths are relative to the config file):
//! ```toml
//! index = "index"            # built by `firstrank index` (with --dense for dense/hybrid/feedback)
//! topics = "topics.tsv"      # qid<TAB>query, any rerank input file (its queries are used), or a dataset name (dl19)
//! output_dir = "runs/x"      # one TREC run per ranking stage + summary.json
//! limit = 10                 # optional: first N queries
//! [eval]                     # optional
//! qrels = "qrels.txt"        # or a dataset name (dl19)
//! metrics = ["nDCG@10", "R@100", "MAP"]   # the default
//! [[stages]]
//! stage = "retrieve"         # method bm25|dense|hybrid, k (100; 1000 after feedback)
//! [[stages]]
//! stage = "rerank"           # model + any `firstrank rerank` model option (weights = "f32", ...)
//! [[stages]]
//! stage = "feedback"         # signal reranker|dense|oracle|bm25, top_k, kl_steps, ...
//! ```
//! Every stage's run is written atomically as `NN-<stage>.trec` (and the
//! feedback stage's per-query report as `NN-feedback.jsonl`) as soon as the
//! stage ends; a config error is reported before any work starts.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::{Args, Parser};
use firstrank_core::chunk::start_chunked;
use firstrank_core::formats::{
    detect_format, read_requests, read_topics, write_atomically, AtomicWriter,
};
use firstrank_core::formats::{InputFormat, InputSpec};
use firstrank_core::metrics::{evaluate, EvalConfig, Metric, Run};
use firstrank_core::qrels::Qrels;
use firstrank_core::window::{rerank_lockstep, WindowScorer, WindowStrategy};
use firstrank_core::{Query, Request};
use firstrank_models::embed::SentenceEncoder;
use firstrank_models::fetch::ensure_model;
use firstrank_retrieval::feedback::{
    oracle_order, refine_query, teacher_from_order, FeedbackParams, Signal,
};
use firstrank_retrieval::{Method, RetrieveOptions, Retriever};
use serde::Deserialize;

use crate::diagnostic::{OracleScorer, ReverseScorer};
use crate::model_args::LlmArgs;
use crate::progress::query_bar;

#[derive(Args, Debug)]
#[command(after_help = "Example config: crates/cli/examples/pipeline-dl19.toml")]
pub struct PipelineArgs {
    /// Pipeline config (TOML): index, topics, output_dir, [eval], [[stages]].
    #[arg(long, short, value_name = "FILE")]
    pub config: PathBuf,
    /// Override the config's output_dir.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Override the config's limit: only the first N queries.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Override the config's topics (e.g. the same pipeline on another query set).
    #[arg(long, value_name = "FILE")]
    pub topics: Option<PathBuf>,
    /// Override the config's [eval] qrels.
    #[arg(long, value_name = "FILE")]
    pub qrels: Option<PathBuf>,
}

// ---------------------------------------------------------------------------
// Config

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    index: PathBuf,
    topics: PathBuf,
    output_dir: PathBuf,
    limit: Option<usize>,
    #[serde(default)]
    eval: EvalSection,
    stages: Vec<toml::Table>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct EvalSection {
    qrels: Option<PathBuf>,
    metrics: Option<Vec<String>>,
    /// Minimum grade counted relevant by the binary metrics (TREC DL: 2).
    rel_level: Option<i32>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RetrieveStage {
    method: String,
    k: Option<usize>,
    #[serde(default = "default_fusion_depth")]
    fusion_depth: usize,
    #[serde(default = "default_rrf_k")]
    rrf_k: f64,
}

fn default_fusion_depth() -> usize {
    1000
}
fn default_rrf_k() -> f64 {
    60.0
}

/// The rerank stage's own keys; every other key is a `firstrank rerank`
/// model option (parsed by the same [`LlmArgs`]).
#[derive(Deserialize, Debug)]
struct RerankStage {
    model: Option<String>,
    /// Hidden test aid, as `rerank --diagnostic-scorer`: oracle | reverse.
    diagnostic_scorer: Option<String>,
    #[serde(default = "default_strategy")]
    strategy: String,
    #[serde(default = "default_window")]
    window: usize,
    #[serde(default = "default_stride")]
    stride: usize,
    #[serde(default = "default_top_k")]
    top_k: usize,
    #[serde(default = "default_one")]
    passes: usize,
    #[serde(default = "default_one")]
    batch_queries: usize,
    /// As `rerank --max-chunks-per-doc`.
    #[serde(default = "default_one")]
    max_chunks_per_doc: usize,
    #[serde(flatten)]
    model_options: toml::Table,
}

fn default_strategy() -> String {
    "sliding".into()
}
fn default_window() -> usize {
    20
}
fn default_stride() -> usize {
    10
}
fn default_top_k() -> usize {
    100
}
fn default_one() -> usize {
    1
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FeedbackStage {
    signal: String,
    #[serde(default = "default_top_k")]
    top_k: usize,
    kl_steps: Option<usize>,
    kl_lr: Option<f64>,
    ranknet_steps: Option<usize>,
    ranknet_lr: Option<f64>,
    renormalize: Option<bool>,
    /// bm25 signal: BM25 depth searched for the candidates' scores.
    #[serde(default = "default_fusion_depth")]
    bm25_depth: usize,
}

/// Only the model options, parsed from the rerank stage's extra keys.
#[derive(Parser, Debug)]
#[command(name = "rerank stage", no_binary_name = true, disable_help_flag = true)]
struct ModelOptions {
    #[command(flatten)]
    llm: LlmArgs,
}

enum Scorer {
    Model { name: String, llm: Box<LlmArgs> },
    Oracle,
    Reverse,
}

enum Stage {
    Retrieve(RetrieveOptions),
    Rerank {
        scorer: Scorer,
        strategy: WindowStrategy,
        /// Candidates the strategy can touch (texts are loaded for these).
        reach: usize,
        /// The largest window the model will see.
        max_window: usize,
        batch_queries: usize,
        max_chunks_per_doc: usize,
    },
    Feedback {
        signal: Signal,
        top_k: usize,
        params: FeedbackParams,
        bm25_depth: usize,
    },
}

impl Stage {
    fn label(&self) -> String {
        match self {
            Stage::Retrieve(o) => format!("retrieve-{}", method_name(o.method)),
            Stage::Rerank { scorer, .. } => match scorer {
                Scorer::Model { name, .. } => format!("rerank-{}", sanitize(name)),
                Scorer::Oracle => "rerank-oracle".into(),
                Scorer::Reverse => "rerank-reverse".into(),
            },
            Stage::Feedback { signal, .. } => format!("feedback-{}", signal_name(*signal)),
        }
    }
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::Bm25 => "bm25",
        Method::Dense => "dense",
        Method::Hybrid => "hybrid",
    }
}

fn signal_name(s: Signal) -> &'static str {
    match s {
        Signal::Reranker => "reranker",
        Signal::Dense => "dense",
        Signal::Oracle => "oracle",
        Signal::Bm25 => "bm25",
    }
}

/// A model path or name as a file-name part.
fn sanitize(name: &str) -> String {
    let base = Path::new(name)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| name.to_owned());
    base.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

struct Config {
    index: PathBuf,
    topics: PathBuf,
    output_dir: PathBuf,
    limit: Option<usize>,
    qrels: Option<PathBuf>,
    eval: EvalConfig,
    stages: Vec<Stage>,
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Like [`resolve`], but a value that names no file beside the config and
/// is a dataset name (`topics = "dl19"`, `qrels = "dl19"`) stays the name,
/// which `run` resolves through the dataset cache.
fn resolve_data(base: &Path, p: &Path) -> PathBuf {
    let beside = resolve(base, p);
    let is_name = p.to_str().and_then(firstrank_data::dataset).is_some();
    if is_name && !beside.exists() {
        p.to_path_buf()
    } else {
        beside
    }
}

/// Turns the rerank stage's extra keys into `--key value` arguments.
fn model_argv(table: &toml::Table) -> Result<Vec<String>> {
    let mut argv = Vec::new();
    for (k, v) in table {
        let flag = format!("--{}", k.replace('_', "-"));
        match v {
            toml::Value::Boolean(true) => argv.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::String(s) => argv.extend([flag, s.clone()]),
            toml::Value::Integer(i) => argv.extend([flag, i.to_string()]),
            toml::Value::Float(f) => argv.extend([flag, f.to_string()]),
            _ => bail!("`{k}` must be a string, a number or a boolean"),
        }
    }
    Ok(argv)
}

fn parse_stage(mut table: toml::Table, after_feedback: bool) -> Result<Stage> {
    let name = match table.remove("stage") {
        Some(toml::Value::String(s)) => s,
        Some(other) => bail!("`stage` must be a string, found {}", other.type_str()),
        None => bail!("missing `stage` (retrieve, rerank or feedback)"),
    };
    let value = toml::Value::Table(table);
    let stage = match name.as_str() {
        "retrieve" => {
            let s: RetrieveStage = value.try_into()?;
            let method: Method = s.method.parse()?;
            let k = s.k.unwrap_or(if after_feedback { 1000 } else { 100 });
            ensure!(k > 0, "`k` must be at least 1");
            ensure!(
                s.rrf_k.is_finite() && s.rrf_k >= 0.0,
                "`rrf_k` must be a non-negative number"
            );
            if after_feedback && method == Method::Bm25 {
                bail!("feedback learns a dense query vector: retrieve with method \"dense\" or \"hybrid\" after it, not \"bm25\"");
            }
            Stage::Retrieve(RetrieveOptions {
                method,
                k,
                rrf_k: s.rrf_k,
                fusion_depth: s.fusion_depth,
            })
        }
        "rerank" => {
            let s: RerankStage = value.try_into()?;
            let scorer = match (&s.diagnostic_scorer, &s.model) {
                (Some(_), Some(_)) => bail!("give `model` or `diagnostic_scorer`, not both"),
                (Some(d), None) => {
                    ensure!(
                        s.model_options.is_empty(),
                        "model options ({}) need `model`",
                        s.model_options
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    match d.as_str() {
                        "oracle" => Scorer::Oracle,
                        "reverse" => Scorer::Reverse,
                        other => {
                            bail!("unknown diagnostic_scorer `{other}`; expected oracle or reverse")
                        }
                    }
                }
                (None, Some(m)) => {
                    let argv = model_argv(&s.model_options)?;
                    let opts = ModelOptions::try_parse_from(&argv).map_err(|e| {
                        let text = e.to_string();
                        let first = text
                            .lines()
                            .next()
                            .unwrap_or("")
                            .trim_start_matches("error: ");
                        anyhow!("model options: {first}")
                    })?;
                    Scorer::Model {
                        name: m.clone(),
                        llm: Box::new(opts.llm),
                    }
                }
                (None, None) => bail!("missing `model` (e.g. model = \"smollm2\")"),
            };
            let strategy = match s.strategy.as_str() {
                "sliding" => WindowStrategy::sliding(s.window, s.stride, s.top_k),
                "single" => WindowStrategy::single(s.window),
                other => bail!("unknown strategy `{other}`; expected sliding or single"),
            }
            .with_passes(s.passes);
            strategy.validate()?;
            ensure!(s.batch_queries >= 1, "`batch_queries` must be at least 1");
            firstrank_core::chunk::validate_max_chunks(s.max_chunks_per_doc, s.window)?;
            let reach = if s.strategy == "single" {
                s.window
            } else {
                s.top_k
            };
            Stage::Rerank {
                scorer,
                strategy,
                reach,
                max_window: s.window.min(reach).max(s.max_chunks_per_doc),
                batch_queries: s.batch_queries,
                max_chunks_per_doc: s.max_chunks_per_doc,
            }
        }
        "feedback" => {
            let s: FeedbackStage = value.try_into()?;
            let signal: Signal = s.signal.parse()?;
            let d = FeedbackParams::default();
            let params = FeedbackParams {
                kl_steps: s.kl_steps.unwrap_or(d.kl_steps),
                kl_lr: s.kl_lr.unwrap_or(d.kl_lr),
                ranknet_steps: s.ranknet_steps.unwrap_or(d.ranknet_steps),
                ranknet_lr: s.ranknet_lr.unwrap_or(d.ranknet_lr),
                renormalize: s.renormalize.unwrap_or(d.renormalize),
            };
            params.validate()?;
            ensure!(s.top_k >= 2, "`top_k` must be at least 2");
            Stage::Feedback {
                signal,
                top_k: s.top_k,
                params,
                bm25_depth: s.bm25_depth.max(1),
            }
        }
        other => bail!("unknown stage `{other}`; expected retrieve, rerank or feedback"),
    };
    Ok(stage)
}

fn load_config(path: &Path, args: &PipelineArgs) -> Result<Config> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let raw: RawConfig = toml::from_str(&text).map_err(|e| anyhow!("{}: {}", path.display(), e))?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    ensure!(
        !raw.stages.is_empty(),
        "{}: no [[stages]]; the first stage must be a retrieve stage",
        path.display()
    );
    let mut stages = Vec::new();
    let mut after_feedback = false;
    for (i, t) in raw.stages.into_iter().enumerate() {
        let stage = parse_stage(t, after_feedback)
            .map_err(|e| anyhow!("{}: stages[{i}]: {e:#}", path.display()))?;
        match &stage {
            Stage::Retrieve(_) => after_feedback = false,
            Stage::Feedback { .. } => after_feedback = true,
            Stage::Rerank { .. } => {}
        }
        stages.push(stage);
    }
    // Order rules.
    let mut reranked = false;
    let mut feedback_pending = false;
    for (i, s) in stages.iter().enumerate() {
        let at = || format!("{}: stages[{i}] ({})", path.display(), s.label());
        match s {
            Stage::Retrieve(_) => {
                reranked = false;
                feedback_pending = false;
            }
            _ if i == 0 => bail!("{}: the first stage must be a retrieve stage", at()),
            Stage::Rerank { .. } => reranked = true,
            Stage::Feedback { signal, .. } => {
                if *signal == Signal::Reranker && !reranked {
                    bail!(
                        "{}: signal \"reranker\" needs a rerank stage between the last retrieve stage and this one",
                        at()
                    );
                }
                if feedback_pending {
                    bail!(
                        "{}: two feedback stages without a retrieve stage between them",
                        at()
                    );
                }
                feedback_pending = true;
            }
        }
    }
    if feedback_pending {
        bail!(
            "{}: a feedback stage must be followed by a retrieve stage (method dense or hybrid) that uses the learned query vectors",
            path.display()
        );
    }
    let qrels = args
        .qrels
        .clone()
        .or_else(|| raw.eval.qrels.as_ref().map(|q| resolve_data(base, q)));
    let needs_qrels = stages.iter().any(|s| {
        matches!(
            s,
            Stage::Feedback {
                signal: Signal::Oracle,
                ..
            } | Stage::Rerank {
                scorer: Scorer::Oracle,
                ..
            }
        )
    });
    if needs_qrels && qrels.is_none() {
        bail!(
            "{}: the oracle (signal \"oracle\" or diagnostic_scorer \"oracle\") needs qrels: set `qrels` under [eval]",
            path.display()
        );
    }
    let metrics = match &raw.eval.metrics {
        None => vec![Metric::Ndcg(10), Metric::Recall(100), Metric::Map],
        Some(names) => {
            ensure!(
                !names.is_empty(),
                "{}: [eval] metrics is empty",
                path.display()
            );
            names
                .iter()
                .map(|n| {
                    n.parse::<Metric>()
                        .map_err(|e| anyhow!("{}: [eval] metrics: {e}", path.display()))
                })
                .collect::<Result<_>>()?
        }
    };
    let eval = EvalConfig {
        metrics,
        rel_threshold: raw.eval.rel_level.unwrap_or(2),
        average_complete: false,
    };
    Ok(Config {
        index: resolve(base, &raw.index),
        topics: args
            .topics
            .clone()
            .unwrap_or_else(|| resolve_data(base, &raw.topics)),
        output_dir: args
            .output_dir
            .clone()
            .unwrap_or_else(|| resolve(base, &raw.output_dir)),
        limit: args.limit.or(raw.limit),
        qrels,
        eval,
        stages,
    })
}

/// Queries from a topics TSV, or from any rerank input file.
fn load_queries(path: &Path) -> Result<Vec<Query>> {
    let queries = match detect_format(path) {
        Ok(InputFormat::RetrieveResults | InputFormat::RequestJsonl) => {
            read_requests(&InputSpec::Auto(path.to_path_buf()))?
                .into_iter()
                .map(|r| r.query)
                .collect()
        }
        _ => read_topics(path)?,
    };
    ensure!(!queries.is_empty(), "{}: no queries", path.display());
    Ok(queries)
}

// ---------------------------------------------------------------------------
// Running

#[derive(Debug, Clone)]
struct Entry {
    ord: u64,
    docid: String,
    /// Score of the retrieve stage that produced the list.
    first_score: f64,
    /// Score written to the run (retrieval score, or n..1 after a rerank).
    score: f64,
}

struct Row {
    label: String,
    queries: usize,
    metrics: Option<Vec<f64>>,
    secs: f64,
    file: Option<PathBuf>,
}

fn write_run(path: &Path, queries: &[Query], lists: &[Vec<Entry>], tag: &str) -> Result<()> {
    let mut w = AtomicWriter::create(path)?;
    for (q, list) in queries.iter().zip(lists) {
        ensure!(
            !q.qid.is_empty() && !q.qid.contains(char::is_whitespace),
            "qid `{}` cannot be written to a TREC run (empty or has whitespace)",
            q.qid
        );
        for (i, e) in list.iter().enumerate() {
            writeln!(w, "{} Q0 {} {} {} {}", q.qid, e.docid, i + 1, e.score, tag)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    w.commit()?;
    Ok(())
}

fn to_run(queries: &[Query], lists: &[Vec<Entry>]) -> Run {
    queries
        .iter()
        .zip(lists)
        .map(|(q, l)| {
            (
                q.qid.clone(),
                l.iter().map(|e| (e.docid.clone(), e.score)).collect(),
            )
        })
        .collect()
}

fn entries(retriever: &Retriever, hits: Vec<Vec<(u64, f64)>>) -> Result<Vec<Vec<Entry>>> {
    hits.into_iter()
        .map(|h| {
            h.into_iter()
                .map(|(ord, score)| {
                    Ok(Entry {
                        ord,
                        docid: retriever.docs().get(ord)?.docid,
                        first_score: score,
                        score,
                    })
                })
                .collect()
        })
        .collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn run(args: PipelineArgs, quiet: bool) -> Result<()> {
    let cfg = load_config(&args.config, &args)?;
    // Everything a stage needs is checked before any work starts. Topics
    // and qrels may be dataset names (fetched into the cache if missing).
    let qrels = match &cfg.qrels {
        Some(p) => Some(Qrels::load(&crate::data::qrels(p, quiet)?)?),
        None => None,
    };
    let mut queries = load_queries(&crate::data::candidates(&cfg.topics, "bm25", quiet)?)?;
    if let Some(n) = cfg.limit {
        queries.truncate(n);
    }
    let mut retriever = Retriever::open(&cfg.index)?;
    let needs_dense = cfg.stages.iter().any(|s| match s {
        Stage::Retrieve(o) => o.method != Method::Bm25,
        Stage::Feedback { .. } => true,
        Stage::Rerank { .. } => false,
    });
    let needs_bm25 = cfg.stages.iter().any(|s| match s {
        Stage::Retrieve(o) => o.method != Method::Dense,
        Stage::Feedback { signal, .. } => *signal == Signal::Bm25,
        Stage::Rerank { .. } => false,
    });
    if needs_dense && retriever.manifest().dense.is_none() {
        bail!(
            "{}: dense retrieval and feedback need the index's dense part; build it with `firstrank index --dense`",
            cfg.index.display()
        );
    }
    if needs_bm25 && retriever.manifest().bm25.is_none() {
        bail!("{}: this index has no BM25 part", cfg.index.display());
    }
    if needs_dense {
        let enc = SentenceEncoder::load(&ensure_model("minilm")?, &candle_core::Device::Cpu)?;
        retriever = retriever.with_encoder(enc)?;
    }
    std::fs::create_dir_all(&cfg.output_dir)
        .with_context(|| format!("creating {}", cfg.output_dir.display()))?;

    let mut lists: Vec<Vec<Entry>> = Vec::new();
    // The original query vectors (encoded on first use) and the learned ones.
    let mut original: Option<Vec<Vec<f32>>> = None;
    let mut learned: Option<Vec<Vec<f32>>> = None;
    let mut rows: Vec<Row> = Vec::new();
    let mut scorers: HashMap<usize, Box<dyn WindowScorer>> = HashMap::new();

    for (si, stage) in cfg.stages.iter().enumerate() {
        let label = stage.label();
        let file_stem = format!("{:02}-{label}", si + 1);
        let started = Instant::now();
        let mut file = None;
        match stage {
            Stage::Retrieve(opts) => {
                let hits = match (opts.method, learned.take()) {
                    (Method::Bm25, _) => retriever.hits(&queries, opts)?,
                    (_, Some(vectors)) => retriever.hits_for_vectors(&queries, &vectors, opts)?,
                    (_, None) => {
                        if original.is_none() {
                            original = Some(retriever.encode_queries(&queries)?);
                        }
                        let v = original.as_ref().expect("just set");
                        retriever.hits_for_vectors(&queries, v, opts)?
                    }
                };
                lists = entries(&retriever, hits)?;
            }
            Stage::Rerank {
                scorer,
                strategy,
                reach,
                max_window,
                batch_queries,
                max_chunks_per_doc,
            } => {
                if let std::collections::hash_map::Entry::Vacant(slot) = scorers.entry(si) {
                    let s: Box<dyn WindowScorer> = match scorer {
                        Scorer::Oracle => Box::new(OracleScorer {
                            qrels: qrels.clone().expect("checked with the config"),
                        }),
                        Scorer::Reverse => Box::new(ReverseScorer),
                        Scorer::Model { name, llm } => llm.load_scorer(name, *max_window)?,
                    };
                    slot.insert(s);
                }
                let s = scorers.get_mut(&si).expect("inserted above");
                let bar = query_bar(Some(queries.len() as u64), quiet);
                bar.set_message(label.clone());
                for (chunk_q, chunk_l) in queries
                    .chunks(*batch_queries)
                    .zip(lists.chunks_mut(*batch_queries))
                {
                    let requests: Vec<Request> = chunk_q
                        .iter()
                        .zip(chunk_l.iter())
                        .map(|(q, list)| {
                            let n = (*reach).min(list.len());
                            let candidates = list[..n]
                                .iter()
                                .map(|e| retriever.docs().candidate(e.ord, e.first_score))
                                .collect::<Result<Vec<_>>>()?;
                            Ok(Request {
                                query: q.clone(),
                                candidates,
                            })
                        })
                        .collect::<Result<_>>()?;
                    let strategy = strategy.for_scale(s.score_scale());
                    let states =
                        start_chunked(s.as_ref(), &strategy, requests, *max_chunks_per_doc)?;
                    let outcomes = rerank_lockstep(s.as_mut(), states)?;
                    for (outcome, list) in outcomes.into_iter().zip(chunk_l.iter_mut()) {
                        let n = outcome.ranked.len();
                        let head: Vec<Entry> = outcome
                            .ranked
                            .iter()
                            .map(|rc| list[rc.original_rank].clone())
                            .collect();
                        list.splice(..n, head);
                        let total = list.len();
                        for (i, e) in list.iter_mut().enumerate() {
                            e.score = (total - i) as f64;
                        }
                        bar.inc(1);
                    }
                }
                bar.finish_and_clear();
            }
            Stage::Feedback {
                signal,
                top_k,
                params,
                bm25_depth,
            } => {
                if original.is_none() {
                    original = Some(retriever.encode_queries(&queries)?);
                }
                let start = original.as_ref().expect("just set");
                let path = cfg.output_dir.join(format!("{file_stem}.jsonl"));
                let mut report = AtomicWriter::create(&path)?;
                let mut out = Vec::with_capacity(queries.len());
                for ((q, list), q0) in queries.iter().zip(&lists).zip(start) {
                    let top = &list[..(*top_k).min(list.len())];
                    let ords: Vec<u64> = top.iter().map(|e| e.ord).collect();
                    let p = retriever.embeddings(&ords)?;
                    let dim = q0.len();
                    let teacher: Vec<f32> = match signal {
                        Signal::Reranker => teacher_from_order(
                            &top.iter().map(|e| e.first_score).collect::<Vec<_>>(),
                        ),
                        Signal::Oracle => {
                            let qr = qrels.as_ref().expect("checked with the config");
                            let grades: Vec<i32> = top
                                .iter()
                                .map(|e| qr.grade(&q.qid, &e.docid).unwrap_or(0).max(0))
                                .collect();
                            let ideal = oracle_order(&grades);
                            let by_pos = teacher_from_order(
                                &ideal
                                    .iter()
                                    .map(|&i| top[i].first_score)
                                    .collect::<Vec<_>>(),
                            );
                            let mut t = vec![0f32; top.len()];
                            for (r, &i) in ideal.iter().enumerate() {
                                t[i] = by_pos[r];
                            }
                            t
                        }
                        Signal::Dense => p.chunks_exact(dim).map(|row| dot(row, q0)).collect(),
                        Signal::Bm25 => retriever.bm25_scores(q, &ords, *bm25_depth)?,
                    };
                    let r = refine_query(q0, &p, &teacher, params)
                        .with_context(|| format!("feedback for query {}", q.qid))?;
                    let stage_json = |s: Option<firstrank_retrieval::feedback::StageReport>| {
                        s.map(|s| {
                            serde_json::json!({"scale": s.scale, "loss_start": s.loss_start,
                                "loss_end": s.loss_end, "terms": s.terms})
                        })
                    };
                    let line = serde_json::json!({
                        "qid": q.qid,
                        "candidates": top.len(),
                        "kl": stage_json(r.kl),
                        "ranknet": stage_json(r.ranknet),
                        "cosine_to_original": r.cosine_to_original,
                    });
                    writeln!(report, "{line}")?;
                    out.push(r.query);
                }
                report.commit()?;
                file = Some(path);
                learned = Some(out);
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let metrics = match (stage, &qrels) {
            (Stage::Feedback { .. }, _) | (_, None) => None,
            (_, Some(qr)) => {
                let e = evaluate(&to_run(&queries, &lists), qr, &cfg.eval)
                    .with_context(|| format!("evaluating stage {} ({label})", si + 1))?;
                Some(e.mean)
            }
        };
        if !matches!(stage, Stage::Feedback { .. }) {
            let path = cfg.output_dir.join(format!("{file_stem}.trec"));
            write_run(&path, &queries, &lists, &format!("firstrank-{label}"))?;
            file = Some(path);
        }
        let row = Row {
            label: format!("{} {label}", si + 1),
            queries: queries.len(),
            metrics,
            secs,
            file,
        };
        if !quiet {
            eprintln!("{}", format_row(&row, &cfg.eval.metrics));
        }
        rows.push(row);
    }
    print_table(&rows, &cfg.eval.metrics);
    write_summary(&cfg, &rows)?;
    Ok(())
}

fn format_row(row: &Row, metrics: &[Metric]) -> String {
    let mut s = format!("{:<28} {:>7}", row.label, row.queries);
    for i in 0..metrics.len() {
        match &row.metrics {
            Some(m) => s.push_str(&format!(" {:>9.4}", m[i])),
            None => s.push_str(&format!(" {:>9}", "-")),
        }
    }
    s.push_str(&format!(" {:>9.1}s", row.secs));
    s
}

fn print_table(rows: &[Row], metrics: &[Metric]) {
    let mut header = format!("{:<28} {:>7}", "stage", "queries");
    for m in metrics {
        header.push_str(&format!(" {:>9}", m.to_string()));
    }
    header.push_str(&format!(" {:>10}", "time"));
    println!("{header}");
    for r in rows {
        println!("{}", format_row(r, metrics));
    }
}

fn write_summary(cfg: &Config, rows: &[Row]) -> Result<()> {
    let stages: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let metrics: serde_json::Map<String, serde_json::Value> = match &r.metrics {
                Some(m) => cfg
                    .eval
                    .metrics
                    .iter()
                    .zip(m)
                    .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
                    .collect(),
                None => serde_json::Map::new(),
            };
            serde_json::json!({
                "stage": r.label,
                "queries": r.queries,
                "metrics": metrics,
                "seconds": r.secs,
                "file": r.file.as_ref().and_then(|f| f.file_name()).map(|f| f.to_string_lossy().into_owned()),
            })
        })
        .collect();
    let mut json = serde_json::to_vec_pretty(&serde_json::json!({ "stages": stages }))?;
    json.push(b'\n');
    write_atomically(cfg.output_dir.join("summary.json"), &json)?;
    Ok(())
}
