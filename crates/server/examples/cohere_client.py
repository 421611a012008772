"""Drive `firstrank serve` with the official Cohere Python SDK (v2 and v1 clients).

    python3 -m venv /tmp/cohere-venv && /tmp/cohere-venv/bin/pip install cohere
    firstrank serve --model smollm2 &          # or: --diagnostic-scorer lexical
    /tmp/cohere-venv/bin/python crates/server/examples/cohere_client.py http://127.0.0.1:8080 [--expect-top 1]

Checks that each client parses our responses, that results come back best
first, cut to top_n, with every index valid; --expect-top I also checks the
top document's index (1 for the lexical diagnostic scorer). Exits non-zero on
any failure.
"""
import argparse
import os
import sys

import cohere

QUERY = "What is the capital of France?"
DOCS = [
    "Berlin is the largest city in Germany.",
    "Paris is the capital of France and its largest city.",
    "Bananas are rich in potassium.",
    "France borders Spain, Italy and Germany.",
]


def check(name, results, top_n, expect_top):
    idx = [r.index for r in results]
    scores = [r.relevance_score for r in results]
    print(f"{name}: indices {idx} scores {[round(s, 4) for s in scores]}")
    assert len(results) == top_n, f"{name}: {len(results)} results, wanted top_n={top_n}"
    assert len(set(idx)) == len(idx) and all(0 <= i < len(DOCS) for i in idx), f"{name}: bad indices {idx}"
    assert scores == sorted(scores, reverse=True), f"{name}: scores not descending {scores}"
    assert all(0 < s <= 1 for s in scores), f"{name}: scores outside (0, 1]"
    if expect_top is not None:
        assert idx[0] == expect_top, f"{name}: top index {idx[0]}, expected {expect_top}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base_url")
    ap.add_argument("--expect-top", type=int)
    ap.add_argument("--api-key", default=os.environ.get("FIRSTRANK_API_KEY", "unused"))
    a = ap.parse_args()

    v2 = cohere.ClientV2(api_key=a.api_key, base_url=a.base_url, timeout=300)
    r = v2.rerank(model="rerank-v3.5", query=QUERY, documents=DOCS, top_n=3)
    check("cohere.ClientV2.rerank (POST /v2/rerank)", r.results, 3, a.expect_top)

    v1 = cohere.Client(api_key=a.api_key, base_url=a.base_url, timeout=300)
    r = v1.rerank(model="rerank-english-v3.0", query=QUERY, documents=DOCS, top_n=2, return_documents=True)
    check("cohere.Client.rerank (POST /v1/rerank)", r.results, 2, a.expect_top)
    assert r.results[0].document.text == DOCS[r.results[0].index], "v1: document text does not match its index"
    print("ok: the Cohere SDK works against", a.base_url)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print("FAILED:", e, file=sys.stderr)
        sys.exit(1)
