#!/usr/bin/env bash
# Issue 6: draft heads on the default model against `none`, `ngram` and `hierarchy` (the best
# training-free drafters here), greedy and at temperature 1, each in one run. Uses the heads
# shipped in the package, or those in $HEADS/{medusa,hydra,eagle} (from benchmarks/train_heads.sh)
# when HEADS is set. Never run two benchmarks at once (two cores).
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${QUESTIONS:-../shared/data/spec_bench/question.jsonl}
B=.venv/bin/draftsmith
h() { if [ -n "${HEADS:-}" ]; then echo "heads=$HEADS/$1,"; fi; }
METHODS=(--method none --method ngram --method hierarchy
  --method "medusa:$(h medusa)" --method "medusa:$(h medusa)tree_nodes=16,topk=4"
  --method "hydra:$(h hydra)"
  --method "eagle:$(h eagle)k=5" --method "eagle:$(h eagle)k=5,tree_nodes=16,topk=4,beam=4"
  --method "eagle:$(h eagle)k=6,tree_nodes=32,topk=4,beam=4")

$B bench --model smollm2-135m-instruct --dtype bf16 --questions "$Q" --per-category 1 --max-new-tokens 128 \
  "${METHODS[@]}" --out benchmarks/smollm2-135m-bf16-heads-greedy

# temperature 1: the heads only (time), drafts sampled from the heads' q (chains) or deterministic trees
$B bench --model smollm2-135m-instruct --dtype bf16 --questions "$Q" --per-category 1 --max-new-tokens 128 \
  --temperature 1 --method none --method "hydra:$(h hydra)" \
  --method "eagle:$(h eagle)k=5" --method "eagle:$(h eagle)k=5,tree_nodes=16,topk=4,beam=4" \
  --out benchmarks/smollm2-135m-bf16-heads-t1
