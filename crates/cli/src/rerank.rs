//! `firstrank rerank`: stream candidates from a file, rerank them with a
//! window strategy and a scorer, and write a TREC run and/or a JSONL result.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use firstrank_core::chunk::start_chunked;
use firstrank_core::formats::output::partial_path;
use firstrank_core::formats::{open_requests, read_trec_run, InputSpec, OutputConfig, OutputSink};
use firstrank_core::metrics::{evaluate, EvalConfig, Metric};
use firstrank_core::qrels::Qrels;
use firstrank_core::window::{rerank_lockstep, WindowScorer, WindowStrategy};
use firstrank_core::Request;

use crate::diagnostic::{OracleScorer, ReverseScorer};
use crate::progress::query_bar;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum StrategyKind {
    /// rank_llm's sliding window: windows of --window, moving up by --stride
    /// from the bottom of the top --top-k to the top.
    Sliding,
    /// One window over the top --window candidates; the rest keep their order.
    Single,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum DiagnosticScorer {
    /// Scores candidates by their qrels grade (needs --qrels): the ceiling a
    /// window strategy can reach.
    Oracle,
    /// Reverses every window: shows the strategy moving candidates.
    Reverse,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    firstrank rerank --input ../shared/data/dl19/bm25-top100.json --output dl19.trec --diagnostic-scorer oracle --qrels ../shared/data/dl19/qrels.txt\n  \
    firstrank rerank --query \"how long do fleas live\" --doc \"Paris is the capital of France.\" --doc \"Adult fleas live two to three months.\"\n  \
    firstrank rerank --input run.trec --topics topics.tsv --corpus corpus.jsonl --output out.trec --output-jsonl out.jsonl ...")]
pub struct RerankArgs {
    /// Rank documents for this one query, without any data file: give the
    /// documents with --doc (repeatable) or --docs FILE. Prints them best
    /// first (a table, or JSON with --json).
    #[arg(
        long,
        value_name = "TEXT",
        conflicts_with_all = ["input", "output", "output_jsonl", "resume", "qrels", "eval", "diagnostic_scorer", "shuffle_input", "limit", "shard"]
    )]
    pub query: Option<String>,
    /// A document to rank for --query (repeat for each document).
    #[arg(long, value_name = "TEXT", requires = "query")]
    pub doc: Vec<String>,
    /// Documents to rank for --query, one per line; `-` reads stdin.
    #[arg(long, value_name = "FILE", requires = "query")]
    pub docs: Option<PathBuf>,
    /// With --query: print `[{"index", "score", "document"}]`, best first, as JSON.
    #[arg(long, requires = "query")]
    pub json: bool,

    /// Candidates: rank_llm retrieve_results JSON, rank_llm request JSONL, or a
    /// TREC run (then also --topics and --corpus). The format is detected. A
    /// dataset name (`dl19`, `dl20`, ...; `firstrank data list`) stands for its
    /// first-stage candidates, fetched on first use.
    #[arg(
        long,
        short,
        value_name = "FILE|DATASET",
        required_unless_present = "query"
    )]
    pub input: Option<PathBuf>,
    /// With a dataset name as --input: which first stage's candidates.
    #[arg(long, default_value = "bm25", value_name = "bm25|splade")]
    pub first_stage: String,
    /// Topics for a TREC-run input: `qid<TAB>query` per line.
    #[arg(long, value_name = "FILE", requires = "corpus")]
    pub topics: Option<PathBuf>,
    /// Corpus for a TREC-run input: JSONL {"docid"|"_id"|"id", "title"?, "text"|"contents"} or TSV docid<TAB>text.
    #[arg(long, value_name = "FILE", requires = "topics")]
    pub corpus: Option<PathBuf>,
    /// TREC run to write (`qid Q0 docid rank score tag`; scores strictly decrease with rank).
    #[arg(
        long,
        short,
        value_name = "FILE",
        required_unless_present_any = ["output_jsonl", "query"]
    )]
    pub output: Option<PathBuf>,
    /// rank_llm-style JSONL result: reordered candidates with raw model scores and every window's scores.
    #[arg(long, value_name = "FILE")]
    pub output_jsonl: Option<PathBuf>,
    /// Run tag written in the TREC run's last column.
    #[arg(long, default_value = "firstrank")]
    pub tag: String,
    /// Continue an interrupted run: queries already in the outputs' progress files are skipped.
    #[arg(long)]
    pub resume: bool,

    /// Window strategy.
    #[arg(long, value_enum, default_value_t = StrategyKind::Sliding)]
    pub strategy: StrategyKind,
    /// Candidates per window.
    #[arg(long, default_value_t = 20)]
    pub window: usize,
    /// Positions the sliding window moves up per step.
    #[arg(long, default_value_t = 10)]
    pub stride: usize,
    /// Rerank ranks [rank-start, top-k) (0-based); candidates below stay in place.
    #[arg(long, default_value_t = 100)]
    pub top_k: usize,
    /// First rank the strategy may move (0-based).
    #[arg(long, default_value_t = 0)]
    pub rank_start: usize,
    /// Repeat the whole sweep this many times.
    #[arg(long, default_value_t = 1)]
    pub passes: usize,
    /// Cut documents longer than the model's passage budget into up to N
    /// overlapping chunks; each document's chunks are compared in one window
    /// first and its best chunk stands for it (Cohere's
    /// `max_chunks_per_doc`). 1: documents are cut to the budget, as before.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub max_chunks_per_doc: usize,
    /// Queries whose windows are scored together (backends batch them).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub batch_queries: u16,
    /// Stop after this many queries.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Rerank only shard I of N (0-based, e.g. a Kubernetes Indexed Job's
    /// `$JOB_COMPLETION_INDEX/N`): the I-th of N contiguous slices of the
    /// input's queries, so the shards' outputs concatenated in order are the
    /// single-process output.
    #[arg(long, value_name = "I/N", conflicts_with = "limit")]
    pub shard: Option<String>,
    /// Control run: shuffle each query's candidates in the reranked span
    /// [rank-start, top-k) with this seed before reranking. A model that
    /// carries relevance signal keeps its nDCG; one that only follows the
    /// input order (or a letter prior) falls towards random.
    #[arg(long, value_name = "SEED")]
    pub shuffle_input: Option<u64>,

    #[command(flatten)]
    pub model: crate::model_args::ModelArg,
    #[command(flatten)]
    pub llm: crate::model_args::LlmArgs,

    /// Model-free scorer for testing the pipeline (not a reranker).
    #[arg(long, value_enum, hide_short_help = true, conflicts_with = "model")]
    pub diagnostic_scorer: Option<DiagnosticScorer>,
    /// Qrels for the oracle scorer and for --eval (a file, or a dataset name).
    #[arg(long, value_name = "FILE|DATASET")]
    pub qrels: Option<PathBuf>,
    /// After writing the TREC run, print its metrics against --qrels.
    #[arg(long, requires = "qrels", requires = "output")]
    pub eval: bool,
}

