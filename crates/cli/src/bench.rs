//! `firstrank bench`: measures the LLM reranker on real windows of a
//! candidate file, all in one run and on the same windows: per-window latency
//! and prompt tokens/s in FIRST and generation mode (and their ratio), what
//! the prefix KV cache saves over one query's sliding windows, and peak
//! memory. Results print as a table and optionally as JSON.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use firstrank_core::formats::write_atomically;
use firstrank_core::formats::{open_requests, InputSpec};
use firstrank_core::window::{rerank, WindowScorer, WindowStrategy};
use firstrank_core::Request;
use firstrank_models::reranker::{LlmReranker, ScoringMode};
use serde::Serialize;

use crate::model_args::LlmArgs;

#[derive(Args, Debug)]
#[command(after_help = "Example:\n  \
    firstrank bench --model smollm2 --input ../shared/data/dl19/bm25-top100.json --windows 4 --prefix-cache")]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: crate::model_args::ModelArg,
    /// Candidates (any `rerank` input file with texts).
    #[arg(long, short, value_name = "FILE")]
    pub input: PathBuf,
    /// Windows timed per mode: the top `--window` candidates of the first N queries.
    #[arg(long, default_value_t = 4)]
    pub windows: usize,
    /// Candidates per window.
    #[arg(long, default_value_t = 20)]
    pub window: usize,
    /// Modes to time, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "first,generate"
    )]
    pub modes: Vec<ScoringMode>,
    /// Also rerank the first query's top 100 with the sliding window (20/10)
    /// in FIRST mode with and without the prefix KV cache.
    #[arg(long)]
    pub prefix_cache: bool,
    /// Also write the results as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub llm: LlmArgs,
}

#[derive(Debug, Serialize)]
struct ModeResult {
    mode: String,
    windows: u64,
    seconds: f64,
    seconds_per_window: f64,
    prompt_tokens: u64,
    /// Prompt tokens actually computed (not served from the prefix cache).
    computed_prompt_tokens: u64,
    /// Computed prompt tokens per second of window time (for generation the
    /// window time includes decoding).
    prompt_tokens_per_second: f64,
    generated_tokens: u64,
    forward_passes: u64,
}

#[derive(Debug, Serialize)]
struct PrefixCacheResult {
    windows: usize,
    seconds_with_cache: f64,
    seconds_without_cache: f64,
    speedup: f64,
    cached_prompt_tokens: u64,
    prompt_tokens: u64,
    same_ranking: bool,
}

#[derive(Debug, Serialize)]
struct BenchReport {
    model: String,
    device: String,
    weights: String,
    /// Precision of the prefill's matrix products: `bf16` (quantized weights
    /// on a CPU with AVX512-BF16) or `f32`.
    prefill: &'static str,
    threads: usize,
    modes: Vec<ModeResult>,
    generate_over_first: Option<f64>,
    prefix_cache: Option<PrefixCacheResult>,
    peak_rss_mb: Option<f64>,
}

