//! A small retrieval testbed: the corpus is the union of every passage in
//! shared/data/*/*.json (deduplicated by docid), indexed with BM25 (then
//! evaluated) and all-MiniLM-L6-v2, and DL19's queries are run (k = 100) by
//! BM25, dense and hybrid retrieval and scored against DL19's qrels.
//!
//! The pool holds only passages some first stage already ranked in the top
//! 100 for a DL query, so absolute numbers are not comparable with
//! full-MS MARCO runs (recall is inflated, and BM25's idf comes from ~20k
//! passages, not 8.8M); it checks that the pipeline ranks sensibly.
//!
//! `cargo run -p firstrank-retrieval --example dl19_testbed -- [WORK_DIR]`
//! (default WORK_DIR /tmp/firstrank-testbed; shared/ from env FIRSTRANK_SHARED
//! or beside the workspace). Needs the `minilm` default model (fetched on first use).

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;
use firstrank_core::formats::{read_requests, InputSpec};
use firstrank_core::metrics::{evaluate, EvalConfig, Metric};
use firstrank_core::qrels::Qrels;
use firstrank_models::embed::SentenceEncoder;
use firstrank_retrieval::{
    add_dense_index, build_index, to_run, DenseOptions, IndexOptions, Method, Progress,
    RetrieveOptions, Retriever,
};

fn main() -> Result<()> {
    let work = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "/tmp/firstrank-testbed".into()),
    );
    let shared = std::env::var_os("FIRSTRANK_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    std::fs::create_dir_all(&work)?;

    // 1. Corpus: union of all passages, first text per docid.
    let corpus = work.join("corpus.jsonl");
    let mut seen = HashSet::new();
    let mut out = std::io::BufWriter::new(std::fs::File::create(&corpus)?);
    let mut files: Vec<PathBuf> = std::fs::read_dir(shared.join("data"))?
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    for f in &files {
        for r in read_requests(&InputSpec::Auto(f.clone()))? {
            for c in r.candidates {
                if seen.insert(c.docid.clone()) {
                    let line =
                        serde_json::json!({"docid": c.docid, "title": c.title, "text": c.text});
                    writeln!(out, "{line}")?;
                }
            }
        }
    }
    out.flush()?;
    drop(out);
    eprintln!(
        "corpus: {} passages from {} files -> {}",
        seen.len(),
        files.len(),
        corpus.display()
    );

    // 2. BM25 index, evaluated at once; then the dense part (slow on CPU).
    let index = work.join("index");
    if index.exists() {
        std::fs::remove_dir_all(&index)?;
    }
    let mut report = |p: Progress| {
        if p.finished || p.done.is_multiple_of(4096) {
            eprintln!(
                "  {:?}: {} docs, {:.0} docs/s",
                p.stage,
                p.done,
                p.docs_per_sec()
            )
        }
    };
    let t = Instant::now();
    build_index(&corpus, &index, &IndexOptions::default(), &mut report)?;
    eprintln!("BM25 indexed in {:.1}s", t.elapsed().as_secs_f64());

    let dl19 = shared.join("data/dl19");
    let queries: Vec<_> = read_requests(&InputSpec::Auto(dl19.join("bm25-top100.json")))?
        .into_iter()
        .map(|r| r.query)
        .collect();
    let qrels = Qrels::load(&dl19.join("qrels.txt")).context("qrels")?;
    let cfg = EvalConfig {
        metrics: vec![Metric::Ndcg(10), Metric::Recall(100)],
        ..EvalConfig::default()
    };
    // The pool's own reference: the Anserini BM25 top-100 it came from.
    let anserini = read_requests(&InputSpec::Auto(dl19.join("bm25-top100.json")))?;
    let e = evaluate(&to_run(&anserini), &qrels, &cfg)?;
    println!(
        "{:<22} nDCG@10 {:.4}  R@100 {:.4}  ({} queries)",
        "anserini bm25 (given)", e.mean[0], e.mean[1], e.num_queries
    );
    let eval = |retriever: &Retriever, method: Method| -> Result<()> {
        let t = Instant::now();
        let opts = RetrieveOptions {
            method,
            k: 100,
            ..Default::default()
        };
        let reqs = retriever.retrieve(&queries, &opts)?;
        let secs = t.elapsed().as_secs_f64();
        let e = evaluate(&to_run(&reqs), &qrels, &cfg)?;
        println!(
            "{:<22} nDCG@10 {:.4}  R@100 {:.4}  ({} queries, {secs:.2}s)",
            format!("{method:?}"),
            e.mean[0],
            e.mean[1],
            e.num_queries
        );
        Ok(())
    };
    eval(&Retriever::open(&index)?, Method::Bm25)?;

    let model_dir = firstrank_models::fetch::ensure_model("minilm")?;
    let encoder = SentenceEncoder::load(&model_dir, &Device::Cpu)?;
    let t = Instant::now();
    add_dense_index(
        &index,
        &DenseOptions {
            encoder: &encoder,
            model_name: "all-MiniLM-L6-v2".into(),
            chunk: 4096,
        },
        &mut report,
    )?;
    eprintln!("dense indexed in {:.1}s", t.elapsed().as_secs_f64());
    let retriever = Retriever::open(&index)?.with_encoder(encoder)?;
    for method in [Method::Bm25, Method::Dense, Method::Hybrid] {
        eval(&retriever, method)?;
    }
    Ok(())
}
