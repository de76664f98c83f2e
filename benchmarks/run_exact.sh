#!/usr/bin/env bash
# Exact mode (issue 20): the same Spec-Bench prompts, greedy, bf16, run twice with the same
# methods, without and with --exact; then the batch-composition check (exact_determinism.py).
# "= none" is the share of outputs equal to plain decoding id for id; "diff margin" the target's
# top-2 logit margin at the first difference. Never run two benchmarks at once (two cores).
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${QUESTIONS:-../shared/data/spec_bench/question.jsonl}
PER=${PER_CATEGORY:-1}
B=.venv/bin/draftsmith
OUT=benchmarks/smollm2-135m-bf16-exact
M=(--method none --method ngram --method "eagle:k=5,tree_nodes=16,topk=4,beam=4"
   --method "draft_model:model=smollm2-135m-instruct-drafter" --method "hierarchy")
$B bench --model smollm2-135m-instruct --dtype bf16 --threads 2 --questions "$Q" --per-category "$PER" \
  --max-new-tokens 128 "${M[@]}" --out $OUT/plain-rounding
$B bench --model smollm2-135m-instruct --dtype bf16 --threads 2 --questions "$Q" --per-category "$PER" \
  --max-new-tokens 128 "${M[@]}" --exact --out $OUT/exact
.venv/bin/python benchmarks/exact_determinism.py --out $OUT/determinism.md
