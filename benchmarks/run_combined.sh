#!/usr/bin/env bash
# Issue 19: the drafters that combine (cascade, union, rasd), suffix, and the target drafting for
# itself (layer_skip, early_exit), against none, ngram, hierarchy and the best head, greedy and at
# temperature 1, each in one run; then suffix over two passes of the same questions in one decoder
# (benchmarks/suffix_repeat.py). PER_CATEGORY=2 is what the issue asks; 1 halves the run.
# Never run two benchmarks at once (two cores).
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${QUESTIONS:-../shared/data/spec_bench/question.jsonl}
N=${PER_CATEGORY:-2}
T=${MAX_NEW_TOKENS:-128}
B=.venv/bin/draftsmith
DM="draft_model:model=smollm2-135m-instruct-drafter"
EAGLE="eagle:k=5,tree_nodes=16,topk=4,beam=4"
METHODS=(--method none --method ngram --method hierarchy --method "$EAGLE" --method suffix
  --method "cascade:levels=[$DM,ngram]"
  --method "union:drafters=[ngram,$EAGLE]" --method "union:drafters=[suffix,$EAGLE]"
  --method "rasd:model=[$DM],retrieval=[suffix]"
  --method layer_skip --method early_exit)

# SKIP_GREEDY=1 / SKIP_T1=1 leave out one half
if [ "${SKIP_GREEDY:-0}" != 1 ]; then
$B bench --model smollm2-135m-instruct --dtype bf16 --questions "$Q" --per-category "$N" --max-new-tokens "$T" \
  --threads 2 "${METHODS[@]}" --out benchmarks/smollm2-135m-bf16-combined-greedy
fi

# T1=short: at temperature 1 only the rows the issue's aims are about (none, ngram, suffix and
# the combined drafters), for time
T1_METHODS=("${METHODS[@]}")
if [ "${T1:-all}" = short ]; then
  T1_METHODS=(--method none --method ngram --method suffix --method "cascade:levels=[$DM,ngram]"
    --method "union:drafters=[suffix,$EAGLE]" --method "rasd:model=[$DM],retrieval=[suffix]")
fi
if [ "${SKIP_T1:-0}" != 1 ]; then
$B bench --model smollm2-135m-instruct --dtype bf16 --questions "$Q" --per-category "$N" --max-new-tokens "$T" \
  --threads 2 --temperature 1 "${T1_METHODS[@]}" --out benchmarks/smollm2-135m-bf16-combined-t1
fi
