#!/usr/bin/env bash
# Issue 6: draft heads for the default model, trained on the project's 2-core CPU with the target
# frozen. Data: ShareGPT first turns with ShareGPT's answers (the packaged ShareGPT; the fixed data
# of EAGLE and Medusa: the tokens are ShareGPT's, every label is the target's). The target's features
# of the 8000 first turns are made once (~35 min here) into a feature file that every run reads;
# heads train over their 8192-token draft vocabulary. Runs resume from their checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
B=.venv/bin/draftsmith
OUT=${OUT:-runs/heads-sg}
DATA=(--data sharegpt --limit 8000 --features "$OUT/feats-8000.pt")
# eagle with EAGLE-3's training-time test over 2 draft steps, 4096 answer tokens a step (~2.4 s a step
# here). As it was run: the first 120 steps were ablation run c (smollm2-135m-eagle-training/ablate.sh,
# its own 120-step cosine schedule), copied to $OUT/eagle; resumed with --steps 1400 to step 200, then
# with --steps 1000 to the end (a resumed run continues the cosine of its own --steps).
$B train heads --kind eagle "${DATA[@]}" --out "$OUT/eagle" --steps "${STEPS:-1000}" --batch-tokens 4096 --lr 1e-3 \
  --unroll 2 --cls-weight 1.0 --save-every 100

# medusa, hydra, amphista and koala on the same feature file (no training-time test: their heads
# read the target's features only), 4096 answer tokens a step: medusa and hydra 400 steps (1.6M
# tokens, ~1 epoch), amphista and koala 250 (what fitted in the session). KOALA with 3 heads of 2
# decoder blocks each (4 would be 56 MB in bf16, near the project's size limit for a committed
# file). As run: medusa alone (~2 s a step); the others with OMP_NUM_THREADS=1 beside the drafter's
# training on the other core (~4-5 s a step).
for KIND in medusa hydra amphista koala; do
  case $KIND in medusa|hydra) N=400 ;; *) N=250 ;; esac
  EXTRA=(); if [ "$KIND" = koala ]; then EXTRA=(--num-heads 3); fi
  $B train heads --kind "$KIND" "${DATA[@]}" --out "$OUT/$KIND" --steps "$N" --batch-tokens 4096 --lr 1e-3 \
    --save-every 50 "${EXTRA[@]}"
done
