//! `firstrank index`, `firstrank retrieve` and `firstrank synth-queries`:
//! thin front ends over firstrank-retrieval (BM25 with tantivy, exact dense
//! search with all-MiniLM-L6-v2, reciprocal-rank fusion, keyword queries
//! extracted from passages). `retrieve` writes request JSONL that `rerank`
//! reads directly; `synth-queries` writes topics that `retrieve` reads.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use firstrank_core::formats::read_topics;
use firstrank_models::embed::SentenceEncoder;
use firstrank_models::fetch::ensure_model;
use firstrank_retrieval::{
    build_index, read_documents, synthesize, write_request_jsonl, write_synthetic, write_trec_run,
    Bm25Params, DenseOptions, IndexOptions, Method, Progress, RetrieveOptions, Retriever,
    SynthOptions,
};

use crate::progress::query_bar;

#[derive(Args, Debug)]
pub struct IndexArgs {
    /// Corpus: JSONL {"docid"|"_id"|"id", "title"?, "text"|"contents"} or TSV docid<TAB>text;
    /// or a rank_llm candidates file (retrieve_results JSON or request JSONL), whose
    /// passages are pooled (first occurrence of each docid kept).
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

#[derive(Args, Debug)]
pub struct SynthQueriesArgs {
    /// Passages to extract from: a corpus (JSONL or TSV, as `index` reads) or a rank_llm
    /// candidates file, whose passages are pooled.
    #[arg(long, value_name = "FILE")]
    pub corpus: PathBuf,
    /// Queries to make, each from a different passage.
    #[arg(long, value_name = "N")]
    pub count: usize,
    /// Topics to write: `qid<TAB>query` per line, qids synth-1, synth-2, ...
    #[arg(long, short, value_name = "FILE")]
    pub output: PathBuf,
    /// Also write TREC qrels `qid 0 docid 1` naming each query's source passage.
    #[arg(long, value_name = "FILE")]
    pub qrels: Option<PathBuf>,
    /// Seed of the passage and term sampling.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Fewest terms per query.
    #[arg(long, default_value_t = 3)]
    pub min_terms: usize,
    /// Most terms per query.
    #[arg(long, default_value_t = 6)]
    pub max_terms: usize,
    /// Passages with fewer words are never sampled.
    #[arg(long, default_value_t = 20)]
    pub min_words: usize,
    /// Never draw keywords found in more than this fraction of the passages
    /// (e.g. 0.05: words like "what" or "also" that the stopword list lets
    /// through stay out of the queries).
    #[arg(long, value_name = "FRACTION")]
    pub max_df: Option<f64>,
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

pub fn synth_queries(args: SynthQueriesArgs, quiet: bool) -> Result<()> {
    let options = SynthOptions {
        count: args.count,
        min_terms: args.min_terms,
        max_terms: args.max_terms,
        min_words: args.min_words,
        max_df: args.max_df,
        seed: args.seed,
    };
    // Bad options fail before the corpus is read.
    options.validate()?;
    let started = std::time::Instant::now();
    let docs = read_documents(&args.corpus)?;
    let queries = synthesize(&docs, &options)
        .with_context(|| format!("{}: extracting queries", args.corpus.display()))?;
    write_synthetic(&queries, &args.output, args.qrels.as_deref())?;
    if !quiet {
        eprintln!(
            "wrote {} queries from {} passages to {}{} in {:.1}s",
            queries.len(),
            docs.len(),
            args.output.display(),
            args.qrels
                .as_ref()
                .map(|q| format!(" (qrels: {})", q.display()))
                .unwrap_or_default(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