/// Peak resident memory of this process (Linux `VmHWM`), in MB.
pub(crate) fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn time_mode(
    reranker: &mut LlmReranker,
    mode: ScoringMode,
    name: &str,
    windows: &[Request],
) -> Result<ModeResult> {
    reranker.set_mode(mode)?;
    reranker.reset_stats();
    let started = Instant::now();
    for r in windows {
        reranker
            .score_window(&r.query, &r.candidates)
            .with_context(|| format!("query {}", r.query.qid))?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let s = reranker.stats().clone();
    let computed = s.prompt_tokens - s.cached_prompt_tokens;
    Ok(ModeResult {
        mode: name.to_string(),
        windows: s.windows,
        seconds,
        seconds_per_window: seconds / s.windows.max(1) as f64,
        prompt_tokens: s.prompt_tokens,
        computed_prompt_tokens: computed,
        prompt_tokens_per_second: computed as f64 / s.seconds.max(1e-9),
        generated_tokens: s.generated_tokens,
        forward_passes: s.forward_calls,
    })
}

pub fn run(args: BenchArgs, quiet: bool) -> Result<()> {
    let modes: Vec<(String, ScoringMode)> =
        args.modes.iter().map(|&m| (m.to_string(), m)).collect();
    if args.windows == 0 || args.window < 2 {
        bail!("--windows must be at least 1 and --window at least 2");
    }
    let mut requests: Vec<Request> = Vec::new();
    for r in open_requests(&InputSpec::Auto(args.input.clone()))? {
        let r = r?;
        if r.candidates.len() >= 2 {
            requests.push(r);
        }
        if requests.len() >= args.windows {
            break;
        }
    }
    if requests.is_empty() {
        bail!(
            "{}: no query with at least 2 candidates",
            args.input.display()
        );
    }
    let windows: Vec<Request> = requests
        .iter()
        .map(|r| Request {
            query: r.query.clone(),
            candidates: r.candidates.iter().take(args.window).cloned().collect(),
        })
        .collect();
    let mut reranker = args.llm.load(&args.model.model, args.window)?;
    // Warm-up (allocations, kernel selection, CUDA JIT), untimed.
    reranker.set_mode(ScoringMode::First)?;
    reranker.score_window(&windows[0].query, &windows[0].candidates)?;
    let mut results = Vec::new();
    let mut timed: Vec<(ScoringMode, f64)> = Vec::new();
    for (name, mode) in &modes {
        let r = time_mode(&mut reranker, *mode, name, &windows)?;
        timed.push((*mode, r.seconds_per_window));
        results.push(r);
    }
    let per = |m: ScoringMode| timed.iter().find(|(t, _)| *t == m).map(|(_, s)| *s);
    let generate_over_first = match (per(ScoringMode::Generate), per(ScoringMode::First)) {
        (Some(g), Some(f)) if f > 0.0 => Some(g / f),
        _ => None,
    };
    let prefix_cache = if args.prefix_cache {
        let request = requests[0].clone();
        let strategy =
            WindowStrategy::sliding(20.min(args.window), 10.min(args.window / 2).max(1), 100);
        reranker.set_mode(ScoringMode::First)?;
        let mut run = |enabled: bool| -> Result<(f64, Vec<String>, u64, u64)> {
            reranker.set_prefix_cache(enabled);
            reranker.reset_stats();
            let started = Instant::now();
            let outcome = rerank(&mut reranker, &strategy, request.clone())?;
            let order = outcome
                .ranked
                .iter()
                .map(|r| r.candidate.docid.clone())
                .collect();
            let s = reranker.stats();
            Ok((
                started.elapsed().as_secs_f64(),
                order,
                s.cached_prompt_tokens,
                s.prompt_tokens,
            ))
        };
        let (with, order_with, cached, prompt) = run(true)?;
        let (without, order_without, _, _) = run(false)?;
        reranker.set_prefix_cache(true);
        Some(PrefixCacheResult {
            windows: reranker.stats().windows as usize,
            seconds_with_cache: with,
            seconds_without_cache: without,
            speedup: without / with.max(1e-9),
            cached_prompt_tokens: cached,
            prompt_tokens: prompt,
            same_ranking: order_with == order_without,
        })
    } else {
        None
    };
    let report = BenchReport {
        model: reranker.name().to_string(),
        device: format!("{:?}", args.llm.device),
        weights: format!("{}", reranker.model().weight_mode()),
        prefill: if reranker.model().bf16_prefill() {
            "bf16"
        } else {
            "f32"
        },
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        modes: results,
        generate_over_first,
        prefix_cache,
        peak_rss_mb: peak_rss_mb(),
    };
    if !quiet {
        println!(
            "model {} ({} weights, {} prefill, {}, {} threads)",
            report.model, report.weights, report.prefill, report.device, report.threads
        );
        println!("mode       windows  s/window  prompt tok/s  generated tokens");
        for r in &report.modes {
            println!(
                "{:<10} {:>7}  {:>8.3}  {:>12.0}  {:>16}",
                r.mode,
                r.windows,
                r.seconds_per_window,
                r.prompt_tokens_per_second,
                r.generated_tokens
            );
        }
        if let Some(x) = report.generate_over_first {
            println!("generation / FIRST per window: {x:.2}x");
        }
        if let Some(p) = &report.prefix_cache {
            println!(
                "prefix cache, one query's sliding windows: {:.2}s with, {:.2}s without ({:.2}x; {} of {} prompt tokens cached; same ranking: {})",
                p.seconds_with_cache,
                p.seconds_without_cache,
                p.speedup,
                p.cached_prompt_tokens,
                p.prompt_tokens,
                p.same_ranking
            );
        }
        if let Some(m) = report.peak_rss_mb {
            println!("peak RSS: {m:.0} MB");
        }
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)? + "\n";
        write_atomically(path, json.as_bytes())?;
    }
    Ok(())
}
