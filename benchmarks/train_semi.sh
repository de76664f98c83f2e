#!/usr/bin/env bash
# Issue 22: FSPAD and Chimera heads for the default model on the project's 2-core CPU, on the same
# features as Falcon (3000 ShareGPT first turns, made once: ~25 min here; `--features` reuses the file).
# - eagle-more: the shipped EAGLE head trained 100 more steps of 2048 answer tokens on this data (the
#   control: what the same extra training gives EAGLE without FSPAD's changes);
# - fspad: the shipped EAGLE head as its start (the sampled block of fc zero: EAGLE exactly), the same
#   100 steps with feature sampling and partial alignment (regression on half the dimensions);
# - chimera: from scratch (nothing to start from), 200 steps of 2048 answer tokens.
# All with 2 draft steps trained (eagle kinds), the token loss weighted 1.0, lr 5e-4 (chimera 1e-3).
# Each resumes from its checkpoint. As run in session 34. Then: OUT=runs/semi benchmarks/ship_heads.sh fspad chimera
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/semi}
EAGLE=src/draftsmith/packs/smollm2-135m-instruct-eagle
COMMON=(--data sharegpt --limit 3000 --features "$OUT/feats-3000.pt" --batch-tokens 2048 --save-every 25)
.venv/bin/draftsmith train heads --kind eagle --out "$OUT/eagle-more" --init "$EAGLE" --steps 100 --lr 5e-4 \
  --unroll 2 --cls-weight 1.0 "${COMMON[@]}"
.venv/bin/draftsmith train heads --kind fspad --out "$OUT/fspad" --init "$EAGLE" --steps 100 --lr 5e-4 \
  --unroll 2 --cls-weight 1.0 --align 0.5 "${COMMON[@]}"
.venv/bin/draftsmith train heads --kind chimera --out "$OUT/chimera" --steps 200 --lr 1e-3 "${COMMON[@]}"
# GliDe and LongSpec read the input of the target's last layer too (its keys and values): their own
# feature file (1500 first turns with that layer's input, ~25 min here).
# - glide: starts as a copy of the target's last layer, 150 steps, 3 draft steps trained;
# - longspec: the glide head as its start, 60 more steps with a window of 64 (+ 4 sink tokens) and
#   anchor-offset indices up to 7680; glide-more: the control, 60 more steps as glide.
AUX=(--data sharegpt --limit 1500 --features "$OUT/feats-aux-1500.pt" --batch-tokens 2048 --save-every 25)
.venv/bin/draftsmith train heads --kind glide --out "$OUT/glide" --steps 150 --lr 5e-4 "${AUX[@]}"
.venv/bin/draftsmith train heads --kind longspec --out "$OUT/longspec" --init "$OUT/glide" --steps 60 --lr 3e-4 \
  "${AUX[@]}"
.venv/bin/draftsmith train heads --kind glide --out "$OUT/glide-more" --init "$OUT/glide" --steps 60 --lr 3e-4 \
  "${AUX[@]}"
