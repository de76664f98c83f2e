#!/usr/bin/env bash
# Issue 7: the OpenAI-compatible server under 1-16 concurrent streaming clients, `none` against a
# drafter, same run (one server per method, all up; methods interleaved over 3 rounds per level).
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${QUESTIONS:-../shared/data/spec_bench/question.jsonl}
.venv/bin/draftsmith bench-serve --model smollm2-135m-instruct --dtype bf16 --questions "$Q" --per-category 1 \
  --max-new-tokens 128 --method none --method ngram --concurrency 1 2 4 8 16 --requests-per-client 2 --rounds 3 \
  --out benchmarks/smollm2-135m-bf16-serving