impl RerankArgs {
    fn strategy(&self) -> Result<WindowStrategy> {
        let s = match self.strategy {
            StrategyKind::Sliding => WindowStrategy::sliding(self.window, self.stride, self.top_k),
            StrategyKind::Single => WindowStrategy::single(self.window),
        }
        .with_passes(self.passes)
        .with_rank_start(self.rank_start);
        s.validate()?;
        Ok(s)
    }

    /// The candidates file; clap requires it unless --query is given.
    fn input_path(&self) -> Result<&PathBuf> {
        self.input
            .as_ref()
            .ok_or_else(|| anyhow!("--input FILE is required (or --query with --doc)"))
    }

    fn input_spec(&self) -> Result<InputSpec> {
        let input = self.input_path()?.clone();
        Ok(match (&self.topics, &self.corpus) {
            (Some(topics), Some(corpus)) => InputSpec::RunWithTexts {
                run: input,
                topics: topics.clone(),
                corpus: corpus.clone(),
            },
            _ => InputSpec::Auto(input),
        })
    }
}

fn build_scorer(args: &RerankArgs) -> Result<Box<dyn WindowScorer>> {
    match (args.diagnostic_scorer, &args.model.model) {
        (Some(DiagnosticScorer::Oracle), _) => {
            let Some(path) = &args.qrels else {
                bail!("--diagnostic-scorer oracle needs --qrels FILE");
            };
            Ok(Box::new(OracleScorer {
                qrels: Qrels::load(path)?,
            }))
        }
        (Some(DiagnosticScorer::Reverse), _) => Ok(Box::new(ReverseScorer)),
        (None, model) => {
            let max_window = match args.strategy {
                StrategyKind::Sliding => args.window.min(args.top_k),
                StrategyKind::Single => args.window,
            }
            // A document's chunks share one window.
            .max(args.max_chunks_per_doc);
            Ok(args.llm.load_scorer(model, max_window)?)
        }
    }
}

/// Shuffles the candidates at ranks `[start, end)` with a stream seeded by
/// `seed` and the query id (so each query gets its own order, reproducibly).
fn shuffle_span(request: &mut Request, seed: u64, start: usize, end: usize) {
    let end = end.min(request.candidates.len());
    if start + 1 >= end {
        return;
    }
    let qid_hash = request
        .query
        .qid
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    firstrank_core::significance::SplitMix64(seed ^ qid_hash)
        .shuffle(&mut request.candidates[start..end]);
}

