#!/usr/bin/env bash
# PARD for the default model (issue 22): the shipped drafter (smollm2-135m-instruct-drafter)
# adapted to draft k tokens in one forward, on the target's own greedy answers to ShareGPT first
# turns. Both steps resume when rerun (the rollouts file skips the prompts it holds; training
# resumes from OUT/checkpoint). As run on 2026-12-02 on the 2-core CPU: the rollouts ran alone on
# one core for about 40 minutes and were stopped by hand (kill) at ROWS rows (see the model card's
# data line), then the training ran on both cores.
set -euo pipefail
cd "$(dirname "$0")/.."
B=.venv/bin/draftsmith
OUT=${OUT:-runs/train/pard}

# 1. the target answers ShareGPT instructions greedily (continuous refill, 48 rows at a time)
OMP_NUM_THREADS=1 $B train data --out runs/rollouts/pard-greedy.jsonl --limit "${LIMIT:-3000}" --temperature 0 \
  --max-new-tokens 192 --batch-size 48

# 2. PARD training from the shipped drafter: k = 6 (5 mask blocks), COD keep 0.8 per deeper block,
#    8 sequences a step, its 8192-token draft vocabulary kept
$B train pard --drafter smollm2-135m-instruct-drafter --data runs/rollouts/pard-greedy.jsonl --k 6 --keep 0.8 \
  --steps "${STEPS:-900}" --batch-size 8 --lr 5e-4 --save-every 100 --out "$OUT"
