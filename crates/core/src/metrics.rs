//! trec_eval-exact effectiveness metrics: nDCG@k, MAP, Recall@k, MRR@k and P@k,
//! per query and averaged. Hand-written because the values must match the C
//! trec_eval (9.x) bit for bit in their conventions, which no Rust crate promises;
//! the integration test `tests/metrics.rs` checks every metric per query against
//! trec_eval itself (through pytrec_eval) on TREC DL runs.
//!
//! Conventions (from trec_eval's `form_res_rels.c`, `m_ndcg_cut.c`, `m_map.c`,
//! `m_recall.c`, `m_P.c`, `m_recip_rank.c`, `trec_eval.c`):
//! * **Order.** The ranking is re-sorted by score descending; ties are broken by
//!   docid in *descending* byte (strcmp) order. The order of the input list is
//!   ignored, exactly as trec_eval ignores the rank column.
//! * **Relevance.** Unjudged documents are non-relevant with gain 0. Binary metrics
//!   (MAP, R@k, P@k, MRR@k) count a document relevant when its grade is
//!   `>= rel_threshold` (trec_eval `-l`; 2 on TREC DL). nDCG ignores the threshold
//!   (as trec_eval's `ndcg_cut` does): gain = grade, grades <= 0 give nothing,
//!   discount 1/log2(rank+1) (current trec_eval `m_ndcg_cut.c`, also used by
//!   pytrec_eval; some old releases did not discount rank 2), ideal DCG = the query's judged positive grades
//!   sorted descending (judged anywhere, not only retrieved), cut at k.
//! * **Cut-offs.** nDCG@k = `ndcg_cut.k`; R@k = `recall.k`; P@k = `P.k` (always
//!   divided by k, even when fewer than k documents are retrieved); MAP = `map`
//!   over the whole ranking; MRR@k = `recip_rank` under `-M k` (only the top k
//!   documents count; 0 when none is relevant).
//! * **Queries.** A query is evaluated when it is both in the run (with at least
//!   one document: an empty list is what a run file without lines for it would
//!   give) and in the qrels. A judged query with no relevant document is still
//!   evaluated and scores 0 on the binary metrics (and on nDCG when it has no
//!   positive grade). The mean is over the evaluated queries (trec_eval's default);
//!   with `average_complete` (trec_eval `-c`) it is over all judged queries, the
//!   missing ones counting 0 (they then appear in `per_query` with zeros).
//! * **Errors**: a docid listed twice for a query (trec_eval stops on it too), a
//!   non-finite score, a cut-off of 0, a negative threshold.
//! * Scores are compared as given. A run written to a file and evaluated by
//!   trec_eval gives the same values only if the written scores round-trip
//!   (Rust's `{}` for f64 does) or keep the same ties.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::qrels::Qrels;

/// One effectiveness metric. Cut-offs are >= 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// trec_eval `ndcg_cut.k` (graded gains).
    Ndcg(usize),
    /// trec_eval `map` (whole ranking).
    Map,
    /// trec_eval `recall.k`.
    Recall(usize),
    /// trec_eval `recip_rank` with `-M k`.
    Mrr(usize),
    /// trec_eval `P.k`.
    Precision(usize),
}

impl Metric {
    /// The metrics reported by default: nDCG@{5,10,20}, MAP, R@{20,100}, MRR@10, P@10.
    pub fn default_set() -> Vec<Metric> {
        vec![
            Metric::Ndcg(5),
            Metric::Ndcg(10),
            Metric::Ndcg(20),
            Metric::Map,
            Metric::Recall(20),
            Metric::Recall(100),
            Metric::Mrr(10),
            Metric::Precision(10),
        ]
    }

    /// trec_eval's name for the measure (`ndcg_cut_10`, `map`, `recall_100`,
    /// `P_10`); MRR@k, which trec_eval gets from `-M k -m recip_rank`, is `recip_rank_k`.
    pub fn trec_name(&self) -> String {
        match self {
            Metric::Ndcg(k) => format!("ndcg_cut_{k}"),
            Metric::Map => "map".to_string(),
            Metric::Recall(k) => format!("recall_{k}"),
            Metric::Mrr(k) => format!("recip_rank_{k}"),
            Metric::Precision(k) => format!("P_{k}"),
        }
    }

