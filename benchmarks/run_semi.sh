#!/usr/bin/env bash
# Issue 22: FSPAD and Chimera heads against their baselines on the same questions in one run, greedy,
# bf16: none; eagle (shipped) and eagle-more (the shipped head trained as long as fspad on the same
# data: the control; $HEADS/eagle-more, from train_semi.sh) against fspad, chains of 4; hydra
# (shipped, sequential heads) against chimera (parallel residual heads), chains of 4; glide (a block reading the target's keys
# and values) as a chain of 4 and with CaPE (top probability below 0.4: 2 more candidates). Uses the shipped heads; the control is
# left out when $HEADS/eagle-more is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${QUESTIONS:-../shared/data/spec_bench/question.jsonl}
HEADS=${HEADS:-runs/semi}
CONTROL=()
if [ -d "$HEADS/eagle-more" ]; then
  CONTROL=(--method "eagle:heads=$HEADS/eagle-more,k=4")
fi
.venv/bin/draftsmith bench --model smollm2-135m-instruct --dtype bf16 --questions "$Q" --per-category 1 \
  --max-new-tokens 128 --method none --method eagle:k=4 "${CONTROL[@]}" \
  --method fspad:k=4 --method hydra:k=4 --method chimera:k=4 \
  --method glide:k=4 --method glide:k=4,cape=0.4 \
  --out benchmarks/smollm2-135m-bf16-semi-greedy
