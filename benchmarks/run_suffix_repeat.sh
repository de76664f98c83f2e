#!/usr/bin/env bash
# Issue 19's multi-request run: the same Spec-Bench questions answered twice in one run, by one
# decoder per method (its drafter bound once and kept, as a server keeps it), so `suffix` drafts
# the second pass from its global suffix structure (what the first pass left behind). Reports
# suffix's (and ngram's, which keeps nothing across requests: the control) speedup over `none` in
# each pass and the second pass over the first (benchmarks/suffix_repeat.py). Greedy, then
# temperature 1. Never run two benchmarks at once (two cores).
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${QUESTIONS:-../shared/data/spec_bench/question.jsonl}
PER=${PER_CATEGORY:-2}
NEW=${MAX_NEW_TOKENS:-128}
OUT=${OUT:-benchmarks/smollm2-135m-bf16-suffix-repeat}
M=(--method none --method ngram --method suffix)
PY=.venv/bin/python

$PY benchmarks/suffix_repeat.py --model smollm2-135m-instruct --dtype bf16 --threads 2 --questions "$Q" \
  --per-category "$PER" --max-new-tokens "$NEW" "${M[@]}" --out "$OUT/greedy"
$PY benchmarks/suffix_repeat.py --model smollm2-135m-instruct --dtype bf16 --threads 2 --questions "$Q" \
  --per-category "$PER" --max-new-tokens "$NEW" --temperature 1 "${M[@]}" --out "$OUT/t1"
