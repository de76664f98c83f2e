#!/usr/bin/env bash
# Copy trained heads (benchmarks/train_heads.sh) into the package, weights in bf16 (the dtype the
# default model runs in; half the size of the fp32 training copy). Usage: ship_heads.sh KIND...
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/heads-sg}
for KIND in "$@"; do
  DEST=src/draftsmith/packs/smollm2-135m-instruct-$KIND
  mkdir -p "$DEST"
  cp "$OUT/$KIND"/{config.json,draft_vocab.safetensors,README.md} "$DEST/"
  .venv/bin/python - "$OUT/$KIND/model.safetensors" "$DEST/model.safetensors" <<'PY'
import sys
import torch
from safetensors.torch import load_file, save_file
save_file({k: v.to(torch.bfloat16) for k, v in load_file(sys.argv[1]).items()}, sys.argv[2])
PY
  du -sh "$DEST"
done
