#!/usr/bin/env bash
# Issue 22: Falcon heads for the default model (semi-autoregressive EAGLE: 2 tokens a forward), on
# the project's 2-core CPU. Features of 3000 ShareGPT first turns made once (~22 min here); the
# head starts from the shipped EAGLE head (the same weights: a block of 1 is EAGLE) and trains 240
# steps of 2048 answer tokens (~0.5M tokens, ~20 min; 5 s a step: four query sets a step, two
# passes of two offsets) with 2 passes (coupled) and glancing 0.2. Resumes from its checkpoint.
# As run in session 33. Then: OUT=runs/falcon benchmarks/ship_heads.sh falcon
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/falcon}
.venv/bin/draftsmith train heads --kind falcon --data sharegpt --limit 3000 --features "$OUT/feats-3000.pt" \
  --out "$OUT/falcon" --init src/draftsmith/packs/smollm2-135m-instruct-eagle --steps 240 --batch-tokens 2048 \
  --lr 5e-4 --glance 0.2 --cls-weight 1.0 --save-every 20
