#!/usr/bin/env bash
# Issue 6: draft heads for the default model, trained on the project's 2-core CPU with the target
# frozen, on the target's own answers (runs/train/rollouts.jsonl from benchmarks/train_drafter.sh,
# step 1). The target's features are extracted once and cached beside the data; each kind resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
B=.venv/bin/draftsmith
DATA=runs/train/rollouts.jsonl
STEPS=${STEPS:-120}
# eagle: ~5 s a step of 2048 answer tokens here; medusa and hydra (4 heads) cost more per step
$B train heads --kind eagle --data "$DATA" --out runs/heads/eagle --steps "$STEPS" --batch-tokens 2048 --lr 1e-3
$B train heads --kind medusa --data "$DATA" --out runs/heads/medusa --steps $((STEPS / 2)) --batch-tokens 2048 --lr 1e-3
$B train heads --kind hydra --data "$DATA" --out runs/heads/hydra --steps $((STEPS / 2)) --batch-tokens 2048 --lr 1e-3

# then, as time allowed in that session, resumed from their checkpoints with longer schedules
# (the cosine learning rate restarts from where the longer schedule stands)
$B train heads --kind eagle --data "$DATA" --out runs/heads/eagle --steps $((STEPS * 2)) --batch-tokens 2048 --lr 1e-3
$B train heads --kind medusa --data "$DATA" --out runs/heads/medusa --steps $((STEPS * 5 / 4)) --batch-tokens 2048 --lr 1e-3
