#!/usr/bin/env bash
# The drafter for the default model (issue 5): Goel et al.'s three stages, as run on the project's
# 2-core CPU in the seventh session (the sixth session distilled on ShareGPT's own answers with
# the target's labels, the second on 894 rollouts with a target forward per step: git history).
# Every stage resumes when rerun (checkpoints; rollout files skip the prompts they hold). As run,
# every job but the feature file had OMP_NUM_THREADS=1, two or three at once on the two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
B=.venv/bin/draftsmith
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# 1. pretraining: 2 layers, width 384, the target's embeddings projected to 384 dims; next-token
#    loss on chat-formatted ShareGPT conversations over the 8192 most frequent tokens (the
#    training vocabulary, which the drafter then drafts over); 8 x 257 tokens a step
$B train pretrain --out runs/train/pretrain --steps "${PRE_STEPS:-2000}" --batch-size 8 --seq-len 256 --lr 1.5e-3 \
  --train-vocab 8192 --save-every 200 &

# 2. distillation data: the target answers ShareGPT first turns in its chat template, greedily
#    (the first GREEDY instructions) and sampled at temperature 1 (the next SAMPLED), 32 at a time,
#    up to 256 new tokens. As run: the greedy run was stopped by hand (kill) after 1760 of the
#    3101 prompts that fit in 256 tokens, when the session's time for it ended (52 min on one
#    core; prompts are answered shortest first within windows of 256, so a stopped run holds
#    prompts of every length); the sampled one answered all 474 of its 600 instructions whose
#    prompts fit (14 min). 358k + 100k answer tokens.
GREEDY=${GREEDY:-4000}
SAMPLED=${SAMPLED:-600}
$B train data --out runs/rollouts/greedy.jsonl --limit "$GREEDY" --batch-size 32 --max-new-tokens 256 --temperature 0
wait  # the pretraining
$B train data --out runs/rollouts/t1.jsonl --skip 4000 --limit "$SAMPLED" --batch-size 32 --max-new-tokens 256 \
  --temperature 1
cat runs/rollouts/greedy.jsonl runs/rollouts/t1.jsonl > runs/rollouts/mix.jsonl

# 3. knowledge distillation on the target's answers: p from the target's last hidden states at
#    every answer token (a feature file, made once, here by a one-step run on both cores: 10 min)
#    through its LM head; 8 x 256 answer tokens a step. Three runs at once on the two cores:
#    forward KL and TVD++ from the pretrained drafter (same data and steps), and forward KL from
#    the sixth session's drafter (the same pretraining recipe, then distilled with forward KL on
#    ShareGPT's own answers; the pack as of commit f81dd12)
OMP_NUM_THREADS=2 $B train distill --drafter runs/train/pretrain --data runs/rollouts/mix.jsonl \
  --features runs/rollouts/feats.pt --out runs/train/feats-probe --steps 1
mkdir -p runs/train/kd-sharegpt-s6
git archive f81dd12 src/draftsmith/packs/smollm2-135m-instruct-drafter | tar -x --strip-components=4 -C runs/train/kd-sharegpt-s6
for RUN in "pretrain fkl kd-fkl" "pretrain tvdpp kd-tvdpp" "kd-sharegpt-s6 fkl kd-fkl-s6"; do
  set -- $RUN
  $B train distill --drafter "runs/train/$1" --data runs/rollouts/mix.jsonl --features runs/rollouts/feats.pt \
    --loss "$2" --out "runs/train/$3" --steps "${KD_STEPS:-600}" --batch-size 8 --lr 1e-3 --save-every 200 &
done
wait
