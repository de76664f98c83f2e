#!/usr/bin/env bash
# Issue 6: every draft-head kind on the default model against `none`, `ngram` and `hierarchy` (the
# best training-free drafters here), greedy and at temperature 1, each in one run. Uses the heads
# shipped in the package, or those in $HEADS/{medusa,hydra,amphista,koala,eagle} (from
# benchmarks/train_heads.sh) when HEADS is set. Never run two benchmarks at once (two cores).
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${QUESTIONS:-../shared/data/spec_bench/question.jsonl}
B=.venv/bin/draftsmith
h() { if [ -n "${HEADS:-}" ]; then echo "heads=$HEADS/$1,"; fi; }
TREE="tree_nodes=16,topk=4"
HEADS_METHODS=(--method "medusa:$(h medusa)" --method "medusa:$(h medusa)$TREE"
  --method "hydra:$(h hydra)" --method "amphista:$(h amphista)" --method "amphista:$(h amphista)$TREE"
  --method "koala:$(h koala)"
  --method "eagle:$(h eagle)k=5" --method "eagle:$(h eagle)k=5,$TREE,beam=4")

$B bench --model smollm2-135m-instruct --dtype bf16 --questions "$Q" --per-category 1 --max-new-tokens 128 \
  --method none --method ngram --method hierarchy "${HEADS_METHODS[@]}" \
  --method "eagle:$(h eagle)k=6,tree_nodes=32,topk=4,beam=4" \
  --out benchmarks/smollm2-135m-bf16-heads-greedy

# temperature 1: chains sample their drafts from the heads' q; trees are deterministic (lossless
# tree sampling over their nodes)
$B bench --model smollm2-135m-instruct --dtype bf16 --questions "$Q" --per-category 1 --max-new-tokens 128 \
  --temperature 1 --method none "${HEADS_METHODS[@]}" \
  --out benchmarks/smollm2-135m-bf16-heads-t1
