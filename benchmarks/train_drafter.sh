#!/usr/bin/env bash
# The drafter for the default model (issue 5), as it was made on the project's 2-core CPU (sixth
# session; the second session's recipe, distillation on 894 target rollouts with a target forward
# per step, is in git history). Stages resume from their checkpoints when rerun. As run, every
# stage had OMP_NUM_THREADS=1, beside a draft-head training on the other core.
set -euo pipefail
cd "$(dirname "$0")/.."
B=.venv/bin/draftsmith
FEATS=${FEATS:-runs/heads-sg/feats-8000.pt}  # the target's features of 8000 ShareGPT first turns:
                                             # benchmarks/train_heads.sh makes it (~35 min) and
                                             # distill makes it too when it is missing

# 1. pretraining: 2 layers, width 384, the target's embeddings projected to 384 dims; next-token
#    loss on chat-formatted ShareGPT conversations over the 8192 most frequent tokens (the
#    training vocabulary, which the drafter then drafts over); 8 x 257 tokens a step
$B train pretrain --out runs/train/pretrain --steps "${PRE_STEPS:-2000}" --batch-size 8 --seq-len 256 --lr 1.5e-3 \
  --train-vocab 8192 --save-every 200

# 2. knowledge distillation from the target's soft labels on ShareGPT first turns (ShareGPT's
#    answers; the target's p at every answer token from the feature file through its LM head),
#    forward KL and TVD++ from the same start, same data, same steps; 8 x 256 answer tokens a step
for LOSS in fkl tvdpp; do
  $B train distill --drafter runs/train/pretrain --data sharegpt --limit 8000 --features "$FEATS" --loss "$LOSS" \
    --out "runs/train/kd-$LOSS" --steps "${KD_STEPS:-600}" --batch-size 8 --lr 1e-3 --save-every 200
done
