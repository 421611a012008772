#!/usr/bin/env python3
"""Regenerates the trec_eval expectations used by crates/core/tests/metrics.rs.

Needs pytrec_eval (trec_eval's C code; `pip install pytrec-eval-terrier`) and scipy,
e.g. in a throwaway venv:

    python3 -m venv /tmp/treceval-env
    /tmp/treceval-env/bin/pip install pytrec-eval-terrier scipy
    /tmp/treceval-env/bin/python gen_expected.py [SHARED_DIR]   # default ../shared

Writes, beside this script:
* trec_eval_expected.tsv: per query, trec_eval's value of every metric for each
  (dataset, run, relevance level). Only qids and numbers, no passage text.
* significance_expected.json: scipy's paired t-test and exact paired
  randomization (sign-flip) p-values for per-query nDCG@10 vectors of this table.

The runs are derived from shared/data/<dataset>/bm25-top100.json exactly as the
Rust test derives them (keep `derive_run` and the test's `derive_run` in step):
  bm25      (docid, score) as in the file
  round0    score rounded to 0 decimals (floor(score + 0.5)): many ties, so the
            docid tie-break (descending strcmp) decides the order
  const     every score 0: the order is docid descending
  unjudged  bm25 plus fake docids `zzfake{i}` with the score of hit i, i = 0,2,4,6,8
            (unjudged, and tied with a real document that they precede)
  top5      the first 5 hits only (fewer documents than most cut-offs)
  ideal     the oracle reordering: hits stably sorted by qrels grade descending
            (unjudged and negative = 0), rescored n, n-1, ..., 1
MRR@10 is trec_eval's `-M 10 recip_rank`; pytrec_eval has no -M, so it is taken as
recip_rank when the first relevant document is within rank 10 (rr >= 0.1), else 0.
"""
import json
import math
import os
import sys

import numpy as np
import pytrec_eval
from scipy import stats

HERE = os.path.dirname(os.path.abspath(__file__))
MEASURES = ["ndcg_cut_5", "ndcg_cut_10", "ndcg_cut_20", "map", "recall_20", "recall_100", "recip_rank", "P_10"]
COLUMNS = ["ndcg_cut_5", "ndcg_cut_10", "ndcg_cut_20", "map", "recall_20", "recall_100", "recip_rank_10", "P_10"]
RUNS = ["bm25", "round0", "const", "unjudged", "top5", "ideal"]


def load_bm25(path):
    run = {}
    for entry in json.load(open(path)):
        hits = entry["hits"]
        qid = str(hits[0]["qid"])
        run[qid] = [(str(h["docid"]), float(h["score"])) for h in hits]
        assert len({d for d, _ in run[qid]}) == len(hits), f"duplicate docid in {qid}"
    return run


def derive_run(bm25, name, qrels):
    out = {}
    for qid, hits in bm25.items():
        if name == "bm25":
            docs = list(hits)
        elif name == "round0":
            docs = [(d, float(math.floor(s + 0.5))) for d, s in hits]
        elif name == "const":
            docs = [(d, 0.0) for d, _ in hits]
        elif name == "unjudged":
            docs = list(hits) + [(f"zzfake{i}", hits[i][1]) for i in (0, 2, 4, 6, 8) if i < len(hits)]
        elif name == "top5":
            docs = list(hits[:5])
        elif name == "ideal":
            judged = qrels.get(qid, {})
            order = sorted(hits, key=lambda h: -max(judged.get(h[0], 0), 0))  # stable
            docs = [(d, float(len(order) - i)) for i, (d, _) in enumerate(order)]
        else:
            raise ValueError(name)
        out[qid] = docs
    return out


def read_qrels(path):
    q = {}
    for line in open(path):
        if not line.strip() or line.startswith("#"):
            continue
        qid, _, docid, grade = line.split()
        assert docid not in q.get(qid, {}), "duplicate judgment"
        q.setdefault(qid, {})[docid] = int(grade)
    return q


def main():
    shared = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "../../../../../../shared")
    rows = []
    ndcg10 = {}
    for dataset in ["dl19", "dl20"]:
        qrels = read_qrels(os.path.join(shared, "data", dataset, "qrels.txt"))
        bm25 = load_bm25(os.path.join(shared, "data", dataset, "bm25-top100.json"))
        for name in RUNS:
            run = derive_run(bm25, name, qrels)
            if name == "unjudged":
                assert all(d not in qrels.get(q, {}) for q, docs in run.items() for d, _ in docs if d.startswith("zz"))
            levels = [2, 1] if name in ("bm25", "round0") else [2]
            for level in levels:
                ev = pytrec_eval.RelevanceEvaluator(qrels, set(MEASURES), relevance_level=level)
                res = ev.evaluate({q: dict(docs) for q, docs in run.items()})
                for qid in sorted(res):
                    v = res[qid]
                    rr = v["recip_rank"]
                    vals = [v[m] for m in MEASURES]
                    vals[MEASURES.index("recip_rank")] = rr if rr >= 0.1 - 1e-12 else 0.0
                    rows.append([dataset, name, str(level), qid] + [repr(float(x)) for x in vals])
                    if level == 2:
                        ndcg10.setdefault((dataset, name), {})[qid] = v["ndcg_cut_10"]
    for dataset in ["dl19", "dl20"]:
        for name in RUNS:
            v = ndcg10[(dataset, name)]
            print(f"{dataset} {name:9s} nDCG@10 = {sum(v.values()) / len(v):.4f} over {len(v)} queries")
    with open(os.path.join(HERE, "trec_eval_expected.tsv"), "w") as f:
        f.write("# generated by gen_expected.py with pytrec_eval (trec_eval C code); do not edit\n")
        f.write("\t".join(["dataset", "run", "level", "qid"] + COLUMNS) + "\n")
        for r in rows:
            f.write("\t".join(r) + "\n")

    def vec(dataset, name, n=None):
        qids = sorted(ndcg10[(dataset, name)])[:n]
        return np.array([ndcg10[(dataset, name)][q] for q in qids])

    sig = {"t_tests": [], "exact_randomization": []}
    for dataset, a, b in [("dl19", "bm25", "round0"), ("dl20", "bm25", "const"), ("dl19", "unjudged", "bm25")]:
        x, y = vec(dataset, a), vec(dataset, b)
        t = stats.ttest_rel(x, y)
        sig["t_tests"].append({
            "dataset": dataset, "a": a, "b": b, "n": len(x),
            "mean_diff": float(np.mean(x - y)), "t": float(t.statistic), "df": len(x) - 1, "p": float(t.pvalue),
        })
    for dataset, a, b, n in [("dl19", "bm25", "round0", 12), ("dl20", "bm25", "round0", 16), ("dl20", "bm25", "const", 14)]:
        x, y = vec(dataset, a, n), vec(dataset, b, n)
        res = stats.permutation_test(
            (x, y), lambda u, v: np.mean(u - v), permutation_type="samples",
            vectorized=False, n_resamples=np.inf, alternative="two-sided",
        )
        sig["exact_randomization"].append({"dataset": dataset, "a": a, "b": b, "n": n, "p": float(res.pvalue)})
    with open(os.path.join(HERE, "significance_expected.json"), "w") as f:
        json.dump(sig, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
