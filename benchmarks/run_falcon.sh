#!/usr/bin/env bash
# Issue 22: Falcon (semi-autoregressive heads, 2 tokens a forward) against EAGLE's chain on the same
# questions in one run: none, eagle chains of 4 and 6, falcon chains of 4 and 6 (2 and 3 forwards of
# the head instead of 4 and 6). Greedy, bf16, 13 questions. Uses the shipped heads, or $HEADS/falcon.
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${QUESTIONS:-../shared/data/spec_bench/question.jsonl}
F=${HEADS:+heads=$HEADS/falcon,}
.venv/bin/draftsmith bench --model smollm2-135m-instruct --dtype bf16 --questions "$Q" --per-category 1 \
  --max-new-tokens 128 --method none --method eagle:k=4 --method eagle:k=6 --method "falcon:${F}k=4" \
  --method "falcon:${F}k=6" --out benchmarks/smollm2-135m-bf16-falcon-greedy