/// Counts the queries of the input in the background so the progress bar
/// can show an ETA without delaying the start of work.
fn count_queries_in_background(spec: InputSpec, bar: indicatif::ProgressBar, limit: Option<usize>) {
    std::thread::spawn(move || {
        let total = match &spec {
            InputSpec::RunWithTexts { run, .. } => read_trec_run(run).map(|r| r.len()).ok(),
            InputSpec::Auto(_) => open_requests(&spec)
                .ok()
                .map(|it| it.take_while(|r| r.is_ok()).count()),
        };
        if let Some(n) = total {
            bar.set_length(limit.map_or(n, |l| l.min(n)) as u64);
        }
    });
}

/// The queries of shard `I/N` among `total`: the I-th of N contiguous,
/// near-equal slices.
fn shard_range(spec: &str, total: usize) -> Result<std::ops::Range<usize>> {
    let parsed = spec.split_once('/').and_then(|(i, n)| {
        Some((
            i.trim().parse::<usize>().ok()?,
            n.trim().parse::<usize>().ok()?,
        ))
    });
    let Some((i, n)) = parsed.filter(|&(i, n)| n > 0 && i < n) else {
        bail!("--shard {spec}: expected I/N with 0 <= I < N (e.g. 0/4)");
    };
    Ok(i * total / n..(i + 1) * total / n)
}

/// Failure injection for the kill-and-resume tests:
/// `FIRSTRANK_FAULT=rerank:<n>` aborts the process (as a kill would: no
/// destructors, no cleanup) right after the `n`-th query is written.
fn fault_after_query(written: usize) {
    let Ok(spec) = std::env::var("FIRSTRANK_FAULT") else {
        return;
    };
    if spec.strip_prefix("rerank:").and_then(|n| n.parse().ok()) == Some(written) {
        eprintln!("FIRSTRANK_FAULT: aborting after query {written}");
        std::process::abort();
    }
}

/// What determines a rerank's output, for `--resume` to check it continues
/// the same run: the scorer and its options, the window strategy, the input
/// files and the output options. Input files count by path (absolute), not
/// content, so that an input fixed in place after a parse error resumes.
fn run_fingerprint(args: &RerankArgs) -> serde_json::Value {
    let file = |p: &Option<PathBuf>| -> serde_json::Value {
        match p {
            Some(p) => serde_json::json!(std::path::absolute(p).unwrap_or_else(|_| p.clone())),
            None => serde_json::Value::Null,
        }
    };
    // The thread count does not change the ranking: a resume may use another.
    let mut llm = args.llm.clone();
    llm.threads = None;
    serde_json::json!({
        "model": args.model.model,
        "scorer": format!("{llm:?}"),
        "diagnostic_scorer": args.diagnostic_scorer.map(|d| format!("{d:?}")),
        "strategy": format!("{:?}", args.strategy),
        "window": args.window,
        "stride": args.stride,
        "top_k": args.top_k,
        "rank_start": args.rank_start,
        "passes": args.passes,
        "max_chunks_per_doc": args.max_chunks_per_doc,
        "shuffle_input": args.shuffle_input,
        "shard": args.shard,
        "input": file(&args.input),
        "topics": file(&args.topics),
        "corpus": file(&args.corpus),
        "qrels": file(&args.qrels),
        "tag": args.tag,
    })
}

/// Refuses `--max-chunks-per-doc` that the window (`--window`) or the
/// scorer cannot serve, before any output is opened.
pub fn check_chunking(scorer: &dyn WindowScorer, window: usize, max_chunks: usize) -> Result<()> {
    firstrank_core::chunk::validate_max_chunks(max_chunks, window)
        .map_err(|e| anyhow::anyhow!("--max-chunks-per-doc: {e}"))?;
    if max_chunks > 1 && scorer.passage_budget().is_none() {
        anyhow::bail!("--max-chunks-per-doc: this scorer has no tokenizer to cut documents with");
    }
    Ok(())
}

