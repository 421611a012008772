//! `firstrank eval`: trec_eval-compatible scoring of TREC runs, and a paired
//! comparison of two runs with significance tests.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use firstrank_core::formats::{
    detect_format, open_requests, read_trec_run_strict, InputFormat, InputSpec,
};
use firstrank_core::metrics::{evaluate, EvalConfig, Evaluation, Metric, Run};
use firstrank_core::qrels::Qrels;
use firstrank_core::significance::{paired_t_test, randomization_test};

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    firstrank eval --qrels ../shared/data/dl19/qrels.txt run.trec\n  \
    firstrank eval --qrels qrels.txt --metric nDCG@10 --metric R@100 --per-query run.trec\n  \
    firstrank eval --qrels qrels.txt --compare bm25.trec reranked.trec")]
pub struct EvalArgs {
    /// Judgments, `qid iter docid grade` per line, or a dataset name (`dl19`).
    #[arg(long, value_name = "FILE|DATASET")]
    pub qrels: PathBuf,
    /// Runs to score: TREC runs (`qid Q0 docid rank score tag`), or candidate
    /// files (retrieve_results JSON, request JSONL) scored by their
    /// first-stage scores; a dataset name stands for its BM25 candidates.
    #[arg(value_name = "RUN", required_unless_present = "compare")]
    pub runs: Vec<PathBuf>,
    /// Compare two runs per query: means, difference, paired t-test and
    /// randomization test for every metric (B - A).
    #[arg(long, num_args = 2, value_names = ["A", "B"], conflicts_with = "runs")]
    pub compare: Option<Vec<PathBuf>>,
    /// Metric to report (repeatable): nDCG@k, MAP, R@k, MRR@k, P@k, or trec_eval
    /// names (ndcg_cut_10, recall_100, recip_rank_10, P_10).
    /// Default: nDCG@5, nDCG@10, nDCG@20, MAP, R@20, R@100, MRR@10, P@10.
    #[arg(long = "metric", short = 'm', value_name = "METRIC")]
    pub metrics: Vec<Metric>,
    /// Minimum grade counted as relevant by the binary metrics (trec_eval -l).
    /// 2 for TREC DL passage ranking. nDCG always uses graded gains.
    #[arg(long, default_value_t = 2, value_name = "GRADE")]
    pub rel_level: i32,
    /// Average over all judged queries, counting those absent from the run as 0
    /// (trec_eval -c). Default: over the queries in both run and qrels.
    #[arg(long)]
    pub complete: bool,
    /// Also print every query's values.
    #[arg(long)]
    pub per_query: bool,
    /// Print trec_eval's own layout (`measure<TAB>qid<TAB>value`) instead of a table.
    #[arg(long, conflicts_with = "json")]
    pub trec_eval_format: bool,
    /// Print JSON (means and, with --per-query, per-query values).
    #[arg(long)]
    pub json: bool,
    /// Random permutations for the randomization test of --compare.
    #[arg(long, default_value_t = 10_000)]
    pub trials: usize,
    /// Seed of the randomization test (results are reproducible).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Reads a run to evaluate: a TREC run, or any candidate file `rerank`
/// accepts (retrieve_results JSON, request JSONL), scored by its
/// first-stage scores.
pub fn load_run(path: &Path) -> Result<Run> {
    if detect_format(path)? == InputFormat::TrecRun {
        let entries = read_trec_run_strict(path)?;
        return Ok(entries
            .into_iter()
            .map(|(qid, list)| (qid, list.into_iter().map(|e| (e.docid, e.score)).collect()))
            .collect());
    }
    let mut run = Run::new();
    for request in open_requests(&InputSpec::Auto(path.to_path_buf()))? {
        let request = request?;
        let list = request
            .candidates
            .into_iter()
            .map(|c| (c.docid, c.score))
            .collect();
        if run.insert(request.query.qid.clone(), list).is_some() {
            bail!(
                "{}: query {} appears twice",
                path.display(),
                request.query.qid
            );
        }
    }
    Ok(run)
}

fn config(args: &EvalArgs) -> EvalConfig {
    let mut cfg = EvalConfig {
        rel_threshold: args.rel_level,
        average_complete: args.complete,
        ..EvalConfig::default()
    };
    if !args.metrics.is_empty() {
        cfg.metrics = args.metrics.clone();
    }
    cfg
}

fn evaluate_file(path: &Path, qrels: &Qrels, cfg: &EvalConfig) -> Result<Evaluation> {
    let run = load_run(path)?;
    let eval =
        evaluate(&run, qrels, cfg).with_context(|| format!("evaluating {}", path.display()))?;
    if eval.num_queries == 0 {
        bail!(
            "{}: no query of the run has judgments in the qrels (are the qids the same?)",
            path.display()
        );
    }
    Ok(eval)
}

pub fn run(mut args: EvalArgs, quiet: bool) -> Result<()> {
    // Dataset names (`--qrels dl19`, a run `dl19`: its BM25 candidates).
    args.qrels = crate::data::qrels(&args.qrels, quiet)?;
    for run in args
        .runs
        .iter_mut()
        .chain(args.compare.iter_mut().flatten())
    {
        *run = crate::data::candidates(run, "bm25", quiet)?;
    }
    let qrels = Qrels::load(&args.qrels)?;
    let cfg = config(&args);
    if let Some(pair) = &args.compare {
        return compare(&args, &qrels, &cfg, &pair[0], &pair[1]);
    }
    let mut all = Vec::new();
    for path in &args.runs {
        all.push((path.clone(), evaluate_file(path, &qrels, &cfg)?));
    }
    if args.json {
        let value: Vec<_> = all
            .iter()
            .map(|(p, e)| eval_json(p, e, args.per_query))
            .collect();
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else if args.trec_eval_format {
        for (path, e) in &all {
            if all.len() > 1 {
                println!("# {}", path.display());
            }
            print!("{}", e.to_trec_eval_string(args.per_query));
        }
    } else {
        print_table(&all, args.per_query);
    }
    Ok(())
}

fn eval_json(path: &Path, e: &Evaluation, per_query: bool) -> serde_json::Value {
    let mean: serde_json::Map<_, _> = e
        .metrics
        .iter()
        .zip(&e.mean)
        .map(|(m, v)| (m.to_string(), serde_json::json!(v)))
        .collect();
    let mut out = serde_json::json!({
        "run": path.display().to_string(),
        "num_queries": e.num_queries,
        "mean": mean,
    });
    if per_query {
        let pq: serde_json::Map<_, _> = e
            .per_query
            .iter()
            .map(|(q, vals)| {
                let m: serde_json::Map<_, _> = e
                    .metrics
                    .iter()
                    .zip(vals)
                    .map(|(m, v)| (m.to_string(), serde_json::json!(v)))
                    .collect();
                (q.clone(), serde_json::Value::Object(m))
            })
            .collect();
        out["per_query"] = serde_json::Value::Object(pq);
    }
    out
}

fn print_table(all: &[(PathBuf, Evaluation)], per_query: bool) {
    let metrics = &all[0].1.metrics;
    let header: Vec<String> = metrics
        .iter()
        .map(|m| format!("{:>8}", m.to_string()))
        .collect();
    for (path, e) in all {
        println!("{}  ({} queries)", path.display(), e.num_queries);
        println!("{:<12}{}", "qid", header.join(" "));
        if per_query {
            for (qid, vals) in &e.per_query {
                let cells: Vec<String> = vals.iter().map(|v| format!("{v:>8.4}")).collect();
                println!("{:<12}{}", qid, cells.join(" "));
            }
        }
        let cells: Vec<String> = e.mean.iter().map(|v| format!("{v:>8.4}")).collect();
        println!("{:<12}{}", "mean", cells.join(" "));
    }
}

fn compare(args: &EvalArgs, qrels: &Qrels, cfg: &EvalConfig, a: &Path, b: &Path) -> Result<()> {
    let ea = evaluate_file(a, qrels, cfg)?;
    let eb = evaluate_file(b, qrels, cfg)?;
    let mut rows = Vec::new();
    for &metric in &cfg.metrics {
        let (va, vb) = ea.paired(&eb, metric)?;
        // Differences are B - A: positive means B is better.
        let t = paired_t_test(&vb, &va)?;
        let p_rand = randomization_test(&vb, &va, args.trials, args.seed)?;
        rows.push((
            metric,
            ea.mean_of(metric).unwrap_or(f64::NAN),
            eb.mean_of(metric).unwrap_or(f64::NAN),
            t,
            p_rand,
        ));
    }
    if args.json {
        let value: Vec<_> = rows
            .iter()
            .map(|(m, ma, mb, t, pr)| {
                serde_json::json!({
                    "metric": m.to_string(), "a": ma, "b": mb, "diff": t.mean_diff,
                    "t": t.t, "df": t.df, "p_t_test": t.p_value, "p_randomization": pr,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "a": a.display().to_string(), "b": b.display().to_string(),
                "num_queries": ea.num_queries, "trials": args.trials, "seed": args.seed,
                "metrics": value,
            }))?
        );
        return Ok(());
    }
    println!(
        "A: {}\nB: {}\n{} queries, paired two-sided tests of B - A",
        a.display(),
        b.display(),
        ea.num_queries
    );
    println!(
        "{:<10}{:>8}{:>8}{:>9}{:>9}{:>10}{:>10}",
        "metric", "A", "B", "B-A", "t", "p(t)", "p(rand)"
    );
    for (m, ma, mb, t, pr) in rows {
        let mark = if t.p_value < 0.05 { " *" } else { "" };
        println!(
            "{:<10}{:>8.4}{:>8.4}{:>+9.4}{:>9.3}{:>10.4}{:>10.4}{}",
            m.to_string(),
            ma,
            mb,
            t.mean_diff,
            t.t,
            t.p_value,
            pr,
            mark
        );
    }
    println!("* p(t) < 0.05");
    Ok(())
}
