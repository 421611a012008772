#!/usr/bin/env bash
# Training throughput, side by side on the same cores, one run: firstrank's
# trainer (this build, and optionally an older binary) against the PyTorch
# reference (../shared/ref/train/train_first.py, f32 and bf16 autocast) on
# the same recipe: SmolLM2-135M, lists of 20 DL22 passages cut to 48 tokens
# labelled by the dense teacher, LoRA r=16 on the seven projections of the
# top 6 layers, combined objective (LM + 10 x weighted RankNet), 2 lists per
# optimizer step.
#
#   scripts/train-throughput.sh [OLD_FIRSTRANK_BINARY]
#
# Needs: a release build (target/release/firstrank, or FIRSTRANK=...), the
# reference's venv (PY=~/.venvs/firstref/bin/python by default, see
# ../shared/ref/README.md) with its models provisioned, and the DL22
# candidates at ../shared/data/dl22-unlabeled/bm25-top100.json. Prints one
# line per contender: tokens/s, seconds per list, tokens per list.
set -euo pipefail
fr=${FIRSTRANK:-target/release/firstrank}
old=${1:-}
py=${PY:-$HOME/.venvs/firstref/bin/python}
ref=${REF:-../shared/ref}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

python3 - "$tmp" <<'PY'
import json, sys
d = json.load(open("../shared/data/dl22-unlabeled/bm25-top100.json"))
json.dump(d[:4], open(f"{sys.argv[1]}/q4.json", "w"))
PY
"$fr" label -q --input "$tmp/q4.json" --teacher dense --lists-per-query 3 \
  --max-passage-tokens 48 --output "$tmp/lists.jsonl"
recipe=(--model smollm2 --data "$tmp/lists.jsonl" --lora-layers top:6 --grad-accum 2)

# firstrank: 3 steps of 2 lists, the first one included (as the reference's
# figure includes its first window), from training.json.
whole() {
  local bin=$1 name=$2 out="$tmp/out-$2"
  rm -rf "$out"
  "$bin" train -q "${recipe[@]}" --micro-batch 1 --max-steps 3 --output "$out"
  python3 -c "import json; d = json.load(open('$out/training.json')); \
print(f\"$name: {d['tokens'] / d['seconds']:.0f} tokens/s, {d['seconds'] / 6:.2f} s per list, {d['tokens'] / 6:.0f} tokens per list (3 steps of 2 lists, first step included)\")"
}
[ -n "$old" ] && whole "$old" "firstrank (old: $old)"
whole "$fr" "firstrank"
# Steady state: one warm-up step, then 3 timed steps.
for mb in 1 2; do
  "$fr" train -q "${recipe[@]}" --micro-batch "$mb" --bench 3 | python3 -c "import json, sys; d = json.load(sys.stdin); \
print(f\"firstrank --bench 3 --micro-batch $mb: {d['tokens_per_s']:.0f} tokens/s, {d['seconds_per_list']:.2f} s per list, peak RSS {d['peak_rss_mb']:.0f} MB\")"
done
# The frozen lower layers in f32 instead of bf16 (the same on CPUs without
# AVX512-BF16, where they always run in f32).
"$fr" train -q "${recipe[@]}" --micro-batch 2 --frozen-f32 --bench 3 | python3 -c "import json, sys; d = json.load(sys.stdin); \
print(f\"firstrank --bench 3 --micro-batch 2 --frozen-f32: {d['tokens_per_s']:.0f} tokens/s, {d['seconds_per_list']:.2f} s per list, peak RSS {d['peak_rss_mb']:.0f} MB\")"

# The reference: the same recipe, 6 windows of 20 (its own sampling from the
# same teacher and queries), 2 windows per step.
for mode in "" "--bf16 --fp32-head"; do
  "$py" "$ref/train/train_first.py" --model smollm2-135m --out "$tmp/pt" --window 20 \
    --max-passage-tokens 48 --top-layers 6 $mode --accum 2 --max-windows 6 --minutes 30 2>&1 |
    grep SUMMARY | python3 -c "import json, sys; s = json.loads(sys.stdin.read().split('SUMMARY', 1)[1]); \
print(f\"PyTorch ${mode:-f32}: {s['tokens_per_s']:.0f} tokens/s, {s['train_seconds'] / s['windows']:.2f} s per list, {s['mean_tokens_per_window']:.0f} tokens per list\")"
done
