#!/usr/bin/env bash
# Issue 6: draft heads for the default model, trained on the project's 2-core CPU with the target
# frozen. Data: ShareGPT first turns with ShareGPT's answers (the packaged ShareGPT; the fixed-data
# recipe of EAGLE and Medusa: the tokens are ShareGPT's, every label is the target's). The target's
# features are made step by step (no cache) and the heads train over their 8192-token draft
# vocabulary. Each run resumes from its checkpoint; a longer --steps continues the cosine schedule
# from where the longer schedule stands.
set -euo pipefail
cd "$(dirname "$0")/.."
B=.venv/bin/draftsmith
OUT=${OUT:-runs/heads-sg}
# eagle: 600 steps x 4096 answer tokens (2.5M tokens, 15k first turns), ~6 s a step here (~62 min)
$B train heads --kind eagle --data sharegpt --out "$OUT/eagle" --steps "${STEPS:-600}" --batch-tokens 4096 --lr 1e-3 \
  --save-every 50
