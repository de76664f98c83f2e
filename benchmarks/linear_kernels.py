"""Which kernel runs the target's linear layers fastest at decoding shapes (issue 18's question
"torch.compile or whatever measures faster"), on this machine, in bf16.

    .venv/bin/python benchmarks/linear_kernels.py --rows 1,4 --out benchmarks/smollm2-135m-bf16-linear-kernels

Every nn.Linear of the decoder layers (not the LM head), applied to an input of M rows (M = the
tokens of one step: 1 for plain decoding, 1 + draft for a verification), as one module whose
forward returns every product. Variants, each timed as the best of `--repeats` passes over every
weight (the weights are far larger than the caches, so a pass reads them from memory):

    eager            F.linear (oneDNN's bf16 matmul, what draftsmith and transformers run today)
    aten             the same with oneDNN switched off (torch.backends.mkldnn), ATen's own kernels
    compile          torch.compile, inductor's defaults, weights frozen (torch._inductor.config.freezing)
    compile-autotune torch.compile(mode="max-autotune-no-cudagraphs"), weights frozen: inductor
                     benchmarks its C++ GEMM template against oneDNN per shape and keeps the faster

Each compiled variant's outputs are compared with eager bit for bit (exact mode relies on a
product's bits not depending on the kernel's blocking). The triad bandwidth of the same run gives
the bound: weight bytes / bandwidth.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from draftsmith.bench.roofline import triad_bandwidth
from draftsmith.target import load_target


class Linears(torch.nn.Module):
    """Every given Linear applied to the input of its width; -> a list of outputs."""

    def __init__(self, linears: list[torch.nn.Linear]):
        super().__init__()
        self.linears = torch.nn.ModuleList(linears)

    def forward(self, inputs: dict[int, torch.Tensor]) -> list[torch.Tensor]:
        return [lin(inputs[lin.in_features]) for lin in self.linears]


def best_ms(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--rows", default="1,4", help="M values (tokens per step)")
    ap.add_argument("--variants", default="eager,aten,compile,compile-autotune")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/smollm2-135m-bf16-linear-kernels"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    target = load_target(args.model, dtype=args.dtype, progress=False)
    base = target.model.base_model
    linears = [m for m in base.layers.modules() if isinstance(m, torch.nn.Linear)]
    for lin in linears:  # exact mode's patch (if any) is not what is measured here
        lin.forward = torch.nn.Linear.forward.__get__(lin)
    module = Linears(linears).eval()
    weight_bytes = sum(lin.weight.numel() * lin.weight.element_size() for lin in linears)
    bandwidth = triad_bandwidth()
    variants = [v for v in args.variants.split(",") if v]
    rows = []
    gen = torch.Generator().manual_seed(0)
    for M in [int(m) for m in args.rows.split(",")]:
        inputs = {w: torch.randn(M, w, generator=gen).to(target.dtype) for w in {lin.in_features for lin in linears}}
        with torch.no_grad():
            ref = module(inputs)
            for v in variants:
                compile_s, same = None, True
                if v == "eager":
                    ms = best_ms(lambda: module(inputs), args.repeats)
                elif v == "aten":
                    with torch.backends.mkldnn.flags(enabled=False):
                        ms = best_ms(lambda: module(inputs), args.repeats)
                        same = all(torch.equal(a, b) for a, b in zip(module(inputs), ref))
                else:
                    import torch._inductor.config as inductor_config

                    torch._dynamo.reset()
                    inductor_config.freezing = True
                    compiled = torch.compile(module, mode="max-autotune-no-cudagraphs" if v == "compile-autotune" else None)
                    t0 = time.perf_counter()
                    out = compiled(inputs)
                    compile_s = time.perf_counter() - t0
                    same = all(torch.equal(a, b) for a, b in zip(out, ref))
                    ms = best_ms(lambda: compiled(inputs), args.repeats)
                    inductor_config.freezing = False
                rows.append({"rows": M, "variant": v, "ms": ms, "gb_s": weight_bytes / ms / 1e6,
                             "compile_s": compile_s, "bitwise_equal_eager": same})
                print(f"M={M} {v:17s} {ms:7.2f} ms ({weight_bytes / ms / 1e6:5.1f} GB/s)"
                      + (f", compile {compile_s:.0f} s" if compile_s else "") + f", equal to eager: {same}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"model": args.model, "dtype": args.dtype, "linears": len(linears), "weight_bytes": weight_bytes,
            "bandwidth": bandwidth, "threads": args.threads, "torch": torch.__version__,
            "machine": platform.machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    bound = weight_bytes / bandwidth * 1e3
    lines = [f"# The target's linear layers at decoding shapes: which kernel ({args.model}, {args.dtype})", "",
             "Made by `benchmarks/linear_kernels.py` (its docstring says what each variant is). Command:", "",
             f"    .venv/bin/python benchmarks/linear_kernels.py --rows {args.rows} --variants {args.variants} "
             f"--repeats {args.repeats} --threads {args.threads} --out {args.out}", "",
             f"{meta['date']}, {meta['machine']}, torch {meta['torch']}, {args.threads} threads. {len(linears)} linear "
             f"layers, {weight_bytes / 1e6:.0f} MB of weights; triad bandwidth {bandwidth / 1e9:.1f} GB/s in this run, "
             f"so reading them once takes at least {bound:.1f} ms.", "",
             "| M (tokens per step) | variant | ms per pass | GB/s | x eager | compile s | bits = eager |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        eager = next(x["ms"] for x in rows if x["rows"] == r["rows"] and x["variant"] == "eager") \
            if "eager" in variants else r["ms"]
        lines.append(f"| {r['rows']} | {r['variant']} | {r['ms']:.2f} | {r['gb_s']:.1f} | {eager / r['ms']:.2f}x | "
                     f"{'-' if r['compile_s'] is None else format(r['compile_s'], '.0f')} | "
                     f"{'yes' if r['bitwise_equal_eager'] else 'no'} |")
    (args.out / "report.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
