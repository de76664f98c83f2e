#!/usr/bin/env bash
# Exact mode (issue 20): one greedy bf16 run on the Spec-Bench prompts in which every method runs
# twice, without and with exact mode (`exact=true`), interleaved per prompt, against plain
# decoding (`none`); then the batch-composition check (exact_determinism.py). "= none" is the
# share of outputs equal to plain decoding id for id; "diff margin" the target's top-2 logit
# margin at the first difference. Never run two benchmarks at once (two cores).
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${QUESTIONS:-../shared/data/spec_bench/question.jsonl}
PER=${PER_CATEGORY:-1}
NEW=${MAX_NEW_TOKENS:-64}
OUT=benchmarks/smollm2-135m-bf16-exact
M=(--method none --method none:exact=true)
for m in ngram "eagle:k=5,tree_nodes=16,topk=4,beam=4" "draft_model:model=smollm2-135m-instruct-drafter"; do
  if [[ $m == *:* ]]; then sep=,; else sep=:; fi
  M+=(--method "$m" --method "$m${sep}exact=true")
done
.venv/bin/draftsmith bench --model smollm2-135m-instruct --dtype bf16 --threads 2 --questions "$Q" \
  --per-category "$PER" --max-new-tokens "$NEW" "${M[@]}" --out $OUT/specbench
.venv/bin/python benchmarks/exact_determinism.py --out $OUT/determinism.md
