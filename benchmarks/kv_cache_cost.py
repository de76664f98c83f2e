"""What the KV cache's storage costs a step: transformers' DynamicCache (concatenates, so every step
copies the whole cache of every layer) against draftsmith's preallocated buffer (cache.BufferLayer:
a step writes its new slots in place, a rollback moves a length).

    .venv/bin/python benchmarks/kv_cache_cost.py --contexts 128,1024,4096 --k 1,8 \
        --out benchmarks/smollm2-135m-bf16-kv-cache

For each context length and step width k, a context of random token ids is prefilled into both
caches, then `--steps` verification steps of k tokens run on each, every step followed by the
rollback a rejected draft causes (keep 1 of the k tokens); the two caches alternate step by step so
that the machine's drift (a shared 2-core CPU) falls on both alike. The step time is the median.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers import DynamicCache

from draftsmith.cache import crop, new_cache
from draftsmith.target import load_target


def prefill(target, cache, ids: torch.Tensor) -> None:
    n = ids.shape[1]
    for a in range(0, n, 512):  # chunks keep the prefill's attention memory small at 4k
        b = min(n, a + 512)
        slots = torch.arange(a, b, device=target.device)
        target.step(ids[:, a:b], slots[None], cache, cache_position=slots, last_only=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--contexts", default="128,1024,4096")
    ap.add_argument("--k", default="1,8", help="tokens per verification step")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/smollm2-135m-bf16-kv-cache"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    target = load_target(args.model, dtype=args.dtype)
    cfg = target.config
    kv_heads = getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    per_token = 2 * cfg.num_hidden_layers * kv_heads * head_dim * torch.finfo(target.dtype).bits // 8
    gen = torch.Generator().manual_seed(args.seed)
    V = target.vocab_size
    rows = []
    for ctx in [int(c) for c in args.contexts.split(",")]:
        ids = torch.randint(0, V, (1, ctx), generator=gen)
        caches = {"DynamicCache": DynamicCache(), "buffer": new_cache()}
        for c in caches.values():
            prefill(target, c, ids)
        for k in [int(x) for x in args.k.split(",")]:
            draft = torch.randint(0, V, (1, k), generator=gen)
            times: dict[str, list[float]] = {name: [] for name in caches}
            for i in range(args.steps + 3):
                for name, c in caches.items():
                    L = c.get_seq_length()
                    slots = torch.arange(L, L + k)
                    t0 = time.perf_counter()
                    target.step(draft, slots[None], c, cache_position=slots)
                    crop(c, L + 1)  # one token kept, as after a rejected draft
                    dt = time.perf_counter() - t0
                    if i >= 3:  # warm-up steps
                        times[name].append(dt)
                for c in caches.values():
                    crop(c, ctx)
            dyn, buf = (statistics.median(times[n]) * 1e3 for n in ("DynamicCache", "buffer"))
            rows.append({"context": ctx, "k": k, "dynamic_ms": dyn, "buffer_ms": buf, "ratio": dyn / buf,
                         "copied_mb": per_token * (ctx + k) / 1e6})
            print(f"context {ctx:5d} k {k:2d}: DynamicCache {dyn:7.2f} ms  buffer {buf:7.2f} ms  "
                  f"({dyn / buf:.2f}x; DynamicCache copies {rows[-1]['copied_mb']:.1f} MB a step)", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"model": args.model, "dtype": args.dtype, "threads": args.threads, "steps": args.steps,
            "torch": torch.__version__, "machine": platform.machine(), "cpus": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"# KV cache storage: DynamicCache vs preallocated buffer ({args.model}, {args.dtype})", "",
             "Made by `benchmarks/kv_cache_cost.py` (its docstring says how). Command:", "",
             f"    .venv/bin/python benchmarks/kv_cache_cost.py --contexts {args.contexts} --k {args.k} "
             f"--steps {args.steps} --threads {args.threads} --out {args.out}", "",
             f"{meta['date']}, {meta['machine']}, torch {meta['torch']}, {args.threads} threads; median of "
             f"{args.steps} steps each, the two caches alternating step by step. A step = one verification "
             "forward of k tokens + the rollback to 1 kept token.", "",
             "| context | k | DynamicCache ms | buffer ms | DynamicCache / buffer | DynamicCache copies per step |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['context']} | {r['k']} | {r['dynamic_ms']:.2f} | {r['buffer_ms']:.2f} | "
                     f"{r['ratio']:.2f}x | {r['copied_mb']:.1f} MB |")
    (args.out / "report.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
