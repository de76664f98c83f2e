#!/usr/bin/env bash
# Issue 5: the trained draft models on the default model against `none` and `ngram` (the best
# training-free drafter here; issue 4's other rows are in git history), greedy and at temperature
# 1, each in one run. kd-fkl-s6 is the sixth session's drafter (distilled on ShareGPT's answers)
# distilled again on the rollouts. The last row is the shipped drafter with
# its defaults (adaptive draft length up to 5, confidence stop). Needs the drafters trained by
# benchmarks/train_drafter.sh (runs/train/...). Never run two benchmarks at once (two cores).
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${QUESTIONS:-../shared/data/spec_bench/question.jsonl}
B=.venv/bin/draftsmith
D="adaptive=false,confidence=0"   # a fixed draft length: the τ the issue asks about (k = 4 and 5)
TRAINED=()
for RUN in pretrain kd-fkl kd-tvdpp kd-fkl-s6; do
  for K in 4 5; do TRAINED+=(--method "draft_model:model=runs/train/$RUN,k=$K,$D"); done
done

$B bench --model smollm2-135m-instruct --dtype bf16 --questions "$Q" --per-category 1 --max-new-tokens 128 \
  --method none --method ngram \
  "${TRAINED[@]}" --method "draft_model:model=smollm2-135m-instruct-drafter" \
  --out benchmarks/smollm2-135m-bf16-drafters-greedy

$B bench --model smollm2-135m-instruct --dtype bf16 --questions "$Q" --per-category 1 --max-new-tokens 128 \
  --temperature 1 --method none "${TRAINED[@]}" --method "draft_model:model=smollm2-135m-instruct-drafter" \
  --out benchmarks/smollm2-135m-bf16-drafters-t1
