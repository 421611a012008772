#!/usr/bin/env bash
# Retrains the FIRST adapter that ships with `--model smollm2`
# (crates/models/adapters/smollm2-first/), as it was trained: DL22 lists
# labelled by the dense teacher fused with the BM25 order, then LoRA on the
# top 8 layers with the combined objective, 40 steps, then resumed to 90
# (the second call continues the same checkpoint on a longer cosine schedule).
# About 3 h on two CPU cores; on a GPU, TRAIN_EXTRA="--device cuda".
#
#   scripts/train-default-adapter.sh [OUT_DIR]     (default: adapters/smollm2-first)
#
# Then evaluate (README, "The default reranker") and, to ship it, copy
# adapter_config.json, adapter_model.safetensors and training.json into
# crates/models/adapters/smollm2-first/ and rebuild.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-adapters/smollm2-first}
SHARED=${FIRSTRANK_SHARED:-../shared}
FR=${FIRSTRANK:-target/release/firstrank}
[ -x "$FR" ] || cargo build --release -p firstrank
mkdir -p "$(dirname "$OUT")"
LISTS="$(dirname "$OUT")/dl22-fused1.jsonl"

"$FR" label --input "$SHARED/data/dl22-unlabeled/bm25-top100.json" --teacher dense \
  --lists-per-query 40 --order first-stage --first-stage-weight 1 --output "$LISTS"
train() {
  "$FR" train --model smollm2 --data "$LISTS" --output "$OUT" --objective combined \
    --lora-layers top:8 --lr 1e-3 --warmup 4 --grad-accum 8 --micro-batch 1 --seed 1 ${TRAIN_EXTRA:-} "$@"
}
train --max-steps 40
train --max-steps 90 --resume