    fn cutoff(&self) -> Option<usize> {
        match *self {
            Metric::Ndcg(k) | Metric::Recall(k) | Metric::Mrr(k) | Metric::Precision(k) => Some(k),
            Metric::Map => None,
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Metric::Ndcg(k) => write!(f, "nDCG@{k}"),
            Metric::Map => write!(f, "MAP"),
            Metric::Recall(k) => write!(f, "R@{k}"),
            Metric::Mrr(k) => write!(f, "MRR@{k}"),
            Metric::Precision(k) => write!(f, "P@{k}"),
        }
    }
}

impl FromStr for Metric {
    type Err = Error;

    /// Accepts (case-insensitively) the display names `nDCG@10`, `MAP`, `R@100`
    /// (`Recall@100`), `MRR@10`, `P@10`, and trec_eval's `ndcg_cut_10` /
    /// `ndcg_cut.10`, `map`, `recall_100`, `recip_rank_10`, `P_10`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Invalid(format!(
                "unknown metric `{s}`: expected one of nDCG@k, MAP, R@k, MRR@k, P@k \
                 (or trec_eval names ndcg_cut_k, map, recall_k, recip_rank_k, P_k) with k >= 1"
            ))
        };
        let lower = s.trim().to_ascii_lowercase();
        if lower == "map" {
            return Ok(Metric::Map);
        }
        let split = lower
            .rfind(['@', '_', '.'])
            .filter(|&i| i > 0)
            .ok_or_else(bad)?;
        let (name, k) = (&lower[..split], &lower[split + 1..]);
        let k: usize = k.parse().map_err(|_| bad())?;
        if k == 0 {
            return Err(bad());
        }
        match name {
            "ndcg" | "ndcg_cut" => Ok(Metric::Ndcg(k)),
            "r" | "recall" => Ok(Metric::Recall(k)),
            "mrr" | "rr" | "recip_rank" => Ok(Metric::Mrr(k)),
            "p" => Ok(Metric::Precision(k)),
            _ => Err(bad()),
        }
    }
}

/// What to compute.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalConfig {
    pub metrics: Vec<Metric>,
    /// Minimum grade that counts as relevant for the binary metrics (trec_eval
    /// `-l`). TREC DL passage ranking uses 2. Does not affect nDCG.
    pub rel_threshold: i32,
    /// Average over all judged queries, missing ones counting 0 (trec_eval `-c`).
    pub average_complete: bool,
}

impl Default for EvalConfig {
    /// The TREC DL setup: [`Metric::default_set`], `rel_threshold` 2, mean over
    /// the queries present in both run and qrels.
    fn default() -> Self {
        EvalConfig {
            metrics: Metric::default_set(),
            rel_threshold: 2,
            average_complete: false,
        }
    }
}

/// A run: qid -> (docid, score) list. The list order does not matter: like
/// trec_eval, evaluation re-sorts by score (ties: docid descending).
pub type Run = BTreeMap<String, Vec<(String, f64)>>;

/// Per-query and mean values, in the order of `metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub metrics: Vec<Metric>,
    /// qid -> one value per metric.
    pub per_query: BTreeMap<String, Vec<f64>>,
    /// One mean per metric, over `num_queries` queries.
    pub mean: Vec<f64>,
    /// The number of queries the mean is over.
    pub num_queries: usize,
}

impl Evaluation {
    fn index(&self, metric: Metric) -> Option<usize> {
        self.metrics.iter().position(|&m| m == metric)
    }

    /// The mean of `metric`, if it was computed.
    pub fn mean_of(&self, metric: Metric) -> Option<f64> {
        self.index(metric).map(|i| self.mean[i])
    }

    /// The value of `metric` for query `qid`, if both exist.
    pub fn value(&self, qid: &str, metric: Metric) -> Option<f64> {
        let i = self.index(metric)?;
        self.per_query.get(qid).map(|v| v[i])
    }

