//! The `firstrank` binary: the command-line front end. Argument parsing,
//! logging and progress live here; the work itself is done by
//! firstrank-core (formats, windows, metrics) and firstrank-models.

mod bench;
mod data;
mod diagnostic;
mod eval;
mod model_args;
mod models;
mod pipeline;
mod progress;
mod quick;
mod rerank;
mod retrieval;
mod serve;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Fast listwise reranking with LLMs (FIRST single-token scoring).
#[derive(Parser, Debug)]
#[command(name = "firstrank", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Print only errors (no progress bar, no summary lines).
    #[arg(short, long, global = true)]
    quiet: bool,
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Rerank first-stage candidates and write a TREC run and/or a JSONL result.
    Rerank(Box<rerank::RerankArgs>),
    /// Score TREC runs against qrels with trec_eval's conventions.
    Eval(eval::EvalArgs),
    /// Build a first-stage index (BM25, optionally dense) over a corpus.
    Index(retrieval::IndexArgs),
    /// First-stage retrieval (BM25, dense or hybrid) into candidates for `rerank`.
    Retrieve(retrieval::RetrieveArgs),
    /// Extract keyword queries from sampled passages (synthetic topics + pseudo-qrels).
    SynthQueries(retrieval::SynthQueriesArgs),
    /// Serve the rerank HTTP API (Cohere/Jina/TEI/llama.cpp-compatible) with one loaded model.
    Serve(Box<serve::ServeArgs>),
    /// Retrieve, rerank, relevance feedback, retrieve again: one config, every stage evaluated.
    Pipeline(pipeline::PipelineArgs),
    /// Make FIRST training lists from candidates, labelled by qrels or the dense teacher.
    Label(train::LabelArgs),
    /// Fine-tune an LLM reranker with FIRST's objectives (LoRA or full).
    Train(Box<train::TrainArgs>),
    /// Write a GGUF with a trained LoRA adapter merged into the base model.
    Merge(train::MergeArgs),
    /// Time the LLM reranker: FIRST vs generation on the same windows, prefix cache, memory.
    Bench(Box<bench::BenchArgs>),
    /// List, fetch and verify the default models.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// List, fetch and locate the datasets known by name (dl19, dl20, ...).
    #[command(subcommand)]
    Data(data::DataCommand),
}

fn init_logging(quiet: bool, verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn,firstrank=info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.quiet, cli.verbose);
    if !firstrank_models::cpu_alloc::keep_freed_memory() {
        tracing::debug!("malloc thresholds not changed (not glibc)");
    }
    if !matches!(cli.command, Command::Serve(_)) {
        // `serve` shuts down gracefully on these signals itself.
        remove_unfinished_outputs_on_interrupt();
    }
    let result = match cli.command {
        Command::Rerank(args) => match args.query.clone() {
            // No data file: documents on the command line.
            Some(query) => quick::run(&args, &query, cli.quiet),
            None => rerank::run(*args, cli.quiet),
        },
        Command::Eval(args) => eval::run(args, cli.quiet),
        Command::Models(cmd) => models::run(cmd),
        Command::Data(cmd) => data::run(cmd, cli.quiet),
        Command::Label(args) => train::label(args, cli.quiet),
        Command::Train(args) => train::run(*args, cli.quiet),
        Command::Merge(args) => train::merge(args, cli.quiet),
        Command::Bench(args) => bench::run(*args, cli.quiet),
        Command::Index(args) => retrieval::index(args, cli.quiet),
        Command::Retrieve(args) => retrieval::retrieve(args, cli.quiet),
        Command::SynthQueries(args) => retrieval::synth_queries(args, cli.quiet),
        Command::Pipeline(args) => pipeline::run(args, cli.quiet),
        Command::Serve(args) => serve::run(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// On Ctrl-C, SIGTERM or SIGHUP, deletes the temp files of outputs still being
/// written and exits as the signal would have (128 + its number), so an
/// interrupted command leaves its outputs as they were and no temp files
/// beside them. (`rerank`'s `.partial` progress files are not temp files:
/// they stay, for `--resume`.)
#[cfg(unix)]
fn remove_unfinished_outputs_on_interrupt() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(s) => s,
        Err(err) => {
            tracing::warn!(
                "cannot watch for interrupts ({err}); an interrupted command may leave temp files"
            );
            return;
        }
    };
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let removed = firstrank_core::formats::remove_unfinished_outputs();
            if removed > 0 {
                eprintln!("interrupted: removed {removed} unfinished output(s)");
            }
            std::process::exit(128 + signal);
        }
    });
}

#[cfg(not(unix))]
fn remove_unfinished_outputs_on_interrupt() {}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
