//! `firstrank serve`: load the model once and serve the rerank HTTP API
//! (firstrank-server) until Ctrl-C or SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use firstrank_core::window::{WindowScorer, WindowStrategy};
use firstrank_core::{Candidate, Query};
use firstrank_server::lexical::LexicalScorer;
use firstrank_server::{BoxScorer, Limits, Server, ServerConfig, SharedTokenCounter};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ServeDiagnostic {
    /// Query-word overlap (no model): for load-testing the server itself.
    Lexical,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    firstrank serve\n  \
    FIRSTRANK_API_KEY=secret firstrank serve --model model.gguf --host 0.0.0.0 --port 9000\n  \
    curl -s localhost:8080/v1/rerank -d '{\"query\": \"capital of France\", \"documents\": [\"Berlin\", \"Paris is the capital of France\"]}'")]
pub struct ServeArgs {
    /// The model, loaded once at start (requests cannot change it); the
    /// default model when absent.
    #[command(flatten)]
    pub model: crate::model_args::ModelArg,
    #[command(flatten)]
    pub llm: crate::model_args::LlmArgs,

    /// Address to listen on (loopback by default; use 0.0.0.0 to serve the network).
    #[arg(long, default_value = "127.0.0.1", help_heading = "Server")]
    pub host: IpAddr,
    #[arg(long, default_value_t = 8080, help_heading = "Server")]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on every route but /health.
    #[arg(
        long,
        env = "FIRSTRANK_API_KEY",
        hide_env_values = true,
        value_name = "KEY",
        help_heading = "Server"
    )]
    pub api_key: Option<String>,
    /// Let browser pages from this origin call the API (CORS; repeatable,
    /// e.g. https://app.example.com). Off by default.
    #[arg(long, value_name = "ORIGIN", help_heading = "Server")]
    pub cors_allow_origin: Vec<String>,
    /// Name reported as `model` in responses (default: the model's name).
    #[arg(long, value_name = "NAME", help_heading = "Server")]
    pub served_model_name: Option<String>,

    /// Candidates per window.
    #[arg(long, default_value_t = 20, help_heading = "Window strategy")]
    pub window: usize,
    /// Positions the sliding window moves up per step.
    #[arg(long, default_value_t = 10, help_heading = "Window strategy")]
    pub stride: usize,
    /// Repeat the whole sweep this many times.
    #[arg(long, default_value_t = 1, help_heading = "Window strategy")]
    pub passes: usize,

    /// Documents per request (candidates per query in a batch); more: 413.
    #[arg(long, default_value_t = 100, help_heading = "Limits")]
    pub max_documents: usize,
    /// Bytes per document (text + title) and per query; more: 413 (TEI `truncate: true` cuts instead).
    #[arg(long, default_value_t = 64 * 1024, help_heading = "Limits")]
    pub max_document_bytes: usize,
    /// Tokens of query + documents per query; more: 413.
    #[arg(long, default_value_t = 100_000, help_heading = "Limits")]
    pub max_total_tokens: usize,
    /// Bytes per request body; more: 413.
    #[arg(long, default_value_t = 2 * 1024 * 1024, help_heading = "Limits")]
    pub max_body_bytes: usize,
    /// Queries per batch request; more: 413.
    #[arg(long, default_value_t = 64, help_heading = "Limits")]
    pub max_batch_queries: usize,
    /// Tokens of a query alone; more: 413 (at most a quarter of the model's
    /// context: the prompt shows the query twice and needs room for passages).
    #[arg(long, default_value_t = 512, help_heading = "Limits")]
    pub max_query_tokens: usize,

    /// Requests waiting for the model; beyond: 429 with Retry-After.
    #[arg(long, default_value_t = 64, help_heading = "Load")]
    pub queue_capacity: usize,
    /// Queries the worker scores together (lockstep windows).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..), help_heading = "Load")]
    pub batch_queries: u16,
    /// Requests held at once (reading, queued, scoring); beyond: 429.
    #[arg(long, default_value_t = 128, help_heading = "Load")]
    pub max_concurrent_requests: usize,
    /// Seconds a rerank request may wait and run; then 503. Requests that
    /// would not fit in it at the measured speed get 429 up front.
    #[arg(
        long,
        default_value_t = 120.0,
        value_name = "SECONDS",
        help_heading = "Load"
    )]
    pub request_timeout: f64,
    /// The same for the batch endpoint.
    #[arg(
        long,
        default_value_t = 600.0,
        value_name = "SECONDS",
        help_heading = "Load"
    )]
    pub batch_timeout: f64,
    /// Seconds to receive a request body; then 408.
    #[arg(
        long,
        default_value_t = 30.0,
        value_name = "SECONDS",
        help_heading = "Load"
    )]
    pub body_read_timeout: f64,
    /// Seconds a connection may take to send a request's headers (also when
    /// idle before its first request); then it is closed.
    #[arg(
        long,
        default_value_t = 10.0,
        value_name = "SECONDS",
        help_heading = "Load"
    )]
    pub header_read_timeout: f64,
    /// Open connections at once; beyond, new ones are closed on arrival
    /// (lowered to fit under the open-file limit).
    #[arg(long, default_value_t = 1000, help_heading = "Load")]
    pub max_connections: usize,
    /// Seconds in-flight requests may take to finish after SIGTERM or
    /// Ctrl-C; then their connections are dropped.
    #[arg(
        long,
        default_value_t = 30.0,
        value_name = "SECONDS",
        help_heading = "Load"
    )]
    pub shutdown_timeout: f64,

    /// Model-free scorer for load-testing the server (not a reranker).
    #[arg(long, value_enum, hide_short_help = true, conflicts_with = "model")]
    pub diagnostic_scorer: Option<ServeDiagnostic>,
    /// Sleep this many milliseconds per window with the diagnostic scorer (simulates a model).
    #[arg(
        long,
        default_value_t = 0,
        hide_short_help = true,
        requires = "diagnostic_scorer"
    )]
    pub diagnostic_delay_ms: u64,
    /// The diagnostic scorer reads only a document's first N words, and
    /// `max_chunks_per_doc` cuts documents into chunks of N words.
    #[arg(
        long,
        value_name = "N",
        hide_short_help = true,
        requires = "diagnostic_scorer"
    )]
    pub diagnostic_passage_words: Option<usize>,
}