    /// The per-query values of `metric` of two evaluations, paired by qid, for a
    /// significance test. Both must cover the same queries.
    pub fn paired(&self, other: &Evaluation, metric: Metric) -> Result<(Vec<f64>, Vec<f64>)> {
        let (Some(i), Some(j)) = (self.index(metric), other.index(metric)) else {
            return Err(Error::Invalid(format!(
                "metric {metric} was not computed for both runs"
            )));
        };
        if let Some(q) = self
            .per_query
            .keys()
            .find(|q| !other.per_query.contains_key(*q))
        {
            return Err(Error::Invalid(format!(
                "query `{q}` is evaluated in the first run but not in the second; a paired test needs the same queries"
            )));
        }
        if let Some(q) = other
            .per_query
            .keys()
            .find(|q| !self.per_query.contains_key(*q))
        {
            return Err(Error::Invalid(format!(
                "query `{q}` is evaluated in the second run but not in the first; a paired test needs the same queries"
            )));
        }
        let a = self.per_query.values().map(|v| v[i]).collect();
        let b = other.per_query.values().map(|v| v[j]).collect();
        Ok((a, b))
    }

    /// trec_eval's `-q` text layout: `measure<TAB>qid<TAB>value` lines (measure
    /// padded to 22), per query when `per_query`, then `all` with the means.
    pub fn to_trec_eval_string(&self, per_query: bool) -> String {
        let names: Vec<String> = self.metrics.iter().map(Metric::trec_name).collect();
        let mut out = String::new();
        if per_query {
            for (qid, values) in &self.per_query {
                for (name, v) in names.iter().zip(values) {
                    out.push_str(&format!("{name:<22}\t{qid}\t{v:.4}\n"));
                }
            }
        }
        out.push_str(&format!("{:<22}\tall\t{}\n", "num_q", self.num_queries));
        for (name, v) in names.iter().zip(&self.mean) {
            out.push_str(&format!("{name:<22}\tall\t{v:.4}\n"));
        }
        out
    }
}

/// Sorts (docid, score) pairs into trec_eval's order: score descending, ties by
/// docid descending (byte order, as `strcmp`). Scores must be finite.
pub fn trec_order(ranking: &mut [(String, f64)]) {
    ranking.sort_by(|a, b| {
        b.1.partial_cmp(&a.1)
            .unwrap_or(Ordering::Equal)
            .then_with(|| b.0.as_bytes().cmp(a.0.as_bytes()))
    });
}

/// Evaluates `run` against `qrels`; see the module documentation for conventions.
pub fn evaluate(run: &Run, qrels: &Qrels, cfg: &EvalConfig) -> Result<Evaluation> {
    if cfg.rel_threshold < 0 {
        return Err(Error::Invalid(format!(
            "relevance threshold {} is negative; expected a grade >= 0",
            cfg.rel_threshold
        )));
    }
    if let Some(m) = cfg.metrics.iter().find(|m| m.cutoff() == Some(0)) {
        return Err(Error::Invalid(format!(
            "metric {m:?} has cut-off 0; expected k >= 1"
        )));
    }
    let mut per_query = BTreeMap::new();
    for (qid, ranking) in run {
        let Some(judged) = qrels.query(qid) else {
            continue;
        };
        if ranking.is_empty() {
            continue;
        }
        let values = evaluate_query(qid, ranking, judged, cfg)?;
        per_query.insert(qid.clone(), values);
    }
    if cfg.average_complete {
        for qid in qrels.judged_qids() {
            per_query
                .entry(qid.to_string())
                .or_insert_with(|| vec![0.0; cfg.metrics.len()]);
        }
    }
    let num_queries = per_query.len();
    let mean = (0..cfg.metrics.len())
        .map(|i| {
            if num_queries == 0 {
                0.0
            } else {
                per_query.values().map(|v: &Vec<f64>| v[i]).sum::<f64>() / num_queries as f64
            }
        })
        .collect();
    Ok(Evaluation {
        metrics: cfg.metrics.clone(),
        per_query,
        mean,
        num_queries,
    })
}

