"""One vLLM configuration over given prompt ids: run INSIDE the vLLM virtual environment.

Called by `benchmarks/vllm_peer.py` (which makes the prompt ids with draftsmith's tokenizer and
chat template, so that both engines see the same ids); imports nothing from draftsmith.

    $VENV/bin/python benchmarks/vllm_worker.py --model DIR --prompts prompts.json --max-tokens 64 \
        --label eagle --spec '{"method": "eagle", "model": "/tmp/head", "num_speculative_tokens": 3}' \
        --out result.json

vLLM offline (`vllm.LLM`), bf16, greedy (temperature 0), one prompt at a time (batch 1, as
draftsmith's decoder runs), after one warm-up generation. The speculative-decoding counters come
from `LLM.get_metrics()` (vLLM v1's Prometheus counters `vllm:spec_decode_num_drafts`,
`..._num_draft_tokens`, `..._num_accepted_tokens`, `..._num_accepted_tokens_per_pos`), read before
and after the timed prompts; the difference is the timed prompts' own. Mean acceptance length is
vLLM's own definition: 1 + accepted / drafts, where a draft is one request's proposal in one step
(steps where ngram found no match propose nothing and are not drafts).
"""

from __future__ import annotations

import argparse
import json
import os
import time


def spec_counters(llm) -> dict:
    """The spec-decode counters now: {name: value}, per position as a list."""
    out: dict = {"per_pos": {}}
    for m in llm.get_metrics():
        name = getattr(m, "name", "")
        if not name.startswith("vllm:spec_decode"):
            continue
        short = name[len("vllm:spec_decode_"):]
        if short.endswith("_per_pos"):  # a Vector: one value per draft position
            out["per_pos"][short] = [float(v) for v in m.values]
        elif hasattr(m, "value"):
            out[short] = float(m.value)
    return out


def diff(after: dict, before: dict) -> dict:
    d = {k: after[k] - before.get(k, 0.0) for k in after if k != "per_pos"}
    d["per_pos"] = {}
    for k, vals in after["per_pos"].items():
        old = before["per_pos"].get(k, [0.0] * len(vals))
        d["per_pos"][k] = [a - (old[i] if i < len(old) else 0.0) for i, a in enumerate(vals)]
    return d


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="the target's Hugging Face folder")
    ap.add_argument("--prompts", required=True, help="JSON file: a list of prompt id lists")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--spec", default="", help="speculative_config as JSON ('' = plain decoding)")
    ap.add_argument("--label", default="plain")
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import torch
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    prompts = json.loads(open(args.prompts).read())
    spec = json.loads(args.spec) if args.spec else None
    t0 = time.perf_counter()
    llm = LLM(model=args.model, dtype="bfloat16", max_model_len=args.max_model_len, seed=0,
              speculative_config=spec, disable_log_stats=False)
    load_s = time.perf_counter() - t0
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)

    def generate(ids: list[int], sp) -> tuple[list[int], float]:
        t = time.perf_counter()
        out = llm.generate([TokensPrompt(prompt_token_ids=ids)], sp, use_tqdm=False)
        return list(out[0].outputs[0].token_ids), time.perf_counter() - t

    generate(prompts[0], SamplingParams(temperature=0.0, max_tokens=min(16, args.max_tokens)))  # warm-up
    load_before = os.getloadavg()[0]  # the machine's load just before the timed prompts
    before = spec_counters(llm)
    rows = []
    for i, ids in enumerate(prompts):
        out_ids, seconds = generate(ids, params)
        rows.append({"prompt": i, "prompt_tokens": len(ids), "new_tokens": len(out_ids), "seconds": seconds,
                     "output_ids": out_ids})
    counters = diff(spec_counters(llm), before)
    result = {"label": args.label, "spec": spec, "load_s": load_s, "load_avg_timed": [load_before, os.getloadavg()[0]], "rows": rows, "counters": counters,
              "versions": {"vllm": vllm.__version__, "torch": torch.__version__},
              "env": {k: v for k, v in os.environ.items() if k.startswith(("VLLM_", "OMP_"))}}
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
