#!/usr/bin/env bash
# Issue 20 (Judge decoding): train the judge head for the default model, then measure it.
#  1. the target answers ShareGPT first turns greedily (instructions 8000 on: past the prompts the
#     shipped drafter was trained on), appended to one rollouts file (reruns skip what it holds);
#  2. `train judge`: candidates = the shipped draft model's teacher-forced guesses that differ from
#     the target's answer (16 per answer), labelled by the target's own branched continuations
#     (train/judge.py), a logistic regression, threshold for precision 0.9 on a calibration split;
#     a rerun continues collecting where a stopped one ended;
#  3. speed on Spec-Bench (greedy, bf16): the judge beside the lossless rule on the same drafters,
#     with typical acceptance (the other lossy rule that needs no training) for comparison;
#  4. quality (`draftsmith eval`, GSM8K + HumanEval, --resume: a stopped run continues).
# As run on 2026-12-02 (AMD EPYC, 2 cores): the bench and the eval ran side by side, THREADS=1 each
# (the eval's speeds are then not comparable; the bench's are, within it). The first rollouts pass was
# stopped at 830 answers.
set -euo pipefail
cd "$(dirname "$0")/.."
B=.venv/bin/draftsmith
Q=${QUESTIONS:-../shared/data/spec_bench/question.jsonl}
N=${PER_CATEGORY:-1}
T=${MAX_NEW_TOKENS:-128}
DATA=${DATA:-runs/rollouts/judge-greedy.jsonl}
HEAD=${HEAD:-runs/train/judge}  # then copied to src/draftsmith/packs/smollm2-135m-instruct-judge (the shipped head)
DM="draft_model:model=smollm2-135m-instruct-drafter"

if [ "${SKIP_TRAIN:-0}" != 1 ]; then
  OMP_NUM_THREADS=1 $B train data --out "$DATA" --skip 9200 --limit 600 --temperature 0 --max-new-tokens 160 --batch-size 32
  OMP_NUM_THREADS=1 $B train data --out "$DATA" --skip 8000 --limit 1200 --temperature 0 --max-new-tokens 160 --batch-size 32
  OMP_NUM_THREADS=1 $B train judge --data "$DATA" --out "$HEAD" --per-answer 16
  cp "$HEAD/judge.safetensors" "$HEAD/judge.json" src/draftsmith/packs/smollm2-135m-instruct-judge/
fi

if [ "${SKIP_BENCH:-0}" != 1 ]; then
  $B bench --model smollm2-135m-instruct --dtype bf16 --questions "$Q" --per-category "$N" --max-new-tokens "$T" \
    --threads "${THREADS:-2}" --method none --method "$DM" --method "$DM,verifier=judge" \
    --method "$DM,verifier=[judge:threshold=0.6]" --method "$DM,verifier=typical" --method ngram \
    --method "ngram:verifier=judge" \
    --out "${BENCH_OUT:-benchmarks/smollm2-135m-bf16-judge-greedy}"
fi

if [ "${SKIP_EVAL:-0}" != 1 ]; then
  $B eval --model smollm2-135m-instruct --dtype bf16 --limit "${EVAL_LIMIT:-100}" --max-new-tokens 256 \
    --threads "${THREADS:-2}" --method "$DM" --method "$DM,verifier=judge" \
    --method "$DM,verifier=[judge:threshold=0.6]" --resume --out "${EVAL_OUT:-benchmarks/smollm2-135m-judge-quality}"
fi