fn evaluate_query(
    qid: &str,
    ranking: &[(String, f64)],
    judged: &BTreeMap<String, i32>,
    cfg: &EvalConfig,
) -> Result<Vec<f64>> {
    if let Some((docid, score)) = ranking.iter().find(|(_, s)| !s.is_finite()) {
        return Err(Error::Invalid(format!(
            "run: query `{qid}`, docid `{docid}` has score {score}; expected a finite number"
        )));
    }
    let mut sorted = ranking.to_vec();
    trec_order(&mut sorted);
    let mut seen = std::collections::BTreeSet::new();
    if let Some((docid, _)) = sorted.iter().find(|(d, _)| !seen.insert(d.as_str())) {
        return Err(Error::Invalid(format!(
            "run: query `{qid}` lists docid `{docid}` more than once; expected each docid once per query (trec_eval rejects duplicates too)"
        )));
    }
    // Grade per rank; unjudged = None.
    let grades: Vec<Option<i32>> = sorted.iter().map(|(d, _)| judged.get(d).copied()).collect();
    let threshold = cfg.rel_threshold;
    let is_rel = |g: Option<i32>| matches!(g, Some(g) if g >= 0 && g >= threshold);
    let num_rel = judged.values().filter(|&&g| is_rel(Some(g))).count();
    let rel_in_top = |k: usize| grades.iter().take(k).filter(|&&g| is_rel(g)).count();

    let values = cfg
        .metrics
        .iter()
        .map(|metric| match *metric {
            Metric::Ndcg(k) => {
                let gain = dcg(grades.iter().take(k).map(|g| g.unwrap_or(0)));
                let mut ideal: Vec<i32> = judged.values().copied().filter(|&g| g > 0).collect();
                ideal.sort_unstable_by(|a, b| b.cmp(a));
                let idcg = dcg(ideal.into_iter().take(k));
                if idcg > 0.0 {
                    gain / idcg
                } else {
                    0.0
                }
            }
            Metric::Map => {
                if num_rel == 0 {
                    return 0.0;
                }
                let mut found = 0usize;
                let mut sum = 0.0;
                for (i, &g) in grades.iter().enumerate() {
                    if is_rel(g) {
                        found += 1;
                        sum += found as f64 / (i + 1) as f64;
                    }
                }
                sum / num_rel as f64
            }
            Metric::Recall(k) => {
                if num_rel == 0 {
                    0.0
                } else {
                    rel_in_top(k) as f64 / num_rel as f64
                }
            }
            Metric::Precision(k) => rel_in_top(k) as f64 / k as f64,
            Metric::Mrr(k) => grades
                .iter()
                .take(k)
                .position(|&g| is_rel(g))
                .map_or(0.0, |i| 1.0 / (i + 1) as f64),
        })
        .collect();
    Ok(values)
}

/// DCG of gains in rank order (gain = grade, non-positive grades give nothing),
/// summed in rank order like trec_eval.
fn dcg(grades: impl Iterator<Item = i32>) -> f64 {
    grades
        .enumerate()
        .filter(|&(_, g)| g > 0)
        // fold from +0.0: `Sum` for f64 starts at -0.0, which would print as "-0.0000".
        .fold(0.0, |acc, (i, g)| acc + g as f64 / ((i + 2) as f64).log2())
}

