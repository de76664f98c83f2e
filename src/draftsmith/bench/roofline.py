"""The memory roofline of a target step, in the benchmark's own run.

At batch 1 a decoding step must read every weight of the target once and the KV cache of its
context once; on a machine that moves B bytes/s nothing does a step faster than

    bound = (weight bytes + KV bytes per token x context) / B

B is measured in the same run (a STREAM-style triad, a = b + s * c over arrays far larger than
the caches, with the run's torch threads), so the bound moves with the machine's day. For each
method the report puts the mean step time beside it, split into the target's verification
forward (`target_time`), the drafter (`drafter_time`: propose and observe) and the rest of the
step (verification rule, commit, the loop's Python), per step in ms and as a share:
forward / bound says how far the engine's forward is from the hardware, and the other shares
what speculation itself costs on top.
"""

from __future__ import annotations

import time

import torch

from ..target import CausalLM


def triad_bandwidth(device: torch.device | str = "cpu", mib: int = 128, repeats: int = 5) -> float:
    """Bytes per second of a = b + s * c over three fp32 arrays of `mib` MiB each (best of `repeats`;
    each pass reads b and c and writes a: 3 x mib MiB moved)."""
    n = mib * (1 << 20) // 4
    b = torch.full((n,), 1.0, device=device)
    c = torch.full((n,), 2.0, device=device)
    a = torch.empty_like(b)
    best = float("inf")
    for _ in range(repeats + 1):  # the first pass warms the pages up
        if a.device.type == "cuda":
            torch.cuda.synchronize(a.device)
        t0 = time.perf_counter()
        torch.add(b, c, alpha=3.0, out=a)
        if a.device.type == "cuda":
            torch.cuda.synchronize(a.device)
        best = min(best, time.perf_counter() - t0)
    return 3 * n * 4 / best


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters, a tied embedding / LM head counted once."""
    from ..policy.memory import tensor_bytes

    return tensor_bytes(model.parameters(), set())


def kv_bytes_per_token(target: CausalLM) -> int:
    """Bytes of keys and values one context token holds over every layer."""
    from ..policy.memory import kv_bytes_per_token as per_token

    return per_token(target.config, target.dtype)


def machine(target: CausalLM) -> dict:
    """What the bound needs, measured now: bandwidth (bytes/s), weight bytes, KV bytes per token."""
    return {"bandwidth": triad_bandwidth(target.device), "weight_bytes": weight_bytes(target.model),
            "kv_bytes_per_token": kv_bytes_per_token(target)}


def rows(records: list[dict], m: dict) -> list[dict]:
    """Per method (records of the loop only; Hugging Face rows have no steps): ms per step of the
    whole step, the target's forward, the drafter and the rest, and the bound at each record's mean
    context (prompt + half the answer)."""
    by: dict[str, list[dict]] = {}
    for r in records:
        if r.get("steps") and r.get("target_time") is not None:
            by.setdefault(r["method"], []).append(r)
    out = []
    for method, rs in by.items():
        steps = sum(r["steps"] for r in rs)
        step = sum(r["wall_time"] - (r.get("prefill_time") or 0.0) for r in rs) / steps
        forward = sum(r["target_time"] for r in rs) / steps
        drafter = sum(r["drafter_time"] or 0.0 for r in rs) / steps
        bound = sum(r["steps"] * (m["weight_bytes"] + m["kv_bytes_per_token"] * (r["prompt_tokens"] + r["new_tokens"] / 2))
                    for r in rs) / steps / m["bandwidth"]
        out.append({"method": method, "step_ms": 1e3 * step, "forward_ms": 1e3 * forward, "drafter_ms": 1e3 * drafter,
                    "other_ms": 1e3 * (step - forward - drafter), "bound_ms": 1e3 * bound,
                    "forward_over_bound": forward / bound if bound > 0 else None,
                    "not_forward_share": (step - forward) / step if step > 0 else None})
    return out


def markdown(table: list[dict], m: dict) -> str:
    head = (f"Roofline: triad bandwidth {m['bandwidth'] / 1e9:.1f} GB/s (measured in this run), weights "
            f"{m['weight_bytes'] / 2**20:.0f} MiB, KV {m['kv_bytes_per_token'] / 1024:.1f} KiB per context token; "
            "bound = (weights + KV x mean context) / bandwidth.\n\n")
    lines = ["| method | step ms | forward ms | bound ms | forward / bound | drafter ms | other ms | not forward |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in table:
        ratio = "-" if r["forward_over_bound"] is None else f"{r['forward_over_bound']:.1f}x"
        share = "-" if r["not_forward_share"] is None else f"{100 * r['not_forward_share']:.0f}%"
        lines.append(f"| {r['method'].replace('|', '/')} | {r['step_ms']:.1f} | {r['forward_ms']:.1f} | {r['bound_ms']:.2f} | "
                     f"{ratio} | {r['drafter_ms']:.1f} | {r['other_ms']:.1f} | {share} |")
    return head + "\n".join(lines) + "\n"
