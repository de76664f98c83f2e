#!/usr/bin/env bash
# Issue 21: the OpenAI-compatible server under 1-32 concurrent streaming clients, `none` against
# ngram, the trained EAGLE-3 tree and the distilled draft model (one server per method, all up;
# methods interleaved within each level), with one ~4,000-token prompt arriving mid-run at 1, 4
# and 16 clients, and every request's outcome counted.
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${QUESTIONS:-../shared/data/spec_bench/question.jsonl}
OUT=${OUT:-benchmarks/smollm2-135m-bf16-serving-v2}
.venv/bin/draftsmith bench-serve --model smollm2-135m-instruct --dtype bf16 --questions "$Q" --per-category 1 \
  --max-new-tokens 128 --method none --method ngram --method "eagle3:k=5,tree_nodes=16,topk=4,beam=4" \
  --method "draft_model:model=smollm2-135m-instruct-drafter" --concurrency 1 2 4 8 16 32 --requests-per-client 1 \
  --rounds 1 --max-batch 32 --long-prompt-tokens 4000 --long-prompt-at 1 4 16 --out "$OUT"