/// The oracle reordering of a run: each query's list (in its given order)
/// stably sorted by qrels grade descending (unjudged and negative grades count
/// as 0, so ties keep the given order), rescored `n, n-1, ..., 1` so that
/// trec_eval's re-sort keeps that order. Its nDCG@k is the best any reranker of
/// these candidates can reach.
pub fn ideal_reorder(run: &Run, qrels: &Qrels) -> Run {
    run.iter()
        .map(|(qid, ranking)| {
            let mut list: Vec<&(String, f64)> = ranking.iter().collect();
            list.sort_by_key(|(d, _)| std::cmp::Reverse(qrels.grade(qid, d).unwrap_or(0).max(0)));
            let n = list.len();
            let rescored = list
                .into_iter()
                .enumerate()
                .map(|(i, (d, _))| (d.clone(), (n - i) as f64))
                .collect();
            (qid.clone(), rescored)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn qrels(text: &str) -> Qrels {
        Qrels::parse(text, Path::new("q.txt")).unwrap()
    }

    fn run(items: &[(&str, &[(&str, f64)])]) -> Run {
        items
            .iter()
            .map(|(q, docs)| {
                (
                    q.to_string(),
                    docs.iter().map(|(d, s)| (d.to_string(), *s)).collect(),
                )
            })
            .collect()
    }

    fn cfg(metrics: &[Metric], threshold: i32) -> EvalConfig {
        EvalConfig {
            metrics: metrics.to_vec(),
            rel_threshold: threshold,
            average_complete: false,
        }
    }

    #[test]
    fn metric_names_round_trip() {
        for m in Metric::default_set() {
            assert_eq!(m.to_string().parse::<Metric>().unwrap(), m);
            assert_eq!(m.trec_name().parse::<Metric>().unwrap(), m);
        }
        assert_eq!("ndcg_cut.10".parse::<Metric>().unwrap(), Metric::Ndcg(10));
        assert_eq!("Recall@100".parse::<Metric>().unwrap(), Metric::Recall(100));
        assert_eq!("P.5".parse::<Metric>().unwrap(), Metric::Precision(5));
        for bad in ["ndcg", "nDCG@0", "nDCG@x", "foo@10", "@10", ""] {
            let err = bad.parse::<Metric>().unwrap_err().to_string();
            assert!(err.contains("nDCG@k"), "{bad}: {err}");
        }
    }

    #[test]
    fn hand_computed_values() {
        // Grades: a=3, b=0, c=2, d=1, e unjudged (not retrieved: f=2).
        let q = qrels("1 0 a 3\n1 0 b 0\n1 0 c 2\n1 0 d 1\n1 0 f 2\n");
        let r = run(&[(
            "1",
            &[("a", 5.0), ("b", 4.0), ("c", 3.0), ("d", 2.0), ("e", 1.0)],
        )]);
        let metrics = [
            Metric::Ndcg(3),
            Metric::Map,
            Metric::Recall(3),
            Metric::Mrr(1),
            Metric::Precision(10),
        ];
        let ev = evaluate(&r, &q, &cfg(&metrics, 2)).unwrap();
        let v = &ev.per_query["1"];
        // DCG@3 = 3/1 + 0 + 2/2 = 4; ideal = 3 + 2/log2(3) + 2/2.
        let ndcg3 = 4.0 / (3.0 + 2.0 / 3f64.log2() + 1.0);
        assert!((v[0] - ndcg3).abs() < 1e-12, "{v:?}");
        // Relevant (>=2): a, c, f. AP = (1/1 + 2/3) / 3.
        assert!((v[1] - (1.0 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
        assert!((v[2] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(v[3], 1.0);
        assert!((v[4] - 0.2).abs() < 1e-12, "P@10 divides by 10");
        // With -l 1, d becomes relevant: AP = (1 + 2/3 + 3/4) / 4; nDCG unchanged.
        let ev1 = evaluate(&r, &q, &cfg(&metrics, 1)).unwrap();
        assert_eq!(ev1.per_query["1"][0], v[0]);
        assert!((ev1.per_query["1"][1] - (1.0 + 2.0 / 3.0 + 0.75) / 4.0).abs() < 1e-12);
    }

    #[test]
    fn ties_broken_by_docid_descending_and_input_order_ignored() {
        let q = qrels("1 0 a 2\n1 0 b 0\n");
        // All tied: trec_eval order is b, a (strcmp descending) -> RR = 1/2.
        for docs in [&[("a", 1.0), ("b", 1.0)][..], &[("b", 1.0), ("a", 1.0)][..]] {
            let ev = evaluate(&run(&[("1", docs)]), &q, &cfg(&[Metric::Mrr(10)], 1)).unwrap();
            assert_eq!(ev.mean[0], 0.5);
        }
        // Byte order, not numeric: "10" < "9".
        let q = qrels("1 0 10 1\n1 0 9 0\n");
        let ev = evaluate(
            &run(&[("1", &[("10", 0.0), ("9", 0.0)])]),
            &q,
            &cfg(&[Metric::Mrr(10)], 1),
        )
        .unwrap();
        assert_eq!(ev.mean[0], 0.5);
    }

    #[test]
    fn zero_values_are_positive_zero() {
        let q = qrels("1 0 z 2\n");
        let ev = evaluate(&run(&[("1", &[("a", 1.0)])]), &q, &EvalConfig::default()).unwrap();
        assert!(
            ev.per_query["1"]
                .iter()
                .all(|v| *v == 0.0 && v.is_sign_positive()),
            "{ev:?}"
        );
        assert!(
            ev.to_trec_eval_string(true).contains("\t0.0000\n")
                && !ev.to_trec_eval_string(true).contains('-')
        );
    }

    #[test]
    fn mrr_cut_only_counts_top_k() {
        let q = qrels("1 0 c 2\n");
        let r = run(&[("1", &[("a", 3.0), ("b", 2.0), ("c", 1.0)])]);
        let ev = evaluate(&r, &q, &cfg(&[Metric::Mrr(2), Metric::Mrr(3)], 2)).unwrap();
        assert_eq!(ev.mean, vec![0.0, 1.0 / 3.0]);
    }

    #[test]
    fn query_selection_and_averaging() {
        // q1 judged with a relevant doc, q2 judged with none relevant, q3 unjudged,
        // q4 judged but absent from the run.
        let q = qrels("q1 0 a 2\nq2 0 a 0\nq4 0 a 2\n");
        let r = run(&[
            ("q1", &[("a", 1.0)]),
            ("q2", &[("a", 1.0)]),
            ("q3", &[("a", 1.0)]),
        ]);
        let metrics = [Metric::Ndcg(10), Metric::Map, Metric::Recall(10)];
        let ev = evaluate(&r, &q, &cfg(&metrics, 2)).unwrap();
        assert_eq!(ev.per_query.keys().collect::<Vec<_>>(), vec!["q1", "q2"]);
        assert_eq!(ev.per_query["q2"], vec![0.0, 0.0, 0.0]);
        assert_eq!(ev.num_queries, 2);
        assert_eq!(ev.mean, vec![0.5, 0.5, 0.5]);
        let mut complete = cfg(&metrics, 2);
        complete.average_complete = true;
        let ev = evaluate(&r, &q, &complete).unwrap();
        assert_eq!(ev.num_queries, 3);
        assert_eq!(ev.per_query["q4"], vec![0.0, 0.0, 0.0]);
        assert!((ev.mean[0] - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn rejects_duplicates_nan_and_bad_config() {
        let q = qrels("1 0 a 2\n");
        let dup = run(&[("1", &[("a", 2.0), ("a", 1.0)])]);
        let err = evaluate(&dup, &q, &EvalConfig::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`a`") && err.contains("more than once"),
            "{err}"
        );
        let nan = run(&[("1", &[("a", f64::NAN)])]);
        let err = evaluate(&nan, &q, &EvalConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("finite"), "{err}");
        let ok = run(&[("1", &[("a", 1.0)])]);
        assert!(evaluate(&ok, &q, &cfg(&[Metric::Ndcg(0)], 2)).is_err());
        assert!(evaluate(&ok, &q, &cfg(&[Metric::Map], -1)).is_err());
    }

    #[test]
    fn ideal_reorder_sorts_by_grade_keeping_order_on_ties() {
        let q = qrels("1 0 b 1\n1 0 c 3\n1 0 d 1\n1 0 e -1\n");
        let r = run(&[(
            "1",
            &[("a", 9.0), ("b", 8.0), ("c", 7.0), ("d", 6.0), ("e", 5.0)],
        )]);
        let ideal = ideal_reorder(&r, &q);
        let order: Vec<&str> = ideal["1"].iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(order, vec!["c", "b", "d", "a", "e"]);
        let ev = evaluate(&ideal, &q, &cfg(&[Metric::Ndcg(10)], 2)).unwrap();
        assert!((ev.mean[0] - 1.0).abs() < 1e-12);
    }

    #[test]
    fn trec_eval_text_layout() {
        let q = qrels("1 0 a 2\n");
        let ev = evaluate(
            &run(&[("1", &[("a", 1.0)])]),
            &q,
            &cfg(&[Metric::Ndcg(10)], 2),
        )
        .unwrap();
        let text = ev.to_trec_eval_string(true);
        assert_eq!(
            text,
            format!(
                "{:<22}\t1\t1.0000\n{:<22}\tall\t1\n{:<22}\tall\t1.0000\n",
                "ndcg_cut_10", "num_q", "ndcg_cut_10"
            )
        );
    }
}
