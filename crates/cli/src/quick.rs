//! `firstrank rerank --query ... --doc ...`: the command that needs no data
//! files. It ranks a handful of documents given on the command line (or one
//! per line in a file, `-` for stdin) for one query and prints them best
//! first, as a table on a terminal or as JSON (`--json`).
//!
//! Up to `--window` documents go in one window; more are ranked with the
//! sliding window over all of them, as `rerank --input` does.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use firstrank_core::chunk::start_chunked;
use firstrank_core::window::{rerank_lockstep, WindowStrategy};
use firstrank_core::{Candidate, Query, Request};
use serde::Serialize;

use crate::rerank::RerankArgs;

/// One ranked document of the JSON output.
#[derive(Debug, Serialize)]
struct RankedDocument<'a> {
    /// 0-based position of the document in the input.
    index: usize,
    /// The scorer's raw score in the last window that held the document
    /// (FIRST: its identifier logit). Ranks are comparable; scores only
    /// within a window.
    score: Option<f32>,
    document: &'a str,
}

/// Reads `--docs FILE`: one document per non-empty line; `-` is stdin.
fn read_docs_file(path: &Path) -> Result<Vec<String>> {
    let reader: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(path)
            .with_context(|| format!("{}: cannot open the documents file", path.display()))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut docs = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| {
            format!(
                "{}:{}: not UTF-8 text (one document per line expected)",
                path.display(),
                i + 1
            )
        })?;
        let line = line.trim();
        if !line.is_empty() {
            docs.push(line.to_string());
        }
    }
    Ok(docs)
}

/// Gathers the documents of `--doc` and `--docs`, in that order.
fn documents(args: &RerankArgs) -> Result<Vec<String>> {
    let mut docs: Vec<String> = args.doc.clone();
    if let Some(path) = &args.docs {
        docs.extend(read_docs_file(path)?);
    }
    if let Some(i) = docs.iter().position(|d| d.trim().is_empty()) {
        bail!("document {} is empty; give each --doc some text", i + 1);
    }
    if docs.is_empty() {
        bail!("--query needs documents to rank: --doc TEXT (repeatable) or --docs FILE (one per line, - for stdin)");
    }
    Ok(docs)
}

/// The window strategy for `n` documents: one window when they fit, else a
/// sliding window over all of them.
fn strategy_for(args: &RerankArgs, n: usize) -> Result<WindowStrategy> {
    let s = if n <= args.window {
        WindowStrategy::single(n.max(1))
    } else {
        WindowStrategy::sliding(args.window, args.stride.min(args.window), n)
    };
    s.validate()?;
    Ok(s)
}

pub fn run(args: &RerankArgs, query: &str, quiet: bool) -> Result<()> {
    if query.trim().is_empty() {
        bail!("--query is empty");
    }
    let docs = documents(args)?;
    let strategy = strategy_for(args, docs.len())?;
    let request = Request {
        query: Query {
            qid: "query".into(),
            text: query.to_string(),
            instruction: None,
        },
        candidates: docs
            .iter()
            .enumerate()
            .map(|(i, d)| Candidate {
                docid: i.to_string(),
                // Input order is the first-stage order.
                score: (docs.len() - i) as f64,
                title: None,
                text: d.clone(),
            })
            .collect(),
    };
    // A document's chunks share one window: the model must take that many.
    let max_window = args.window.min(docs.len()).max(args.max_chunks_per_doc);
    let mut scorer = args.llm.load_scorer(&args.model.model, max_window)?;
    let strategy = strategy.for_scale(scorer.score_scale());
    crate::rerank::check_chunking(scorer.as_ref(), args.window, args.max_chunks_per_doc)?;
    let states = start_chunked(
        scorer.as_ref(),
        &strategy,
        vec![request],
        args.max_chunks_per_doc,
    )?;
    let outcome = rerank_lockstep(scorer.as_mut(), states)?
        .pop()
        .expect("one request in, one outcome out");
    if !quiet {
        if let Some(line) = scorer.stats_summary() {
            eprintln!("{line}");
        }
    }
    let ranked: Vec<RankedDocument> = outcome
        .ranked
        .iter()
        .map(|r| RankedDocument {
            index: r.original_rank,
            score: r.model_score,
            document: &docs[r.original_rank],
        })
        .collect();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &ranked)?;
        writeln!(out)?;
    } else {
        let width = if stdout.is_terminal() {
            100
        } else {
            usize::MAX
        };
        write_table(&mut out, &ranked, width)?;
    }
    out.flush()?;
    Ok(())
}

/// A plain table: rank, score, input index, the document (cut to fit
/// `width` columns on a terminal).
fn write_table(out: &mut impl Write, ranked: &[RankedDocument], width: usize) -> Result<()> {
    writeln!(
        out,
        "{:>4}  {:>8}  {:>5}  document",
        "rank", "score", "index"
    )?;
    for (rank, r) in ranked.iter().enumerate() {
        let score = r.score.map_or("-".to_string(), |s| format!("{s:.3}"));
        let room = width.saturating_sub(27).max(20);
        let doc: String = if r.document.chars().count() > room {
            let mut s: String = r.document.chars().take(room - 3).collect();
            s.push_str("...");
            s
        } else {
            r.document.to_string()
        };
        writeln!(out, "{:>4}  {:>8}  {:>5}  {doc}", rank + 1, score, r.index)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_cuts_long_documents_to_the_terminal() {
        let long = "x".repeat(300);
        let ranked = [
            RankedDocument {
                index: 1,
                score: Some(2.5),
                document: "fleas live a few months",
            },
            RankedDocument {
                index: 0,
                score: None,
                document: &long,
            },
        ];
        let mut buf = Vec::new();
        write_table(&mut buf, &ranked, 100).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].contains("2.500") && lines[1].ends_with("fleas live a few months"));
        assert!(lines[2].ends_with("...") && lines[2].chars().count() <= 100);
    }
}