/// Scores one full window of made-up passages before serving: checks the
/// model end to end and measures the seconds per window that admission
/// control starts from.
fn warm_up(scorer: &mut dyn WindowScorer, window: usize) -> Result<f64> {
    let passage = "The river runs through the old city, past the market, the museum and \
        the station, and on to the sea; its bridges date from many centuries. "
        .repeat(4);
    let candidates: Vec<Candidate> = (0..window)
        .map(|i| Candidate {
            docid: i.to_string(),
            score: 0.0,
            title: None,
            text: passage.clone(),
        })
        .collect();
    let query = Query {
        qid: "warm-up".into(),
        text: "which bridges cross the river".into(),
        instruction: None,
    };
    let started = Instant::now();
    scorer
        .score_window(&query, &candidates)
        .context("scoring a warm-up window")?;
    let secs = started.elapsed().as_secs_f64();
    tracing::info!("warm-up: one window of {window} passages in {secs:.2}s");
    Ok(secs)
}

fn seconds(flag: &str, v: f64) -> Result<Duration> {
    if !(v.is_finite() && v > 0.0) {
        bail!("--{flag} must be a positive number of seconds (got {v})");
    }
    Ok(Duration::from_secs_f64(v))
}

pub fn run(args: ServeArgs) -> Result<()> {
    // Refused before the model loads: an empty key would be no key at all.
    // (clap reads an empty FIRSTRANK_API_KEY as unset, so look at it here.)
    let empty_env = std::env::var_os("FIRSTRANK_API_KEY")
        .is_some_and(|k| k.to_string_lossy().trim().is_empty());
    if args.api_key.as_deref().is_some_and(|k| k.trim().is_empty())
        || (args.api_key.is_none() && empty_env)
    {
        bail!(
            "the API key is empty (--api-key or FIRSTRANK_API_KEY): give a key, or unset \
             FIRSTRANK_API_KEY to serve without one"
        );
    }
    // Every window the server sees is at most --window candidates; the
    // strategy covers the whole list (at most --max-documents).
    let strategy = WindowStrategy::sliding(args.window, args.stride, args.max_documents.max(1))
        .with_passes(args.passes);
    strategy.validate()?;
    for (flag, v) in [
        ("max-documents", args.max_documents),
        ("max-document-bytes", args.max_document_bytes),
        ("max-total-tokens", args.max_total_tokens),
        ("max-body-bytes", args.max_body_bytes),
        ("max-batch-queries", args.max_batch_queries),
        ("queue-capacity", args.queue_capacity),
        ("max-concurrent-requests", args.max_concurrent_requests),
        ("max-query-tokens", args.max_query_tokens),
        ("max-connections", args.max_connections),
    ] {
        if v == 0 {
            bail!("--{flag} must be at least 1");
        }
    }
    let mut initial_seconds_per_window = None;
    let mut max_query_tokens = args.max_query_tokens;
    let (scorer, counter, name): (BoxScorer, Option<SharedTokenCounter>, String) = match args
        .diagnostic_scorer
    {
        Some(ServeDiagnostic::Lexical) => (
            Box::new(LexicalScorer {
                delay_per_window: Duration::from_millis(args.diagnostic_delay_ms),
                passage_words: args.diagnostic_passage_words,
            }),
            None,
            "lexical-diagnostic".to_string(),
        ),
        None if args.llm.raw_scores => bail!(
            "serve: --raw-scores is a request field here (`raw_scores`: true), not a server flag"
        ),
        // A remote server: no tokenizer here, so request limits count about
        // four bytes per token.
        None if args.llm.remote.backend == crate::model_args::Backend::Openai => {
            let model = &args.model.model;
            let remote = args.llm.load_remote(model, args.window)?;
            (Box::new(remote), None, model.clone())
        }
        None => match args
            .llm
            .load_encoder(&args.model.model, true)
            .with_context(|| format!("loading {}", args.model.model))?
        {
            // Cross-encoders keep their logit as the raw score; the response's
            // relevance is its sigmoid.
            Some(mut encoder) => {
                initial_seconds_per_window = Some(warm_up(&mut encoder.scorer, args.window)?);
                if max_query_tokens > encoder.max_tokens / 2 {
                    tracing::warn!(
                        "--max-query-tokens {max_query_tokens} leaves no room for documents in the model's \
                         {} tokens: capping queries at {}",
                        encoder.max_tokens,
                        encoder.max_tokens / 2
                    );
                    max_query_tokens = encoder.max_tokens / 2;
                }
                let counter: SharedTokenCounter = Arc::new(encoder.counter);
                (encoder.scorer, Some(counter), encoder.name)
            }
            None => {
                let model = &args.model.model;
                let reranker = args
                    .llm
                    .load(model, args.window)
                    .with_context(|| format!("loading {model}"))?;
                let mut reranker = reranker;
                initial_seconds_per_window = Some(warm_up(&mut reranker, args.window)?);
                let context = reranker
                    .config()
                    .context_size
                    .unwrap_or(reranker.model().config().context_length);
                if max_query_tokens > context / 4 {
                    tracing::warn!(
                        "--max-query-tokens {max_query_tokens} leaves no room for passages in the model's \
                         context of {context} tokens: capping queries at {}",
                        context / 4
                    );
                    max_query_tokens = context / 4;
                }
                let counter: SharedTokenCounter = Arc::new(reranker.tokenizer().clone());
                let name = reranker.name().to_string();
                (Box::new(reranker), Some(counter), name)
            }
        },
    };
    let config = ServerConfig {
        model_name: args.served_model_name.clone().unwrap_or(name),
        strategy: strategy.for_scale(scorer.score_scale()),
        limits: Limits {
            max_documents: args.max_documents,
            max_document_bytes: args.max_document_bytes,
            max_total_tokens: args.max_total_tokens,
            max_body_bytes: args.max_body_bytes,
            max_batch_queries: args.max_batch_queries,
            max_query_tokens,
        },
        queue_capacity: args.queue_capacity,
        max_batch_queries: args.batch_queries as usize,
        max_concurrent_requests: args.max_concurrent_requests,
        request_timeout: seconds("request-timeout", args.request_timeout)?,
        batch_timeout: seconds("batch-timeout", args.batch_timeout)?,
        body_read_timeout: seconds("body-read-timeout", args.body_read_timeout)?,
        header_read_timeout: seconds("header-read-timeout", args.header_read_timeout)?,
        max_connections: args.max_connections,
        shutdown_timeout: seconds("shutdown-timeout", args.shutdown_timeout)?,
        api_key: args.api_key.clone(),
        cors_allow_origins: args.cors_allow_origin.clone(),
        initial_seconds_per_window,
    };
    if config.api_key.is_none() && !args.host.is_loopback() {
        tracing::warn!(
            "serving on {} without an API key: anyone who can reach it can use the model (set --api-key or FIRSTRANK_API_KEY)",
            args.host
        );
    }
    let server = Server::new(config, scorer, counter)?;
    server.run(SocketAddr::new(args.host, args.port))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        Cmd::try_parse_from(std::iter::once("serve").chain(args.iter().copied())).map(|c| c.serve)
    }

    #[test]
    fn model_defaults_to_the_default_model() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.model.model, crate::model_args::DEFAULT_MODEL);
        assert_eq!(parse(&["-m", "x.gguf"]).unwrap().model.model, "x.gguf");
        // The diagnostic scorer needs no model, and conflicts with an explicit one.
        assert!(parse(&["--diagnostic-scorer", "lexical"]).is_ok());
        let e = parse(&["--model", "x.gguf", "--diagnostic-scorer", "lexical"])
            .expect_err("--model with --diagnostic-scorer must be refused");
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
    }
}
