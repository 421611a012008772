#!/usr/bin/env bash
# Builds the training data of the default FIRST adapter at scale: teacher-
# labelled lists of 20 passages from TREC DL22's queries and from synthetic
# keyword queries over the DL22 passage pool, with a held-out set (queries
# never trained on) for the learning curve.
#
#   scripts/make-training-data.sh OUT_DIR [SYNTH_QUERIES] [LISTS_PER_SYNTH_QUERY]
#
# Needs the candidates file ../shared/data/dl22-unlabeled/bm25-top100.json
# (or DL22_CANDIDATES=FILE) and a built firstrank on PATH (or FIRSTRANK=...).
# Defaults: 7,000 synthetic queries x 3 lists + 76 DL22 queries x 20 lists,
# passages cut to MAX_PASSAGE_TOKENS=64 tokens of SmolLM2's tokenizer; the
# last 100 synthetic queries and the DL22 queries listed in HELD_OUT_DL22
# (default: 10 of them) are labelled into held-out.jsonl instead. ORDER
# (default shuffled) is how each window's passages are shown: `shuffled`
# keeps a student from learning the first-stage position instead of
# relevance; `first-stage` shows them as reranking does. WINDOW (default 20)
# is the number of passages per list (5 for a curriculum's first stage).
#
# Outputs in OUT_DIR: synth.tsv + synth-qrels.txt (the queries and their
# source passages), pool/ (BM25 index of the pool), synth-bm25.jsonl,
# train-dl22.jsonl, train-synth.jsonl, held-out.jsonl.
set -euo pipefail
out=${1:?usage: $0 OUT_DIR [SYNTH_QUERIES] [LISTS_PER_SYNTH_QUERY]}
n_synth=${2:-7000}
per_synth=${3:-3}
fr=${FIRSTRANK:-firstrank}
cands=${DL22_CANDIDATES:-../shared/data/dl22-unlabeled/bm25-top100.json}
tokens=${MAX_PASSAGE_TOKENS:-64}
order=${ORDER:-shuffled}
window=${WINDOW:-20}
held_out_synth=100
mkdir -p "$out"

# 1. Synthetic queries: keywords of sampled pool passages, without words in
#    more than 5 % of the pool ("what", "also", ...).
"$fr" synth-queries --corpus "$cands" --count "$n_synth" --max-df 0.05 --seed 1 \
  --output "$out/synth.tsv" --qrels "$out/synth-qrels.txt"
# 2. Their first stage: BM25 over the pool.
rm -rf "$out/pool"
"$fr" index --corpus "$cands" --index "$out/pool"
"$fr" retrieve --index "$out/pool" --topics "$out/synth.tsv" -k 100 --output "$out/synth-bm25.jsonl"

# 3. Hold out queries: the last synthetic ones and some DL22 queries.
python3 - "$cands" "$out" "$held_out_synth" "${HELD_OUT_DL22:-10}" <<'PY'
import json, sys
cands, out, n_synth, n_dl22 = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
lines = open(f"{out}/synth-bm25.jsonl").read().splitlines()
open(f"{out}/synth-train.jsonl", "w").write("\n".join(lines[:-n_synth]) + "\n")
open(f"{out}/synth-held.jsonl", "w").write("\n".join(lines[-n_synth:]) + "\n")
dl22 = json.load(open(cands))
json.dump(dl22[n_dl22:], open(f"{out}/dl22-train.json", "w"))
json.dump(dl22[:n_dl22], open(f"{out}/dl22-held.json", "w"))
PY

# 4. Labels from the dense teacher (all-MiniLM-L6-v2 cosine), lists of $window
#    shown in $order order, passages cut to $tokens tokens.
label() { "$fr" label --teacher dense --order "$order" --window "$window" --max-passage-tokens "$tokens" "$@"; }
label --input "$out/dl22-train.json" --lists-per-query 20 --seed 1 --output "$out/train-dl22.jsonl"
label --input "$out/synth-train.jsonl" --lists-per-query "$per_synth" --seed 2 --output "$out/train-synth.jsonl"
label --input "$out/dl22-held.json" --lists-per-query 2 --seed 3 --output "$out/held-dl22.jsonl"
label --input "$out/synth-held.jsonl" --lists-per-query 1 --seed 4 --output "$out/held-synth.jsonl"
cat "$out/held-dl22.jsonl" "$out/held-synth.jsonl" > "$out/held-out.jsonl"
wc -l "$out"/train-*.jsonl "$out/held-out.jsonl"
