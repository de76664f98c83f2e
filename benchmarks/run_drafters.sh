#!/usr/bin/env bash
# Issues 4 and 5: training-free tree drafters and the trained drafters on the default model, greedy
# and at temperature 1, each in one run with `none`. Needs the drafters trained by
# benchmarks/train_drafter.sh (runs/train/...). Never run two benchmarks at once (two cores).
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${QUESTIONS:-../shared/data/spec_bench/question.jsonl}
B=.venv/bin/draftsmith
D="k=5,adaptive=false,confidence=0"   # draft length 5, fixed: the τ the issue asks about

$B bench --model smollm2-135m-instruct --dtype bf16 --questions "$Q" --per-category 1 --max-new-tokens 128 \
  --method none --method ngram --method recycling --method lookahead --method hierarchy \
  --method "draft_model:model=runs/train/pretrain,$D" --method "draft_model:model=runs/train/kd-fkl,$D" \
  --method "draft_model:model=runs/train/kd-tvdpp,$D" --method "draft_model:model=smollm2-135m-instruct-drafter" \
  --out benchmarks/smollm2-135m-bf16-drafters-greedy

$B bench --model smollm2-135m-instruct --dtype bf16 --questions "$Q" --per-category 1 --max-new-tokens 128 \
  --temperature 1 \
  --method none --method "draft_model:model=runs/train/pretrain,$D" --method "draft_model:model=runs/train/kd-fkl,$D" \
  --method "draft_model:model=runs/train/kd-tvdpp,$D" \
  --out benchmarks/smollm2-135m-bf16-drafters-t1
