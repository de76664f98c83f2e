#!/usr/bin/env bash
cd "$(dirname "$0")/../.."
mkdir -p runs/abl
B=.venv/bin/draftsmith
D=(--data sharegpt --limit 8000 --features runs/heads-sg/feats-8000.pt --steps 120 --batch-tokens 4096 --lr 1e-3 --save-every 1000)
$B train heads --kind eagle "${D[@]}" --out runs/abl/a-u1-c01 --unroll 1 --cls-weight 0.1 > runs/abl/a.log 2>&1
$B train heads --kind eagle "${D[@]}" --out runs/abl/b-u2-c01 --unroll 2 --cls-weight 0.1 > runs/abl/b.log 2>&1
$B train heads --kind eagle "${D[@]}" --out runs/abl/c-u2-c1 --unroll 2 --cls-weight 1.0 > runs/abl/c.log 2>&1
