"""One llama.cpp configuration over given prompt ids: run INSIDE the llama-cpp-python virtual
environment (made by `benchmarks/vllm_peer.py --llamacpp-configs ...`); imports nothing from
draftsmith.

    $VENV/bin/python benchmarks/llamacpp_worker.py --gguf model-f16.gguf --prompts prompts.json \
        --max-tokens 64 --label lookup-f16 --lookup 3 --threads 2 --out result.json

`llama_cpp.Llama` on the GGUF, greedy (temperature 0, top-k 1), batch 1, one prompt at a time
after one warm-up generation, `--threads` threads. `--lookup K` adds llama-cpp-python's prompt
lookup (`LlamaPromptLookupDecoding`, n-grams up to 3, K tokens a step; it needs `logits_all=True`
for prompts longer than `n_batch`, so it is set). Each prompt's time runs from the call to the
last generated token, prompt processing included (as the vLLM worker and draftsmith rows time it).
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--prompts", required=True, help="JSON file: a list of prompt id lists")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--lookup", type=int, default=0, help="prompt lookup draft tokens (0: plain decoding)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--label", default="plain")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import llama_cpp
    from llama_cpp import Llama

    draft = None
    if args.lookup:
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        draft = LlamaPromptLookupDecoding(max_ngram_size=3, num_pred_tokens=args.lookup)
    t0 = time.perf_counter()
    llm = Llama(model_path=args.gguf, n_ctx=args.n_ctx, n_threads=args.threads, n_threads_batch=args.threads,
                n_batch=512, logits_all=bool(args.lookup), draft_model=draft, seed=0, verbose=False)
    load_s = time.perf_counter() - t0
    eos = llm.token_eos()
    prompts = json.loads(open(args.prompts).read())

    def generate(ids: list[int], n: int) -> tuple[list[int], float]:
        out: list[int] = []
        t = time.perf_counter()
        for tok in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            if tok == eos:
                break
            out.append(int(tok))
            if len(out) >= n:
                break
        return out, time.perf_counter() - t

    generate(prompts[0], min(16, args.max_tokens))  # warm-up
    load_before = os.getloadavg()[0]
    rows = []
    for i, ids in enumerate(prompts):
        out_ids, seconds = generate(ids, args.max_tokens)
        rows.append({"prompt": i, "prompt_tokens": len(ids), "new_tokens": len(out_ids), "seconds": seconds,
                     "output_ids": out_ids})
    result = {"label": args.label, "spec": {"gguf": os.path.basename(args.gguf), "lookup": args.lookup,
                                            "threads": args.threads},
              "load_s": load_s, "load_avg_timed": [load_before, os.getloadavg()[0]], "rows": rows,
              "versions": {"llama_cpp_python": llama_cpp.__version__}}
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
