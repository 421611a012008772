#!/usr/bin/env bash
# gpu-train-eval.sh: the FIRST training runs of BENCHMARKS.md on a GPU
# machine: train SmolLM2 adapters with each objective on the same training
# lists for the same number of steps, then rerank the DL19 and DL20 BM25
# top-20 with each adapter (FIRST mode) and evaluate.
#
# Usage:  scripts/gpu-train-eval.sh BINARY MODEL.gguf LISTS.jsonl DATA_DIR OUT_DIR STEPS
#   BINARY    a `firstrank` built with `--features cuda` (scripts/build-cuda.sh)
#   LISTS     from `firstrank label` (see BENCHMARKS.md for the exact command)
#   DATA_DIR  holds dl19/ and dl20/ with bm25-top100.json and qrels.txt
#   STEPS     optimizer steps per objective (8 lists per step)
# Env:    OBJECTIVES (default "combined ranking generation"), LR (3e-4),
#         LD_LIBRARY_PATH must reach the CUDA 13 libraries.
set -euo pipefail
B=$1 MODEL=$2 LISTS=$3 DATA=$4 OUT=$5 STEPS=$6
mkdir -p "$OUT"
for o in ${OBJECTIVES:-combined ranking generation}; do
  "$B" train --model "$MODEL" --data "$LISTS" --device cuda --objective "$o" \
    --lr "${LR:-3e-4}" --grad-accum 8 --warmup 10 --seed 1 --max-steps "$STEPS" \
    --checkpoint-every 0 --output "$OUT/$o" 2>&1 | tail -2
  for s in dl19 dl20; do
    echo "== $o $s top-20"
    "$B" rerank -q --model "$MODEL" --adapter "$OUT/$o" --device cuda --strategy single \
      --input "$DATA/$s/bm25-top100.json" --output "$OUT/$s.$o.top20.trec" \
      --qrels "$DATA/$s/qrels.txt" --eval
  done
done
