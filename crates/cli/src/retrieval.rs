//! `firstrank index` and `firstrank retrieve`: thin front ends over
//! firstrank-retrieval (BM25 with tantivy, exact dense search with
//! all-MiniLM-L6-v2, reciprocal-rank fusion). `retrieve` writes request JSONL
//! that `rerank` reads directly.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use firstrank_core::formats::read_topics;
use firstrank_models::embed::SentenceEncoder;
use firstrank_models::fetch::ensure_model;
use firstrank_retrieval::{
    build_index, write_request_jsonl, write_trec_run, Bm25Params, DenseOptions, IndexOptions,
    Method, Progress, RetrieveOptions, Retriever,
};

use crate::progress::query_bar;

#[derive(Args, Debug)]
pub struct IndexArgs {
    /// Corpus: JSONL {"docid"|"_id"|"id", "title"?, "text"|"contents"} or TSV docid<TAB>text.
    #[arg(long, value_name = "FILE")]
    pub corpus: PathBuf,
    /// Index directory to create (must not exist or be empty).
    #[arg(long, value_name = "DIR")]
    pub index: PathBuf,
    /// Also build the dense (all-MiniLM-L6-v2) index; slow on CPU (~15 docs/s on 2 cores).
    #[arg(long)]
    pub dense: bool,
    /// BM25 k1 (Anserini's MS MARCO setting).
    #[arg(long, default_value_t = 0.9)]
    pub k1: f32,
    /// BM25 b (Anserini's MS MARCO setting).
    #[arg(long, default_value_t = 0.4)]
    pub b: f32,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    Bm25,
    Dense,
    /// Reciprocal-rank fusion (k = 60) of BM25 and dense.
    Hybrid,
}

#[derive(Args, Debug)]
pub struct RetrieveArgs {
    /// Index directory built by `firstrank index`.
    #[arg(long, value_name = "DIR")]
    pub index: PathBuf,
    /// Topics: `qid<TAB>query` per line.
    #[arg(long, value_name = "FILE")]
    pub topics: PathBuf,
    #[arg(long, value_enum, default_value_t = MethodArg::Bm25)]
    pub method: MethodArg,
    /// Candidates per query.
    #[arg(long, short, default_value_t = 100)]
    pub k: usize,
    /// Request JSONL with passage texts (input for `rerank`).
    #[arg(
        long,
        short,
        value_name = "FILE",
        required_unless_present = "output_trec"
    )]
    pub output: Option<PathBuf>,
    /// TREC run of the same candidates.
    #[arg(long, value_name = "FILE")]
    pub output_trec: Option<PathBuf>,
}

fn encoder() -> Result<SentenceEncoder> {
    SentenceEncoder::load(&ensure_model("minilm")?, &candle_core::Device::Cpu)
}

pub fn index(args: IndexArgs, quiet: bool) -> Result<()> {
    if args.k1 <= 0.0 || !(0.0..=1.0).contains(&args.b) {
        bail!(
            "BM25 needs k1 > 0 and 0 <= b <= 1 (got k1 {}, b {})",
            args.k1,
            args.b
        );
    }
    let enc = if args.dense { Some(encoder()?) } else { None };
    let opts = IndexOptions {
        bm25: Some(Bm25Params {
            k1: args.k1,
            b: args.b,
        }),
        dense: enc.as_ref().map(|e| DenseOptions {
            encoder: e,
            model_name: "all-MiniLM-L6-v2".into(),
            chunk: 256,
        }),
    };
    let bar = query_bar(None, quiet);
    let mut report = |p: Progress| {
        if let Some(t) = p.total {
            bar.set_length(t);
        }
        bar.set_position(p.done);
        bar.set_message(format!("{:?} ({:.0} docs/s)", p.stage, p.docs_per_sec()));
    };
    let manifest = build_index(&args.corpus, &args.index, &opts, &mut report)?;
    bar.finish_and_clear();
    if !quiet {
        eprintln!(
            "indexed {} documents into {}",
            manifest.corpus.num_docs,
            args.index.display()
        );
    }
    Ok(())
}

pub fn retrieve(args: RetrieveArgs, quiet: bool) -> Result<()> {
    let queries = read_topics(&args.topics)?;
    let method = match args.method {
        MethodArg::Bm25 => Method::Bm25,
        MethodArg::Dense => Method::Dense,
        MethodArg::Hybrid => Method::Hybrid,
    };
    let mut retriever = Retriever::open(&args.index)?;
    if method != Method::Bm25 {
        retriever = retriever.with_encoder(encoder()?)?;
    }
    let started = std::time::Instant::now();
    let requests = retriever.retrieve(
        &queries,
        &RetrieveOptions {
            method,
            k: args.k,
            rrf_k: 60.0,
            fusion_depth: 1000,
        },
    )?;
    if let Some(p) = &args.output {
        write_request_jsonl(p, &requests)?;
    }
    if let Some(p) = &args.output_trec {
        write_trec_run(p, &requests, "firstrank")?;
    }
    if !quiet {
        eprintln!(
            "retrieved {} queries in {:.1}s",
            requests.len(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
