#!/usr/bin/env bash
# The drafter for the default model (issue 5), as it was made on the project's 2-core CPU.
# Stages resume when rerun. Times are from that run (two stages ran side by side for part of it).
set -euo pipefail
cd "$(dirname "$0")/.."
B=.venv/bin/draftsmith

# 1. distillation data: the target answers ShareGPT first turns (T = 0.8, at most 192 new tokens);
#    stopped by hand once enough had been generated (the file is resumable)
$B train data --out runs/train/rollouts.jsonl --limit 6000 --batch-size 48 --max-new-tokens 192 --temperature 0.8 &
DATA=$!

# 2. pretraining: 2 layers, width 384, embeddings projected from the target's; chat-formatted
#    ShareGPT, 220 steps x 8 x 257 tokens (first started with --steps 450 and resumed at step 50 with 220)
$B train pretrain --out runs/train/pretrain --steps 220
kill $DATA 2>/dev/null || true

# 3. knowledge distillation on the rollouts: forward KL and TVD++, same start, data and steps
OMP_NUM_THREADS=1 $B train distill --drafter runs/train/pretrain --data runs/train/rollouts.jsonl --loss fkl \
  --out runs/train/kd-fkl --steps 300 --batch-size 4 --lr 1e-3 &
OMP_NUM_THREADS=1 $B train distill --drafter runs/train/pretrain --data runs/train/rollouts.jsonl --loss tvdpp \
  --out runs/train/kd-tvdpp --steps 300 --batch-size 4 --lr 1e-3
wait