pub fn run(mut args: RerankArgs, quiet: bool) -> Result<()> {
    if let Some(input) = &args.input {
        if args.topics.is_none() {
            args.input = Some(crate::data::candidates(input, &args.first_stage, quiet)?);
        }
    }
    if let Some(q) = &args.qrels {
        args.qrels = Some(crate::data::qrels(q, quiet)?);
    }
    let strategy = args.strategy()?;
    let spec = args.input_spec()?;
    // Open the input first: a bad file fails before any output is touched.
    let requests = open_requests(&spec)?;
    let mut scorer = build_scorer(&args)?;
    // Scores comparable across windows (cross-encoders, pointwise): one window.
    let strategy = strategy.for_scale(scorer.score_scale());
    check_chunking(scorer.as_ref(), args.window, args.max_chunks_per_doc)?;
    let mut sink = OutputSink::create(OutputConfig {
        trec: args.output.clone(),
        jsonl: args.output_jsonl.clone(),
        tag: args.tag.clone(),
        resume: args.resume,
        fingerprint: Some(run_fingerprint(&args)),
    })?;
    let done: HashSet<String> = sink.completed().clone();

    let bar = query_bar(None, quiet);
    bar.set_message("reranking");
    count_queries_in_background(spec, bar.clone(), args.limit);
    let started = Instant::now();
    let (mut reranked, mut skipped, mut windows) = (0usize, 0usize, 0usize);
    let mut seen = HashSet::new();
    let mut batch: Vec<Request> = Vec::new();

    // Reranks the batch and writes it; returns the number of windows scored.
    let mut written = 0usize;
    let mut flush =
        |batch: &mut Vec<Request>, sink: &mut OutputSink, written: &mut usize| -> Result<usize> {
            if batch.is_empty() {
                return Ok(0);
            }
            let states = start_chunked(
                scorer.as_ref(),
                &strategy,
                std::mem::take(batch),
                args.max_chunks_per_doc,
            )?;
            let outcomes = rerank_lockstep(scorer.as_mut(), states)?;
            let mut n_windows = 0;
            for outcome in &outcomes {
                sink.write(outcome)?;
                *written += 1;
                fault_after_query(*written);
                n_windows += outcome.windows.len();
                bar.inc(1);
            }
            Ok(n_windows)
        };

    let shard = match &args.shard {
        Some(spec) => Some(shard_range(
            spec,
            open_requests(&args.input_spec()?)?.count(),
        )?),
        None => None,
    };
    let result: Result<()> = (|| {
        for (i, request) in requests.enumerate() {
            if args.limit.is_some_and(|l| i >= l) || shard.as_ref().is_some_and(|r| i >= r.end) {
                break;
            }
            let request = request?;
            if shard.as_ref().is_some_and(|r| i < r.start) {
                continue;
            }
            if !seen.insert(request.query.qid.clone()) {
                bail!(
                    "{}: query {} appears twice in the input; merge its candidates or remove one",
                    args.input_path()?.display(),
                    request.query.qid
                );
            }
            if done.contains(&request.query.qid) {
                skipped += 1;
                bar.inc(1);
                continue;
            }
            let mut request = request;
            if let Some(seed) = args.shuffle_input {
                shuffle_span(&mut request, seed, args.rank_start, args.top_k);
            }
            batch.push(request);
            if batch.len() >= args.batch_queries as usize {
                windows += flush(&mut batch, &mut sink, &mut written)?;
            }
            reranked += 1;
        }
        windows += flush(&mut batch, &mut sink, &mut written)?;
        Ok(())
    })();
    bar.finish_and_clear();
    if let Err(err) = result {
        drop(sink);
        let partials: Vec<PathBuf> = [&args.output, &args.output_jsonl]
            .into_iter()
            .flatten()
            .map(|p| partial_path(p))
            .collect();
        if written == 0 && skipped == 0 {
            for p in &partials {
                let _ = std::fs::remove_file(p);
            }
            return Err(anyhow!("{err:#}\n(no output was written)"));
        }
        let names: Vec<String> = partials.iter().map(|p| p.display().to_string()).collect();
        return Err(anyhow!(
            "{err:#}\n(no output was written; the queries finished so far are kept in {}: fix the input and rerun with --resume to continue)",
            names.join(" and ")
        ));
    }
    sink.finish()?;
    if !quiet {
        if let Some(line) = scorer.stats_summary() {
            eprintln!("{line}");
        }
    }
    let secs = started.elapsed().as_secs_f64();
    if !quiet {
        eprintln!(
            "reranked {reranked} queries ({windows} windows) in {secs:.1}s ({:.1} queries/s){}",
            reranked as f64 / secs.max(1e-9),
            if skipped > 0 {
                format!(", {skipped} already done")
            } else {
                String::new()
            }
        );
    }
    if args.eval {
        let (Some(qrels), Some(out)) = (&args.qrels, &args.output) else {
            unreachable!("clap requires --qrels and --output with --eval")
        };
        let qrels = Qrels::load(qrels)?;
        let run = crate::eval::load_run(out)?;
        let cfg = EvalConfig {
            metrics: vec![Metric::Ndcg(10), Metric::Recall(100), Metric::Mrr(10)],
            ..EvalConfig::default()
        };
        let e = evaluate(&run, &qrels, &cfg).context("evaluating the written run")?;
        println!("{}", e.to_trec_eval_string(false).trim_end());
    }
    Ok(())
}
