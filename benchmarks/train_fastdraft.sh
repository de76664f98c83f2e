#!/usr/bin/env bash
# Issue 22 (FastDraft, Zafrir et al. 2024) against Direct Alignment (Goel et al. 2024) on the same
# budget, from the same pretrained drafter: one pretraining run (the recipe of train_drafter.sh,
# shorter), the target's own data (answers to ShareGPT first turns, and FastDraft's text
# completions: the target continues 64-token prefixes of ShareGPT conversations), then
#   fastdraft  `train align` (cross-entropy on the target's tokens) on answers + completions,
#   fastdraft-answers  the same on the answers alone (the data's share in the difference),
#   direct     `train distill --loss tvdpp` (Direct Alignment's TVD++) on the answers,
# each STEPS steps of batch 8 at the same learning rate. Every stage resumes when rerun.
# Training runs in fp32 on a CPU without bf16 units (trainer.bf16_pays).
set -euo pipefail
cd "$(dirname "$0")/.."
B=.venv/bin/draftsmith
R=runs/fastdraft
mkdir -p $R
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
STEPS=${STEPS:-400}

$B train pretrain --out $R/pretrain --steps "${PRE_STEPS:-800}" --batch-size 8 --seq-len 256 --lr 1.5e-3 \
  --train-vocab 8192 --save-every 100 > $R/pretrain.log 2>&1 &
# the target's data, greedy (the benchmark is greedy); prompts from ShareGPT past the first 4000
# conversations' first turns (the shipped drafter's data) for the answers
$B train data --out $R/answers.jsonl --skip 5000 --limit "${ANSWERS:-500}" --batch-size 32 --max-new-tokens 192 \
  --temperature 0 > $R/answers.log 2>&1
$B train data --out $R/completions.jsonl --text-prefix 64 --skip 5000 --limit "${COMPLETIONS:-400}" --batch-size 32 \
  --max-new-tokens 128 --temperature 0 > $R/completions.log 2>&1
wait
cat $R/answers.jsonl $R/completions.jsonl > $R/mix.jsonl

$B train align --drafter $R/pretrain --data $R/mix.jsonl --out $R/fastdraft --steps "$STEPS" --batch-size 8 \
  --lr 1e-3 --save-every 100 > $R/fastdraft.log 2>&1 &
$B train align --drafter $R/pretrain --data $R/answers.jsonl --out $R/fastdraft-answers --steps "$STEPS" \
  --batch-size 8 --lr 1e-3 --save-every 100 > $R/fastdraft-answers.log 2>&1
wait
OMP_NUM_THREADS=2 $B train distill --drafter $R/pretrain --data $R/answers.jsonl --loss tvdpp --out $R/direct \
  --steps "$STEPS" --batch-size 8 --lr 1e-3 --save-every 100 > $R/direct.log 2>&1
