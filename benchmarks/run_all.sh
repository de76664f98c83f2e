#!/usr/bin/env bash
# The committed benchmark runs, one after another (never two at once: they share two cores).
# Spec-Bench development questions are read from ../shared (not redistributed with the project).
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${QUESTIONS:-../shared/data/spec_bench/question.jsonl}
B=.venv/bin/draftsmith

# default model, training-free drafters vs Hugging Face prompt lookup (issues 2, 3, 4)
$B bench --model smollm2-135m-instruct --dtype bf16 --questions "$Q" --per-category 2 --max-new-tokens 128 \
  --method none --method ngram --method recycling --method hf_prompt_lookup:k=10 \
  --out benchmarks/smollm2-135m-bf16-specbench

# the Qwen pair: draft model 0.5B -> 1.5B vs Hugging Face assisted generation (issues 2, 3)
$B bench --model qwen2.5-coder-1.5b-instruct --dtype bf16 --questions "$Q" --per-category 1 --max-new-tokens 96 \
  --method none --method draft_model:model=qwen2.5-coder-0.5b-instruct \
  --method hf_assisted:model=qwen2.5-coder-0.5b-instruct --out benchmarks/qwen-coder-1.5b-bf16-specbench

# tree and trained drafters (issues 4, 5), draft heads (issue 6), serving (issue 7)
benchmarks/run_drafters.sh
benchmarks/run_heads.sh
benchmarks/run_serving.sh
# exact mode (issue 20); combined and self-drafting drafters, suffix over repeated requests (issue 19)
benchmarks/run_exact.sh
benchmarks/run_combined.sh
benchmarks/run_suffix_repeat.sh
