#!/usr/bin/env bash
# Issue 22 (FastDraft): the drafters of benchmarks/train_fastdraft.sh on the Spec-Bench development
# set (one question per category, 21 turns), greedy, 128 new tokens, fp32 (this AVX2-only CPU has
# no bf16 units: fp32 is the faster there, and lossless rows equal `none` token for token), chains
# of 4 with no early stop (the drafters' alignment, not the length policy, makes the difference).
# The shipped drafter (Direct Alignment with the whole session-7 budget) is the reference row.
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${QUESTIONS:-../shared/data/spec_bench/question.jsonl}
R=runs/fastdraft
O=",k=4,adaptive=false,confidence=0"
.venv/bin/draftsmith bench --model smollm2-135m-instruct --dtype fp32 --questions "$Q" --per-category 1 \
  --max-new-tokens 128 --threads 2 --method none \
  --method "draft_model:model=$R/pretrain$O" --method "draft_model:model=$R/fastdraft$O" \
  --method "draft_model:model=$R/fastdraft-answers$O" --method "draft_model:model=$R/direct$O" \
  --method "draft_model:model=smollm2-135m-instruct-drafter$O" \
  --out benchmarks/smollm2-135m-fp32-fastdraft
