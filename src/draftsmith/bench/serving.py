"""Serving benchmark: throughput and latency of `draftsmith serve` under concurrent clients.

One server process per method is started on 127.0.0.1, one after the other (same model, same
flags but the drafter), and all stay up; an idle server uses no CPU. For each concurrency c and
each of `rounds` rounds, every method in turn (in reversed order on odd rounds, so drift in the
machine's speed hits all methods alike) gets c clients sending streamed chat requests (the first
turns of the questions, in order, continuing round after round, greedy, fixed max_tokens) until `requests_per_client * c` are
done. Per request: time to first token (TTFT) and time per output token after it (TPOT); per
method and level: output tokens/s over the rounds' summed wall time, and p50/p99 of TTFT and
TPOT over all its requests."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from ..errors import DraftsmithError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, drafter: str, dtype: str, max_batch: int, threads: int | None) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "draftsmith.cli", "serve", "--model", model, "--served-name", "m", "--dtype", dtype,
           "--drafter", drafter, "--port", str(port), "--max-batch", str(max_batch)]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while True:
        try:
            if httpx.get(f"{base}/v1/models", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise DraftsmithError(f"server for {drafter} did not start: {proc.stdout.read()[-1500:]}")
        time.sleep(0.5)


async def _one(client: httpx.AsyncClient, base: str, prompt: str, max_tokens: int) -> dict:
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    first = last = None
    usage = None
    async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise DraftsmithError(f"server answered {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if data.get("usage"):
                usage = data["usage"]
            if data["choices"] and data["choices"][0]["delta"].get("content"):
                last = time.perf_counter()
                first = first or last
    tokens = usage["completion_tokens"] if usage else 0
    end = time.perf_counter()
    return {"ttft": (first or end) - t0, "tpot": ((last or end) - (first or end)) / max(tokens - 1, 1),
            "tokens": tokens, "latency": end - t0, "steps": usage["speculative"]["steps"] if usage else None}


async def _level(base: str, prompts: list[str], concurrency: int, n_requests: int, max_tokens: int,
                 start: int = 0) -> dict:
    queue = list(range(start, start + n_requests))
    results: list[dict] = []

    async def client_loop(client):
        while queue:
            i = queue.pop(0)
            results.append(await _one(client, base, prompts[i % len(prompts)], max_tokens))

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "requests": len(results), "wall": wall,
            "tokens": sum(r["tokens"] for r in results), "per_request": results}


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else float("nan")


def summarize(level: dict) -> dict:
    rs = level["per_request"]
    return {"concurrency": level["concurrency"], "requests": level["requests"],
            "tokens_per_s": level["tokens"] / level["wall"],
            "ttft_p50": _pct([r["ttft"] for r in rs], 0.5), "ttft_p99": _pct([r["ttft"] for r in rs], 0.99),
            "tpot_p50": _pct([r["tpot"] for r in rs], 0.5), "tpot_p99": _pct([r["tpot"] for r in rs], 0.99)}


def run_serving_bench(model: str, methods: list[str], prompts: list[str], concurrencies: list[int], *,
                      max_tokens: int = 64, requests_per_client: int = 2, rounds: int = 1, dtype: str = "bf16",
                      max_batch: int = 16, threads: int | None = None, progress=print) -> list[dict]:
    servers: dict[str, tuple[subprocess.Popen, str]] = {}
    try:
        for method in methods:
            servers[method] = start_server(model, method, dtype, max_batch, threads)
            asyncio.run(_level(servers[method][1], prompts, 1, 1, min(8, max_tokens)))  # warm-up
        rows = []
        for c in concurrencies:
            levels: dict[str, list[dict]] = {m: [] for m in methods}
            for r in range(rounds):
                n = max(2, requests_per_client * c)
                for method in (methods if r % 2 == 0 else methods[::-1]):  # round r: the same prompts for all
                    levels[method].append(asyncio.run(_level(servers[method][1], prompts, c, n, max_tokens, r * n)))
            for method in methods:
                done = levels[method]
                merged = {"concurrency": c, "requests": sum(lv["requests"] for lv in done),
                          "wall": sum(lv["wall"] for lv in done), "tokens": sum(lv["tokens"] for lv in done),
                          "per_request": [q for lv in done for q in lv["per_request"]]}
                row = {"method": method, **summarize(merged)}
                rows.append(row)
                progress(f"{method:12} c={c:<3} {row['tokens_per_s']:7.1f} tok/s  TTFT p50 {row['ttft_p50']:.2f}s  "
                         f"TPOT p50 {1000 * row['tpot_p50']:.0f} ms")
        return sorted(rows, key=lambda row: methods.index(row["method"]))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def write_report(rows: list[dict], out: Path, command: str, header: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    base = {r["concurrency"]: r["tokens_per_s"] for r in rows if r["method"] == "none"}
    lines = [f"# {header}", "", f"`{command}`", "",
             "| method | clients | requests | tok/s | vs none | TTFT p50 | TTFT p99 | TPOT p50 | TPOT p99 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["tokens_per_s"] / base[r["concurrency"]] if r["concurrency"] in base else float("nan")
        lines.append(f"| {r['method']} | {r['concurrency']} | {r['requests']} | {r['tokens_per_s']:.1f} | {ratio:.2f}x | "
                     f"{r['ttft_p50']:.2f} s | {r['ttft_p99']:.2f} s | {1000 * r['tpot_p50']:.0f} ms | {1000 * r['tpot_p99']:.0f} ms |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for m in dict.fromkeys(r["method"] for r in rows):
            pts = [(r["concurrency"], r["tokens_per_s"]) for r in rows if r["method"] == m]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("output tokens/s")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "throughput.png", dpi=120)
        plt.close(fig)
    except ImportError:
        pass
