"""Serving benchmark: throughput and latency of `draftsmith serve` under concurrent clients.

One server process per method is started on 127.0.0.1, one after the other (same model, same
flags but the drafter), and all stay up; an idle server uses no CPU. For each concurrency c and
each of `rounds` rounds, every method in turn (in reversed order on odd rounds, so drift in the
machine's speed hits all methods alike) gets c clients sending streamed chat requests (the first
turns of the questions, in order, continuing round after round, greedy, fixed max_tokens) until `requests_per_client * c` are
done. Per request: time to first token (TTFT) and time per output token after it (TPOT); per
method and level: output tokens/s over the rounds' summed wall time, and p50/p99 of TTFT and
TPOT over all its requests.

Every request ends one way, counted per method and level: answered (200 and a finished stream),
refused (a 4xx/5xx status, e.g. 429 when the queue is full), failed (the connection broke or the
stream ended without its final chunk) or hung (no answer within `request_timeout`). Nothing is
retried and a failure never stops the benchmark; the report says how many of each.

The long-prompt probe (`long_prompt`, at the levels in `long_prompt_at`): the same level is run
once more with one extra request whose prompt has about `long_prompt` tokens, sent when half of
the level's requests have started (mid-run). Reported: the other requests' TTFT p99 in that pass
against the plain pass (the cost a long prefill puts on everyone else; the server prefills it in
chunks, `serve --prefill-chunk`), and the long request's own TTFT."""

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


def start_server(model: str, drafter: str, dtype: str, max_batch: int, threads: int | None,
                 request_timeout: float = 600.0) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "draftsmith.cli", "serve", "--model", model, "--served-name", "m", "--dtype", dtype,
           "--drafter", drafter, "--port", str(port), "--max-batch", str(max_batch),
           "--request-timeout", str(request_timeout)]
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


OUTCOMES = ("answered", "refused", "failed", "hung")


async def _one(client: httpx.AsyncClient, base: str, prompt: str, max_tokens: int, timeout: float = 600.0) -> dict:
    """One streamed chat request -> its timings and how it ended (`outcome`, one of OUTCOMES)."""
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first = last = None
    usage = None
    outcome, detail, finished = "answered", "", False

    async def read() -> None:
        nonlocal first, last, usage, outcome, detail, finished
        async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                outcome, detail = "refused", f"{r.status_code} {(await r.aread())[:200]!r}"
                return
            async for line in r.aiter_lines():
                if line == "data: [DONE]":
                    finished = True
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if data.get("error"):
                    outcome, detail = "failed", str(data["error"])[:200]
                if data.get("usage"):
                    usage = data["usage"]
                if data.get("choices") and data["choices"][0]["delta"].get("content"):
                    last = time.perf_counter()
                    first = first or last

    try:
        await asyncio.wait_for(read(), timeout)
        if outcome == "answered" and not finished:
            outcome, detail = "failed", "the stream ended without [DONE]"
    except asyncio.TimeoutError:
        outcome, detail = "hung", f"no answer in {timeout:.0f} s"
    except (httpx.HTTPError, json.JSONDecodeError, KeyError, IndexError) as e:
        outcome, detail = "failed", f"{type(e).__name__}: {e}"[:200]
    tokens = usage["completion_tokens"] if usage else 0
    end = time.perf_counter()
    return {"ttft": (first or end) - t0, "tpot": ((last or end) - (first or end)) / max(tokens - 1, 1),
            "tokens": tokens, "prompt_tokens": usage["prompt_tokens"] if usage else None, "latency": end - t0,
            "steps": (usage.get("speculative") or {}).get("steps") if usage else None,
            "outcome": outcome, "detail": detail}


async def _level(base: str, prompts: list[str], concurrency: int, n_requests: int, max_tokens: int,
                 start: int = 0, *, long_prompt: str | None = None, timeout: float = 600.0) -> dict:
    """`concurrency` clients share `n_requests` requests; with `long_prompt`, one more request
    carrying it is sent when half of them have started (its result is `long`, not in `per_request`)."""
    queue = list(range(start, start + n_requests))
    results: list[dict] = []
    started = 0
    half = asyncio.Event()
    long_result: list[dict] = []

    async def client_loop(client):
        nonlocal started
        while queue:
            i = queue.pop(0)
            started += 1
            if started >= max(1, n_requests // 2):
                half.set()
            results.append(await _one(client, base, prompts[i % len(prompts)], max_tokens, timeout))

    async def long_request(client):
        await half.wait()
        long_result.append(await _one(client, base, long_prompt, max_tokens, timeout))

    t0 = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency + 2)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout + 30.0), limits=limits) as client:
        tasks = [client_loop(client) for _ in range(concurrency)]
        if long_prompt is not None:
            tasks.append(long_request(client))
        await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "requests": len(results), "wall": wall,
            "tokens": sum(r["tokens"] for r in results), "per_request": results,
            "long": long_result[0] if long_result else None}


def long_prompt_text(prompts: list[str], tokens: int, tokenizer=None) -> str:
    """A prompt of about `tokens` tokens: an instruction, then the given prompts repeated as a
    document. Counted with `tokenizer` when given (else 4 characters a token); the server's
    `usage.prompt_tokens` reports the exact count."""
    head = "Read the following notes, then answer the last question in them in one sentence.\n\n"
    parts, n = [head], 0
    count = (lambda t: len(tokenizer(t, add_special_tokens=False)["input_ids"])) if tokenizer else (lambda t: len(t) // 4)
    n = count(head)
    i = 0
    while n < tokens:
        piece = prompts[i % len(prompts)].strip() + "\n\n"
        parts.append(piece)
        n += count(piece)
        i += 1
    return "".join(parts)


def percentile(values: list[float], q: float) -> float:
    """The value at quantile q of `values` (nearest rank; NaN when empty)."""
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else float("nan")


def summarize(level: dict) -> dict:
    rs = level["per_request"]
    ok = [r for r in rs if r["outcome"] == "answered"]
    return {"concurrency": level["concurrency"], "requests": level["requests"],
            "tokens_per_s": level["tokens"] / level["wall"],
            "ttft_p50": percentile([r["ttft"] for r in ok], 0.5), "ttft_p99": percentile([r["ttft"] for r in ok], 0.99),
            "tpot_p50": percentile([r["tpot"] for r in ok], 0.5), "tpot_p99": percentile([r["tpot"] for r in ok], 0.99),
            **{o: sum(r["outcome"] == o for r in rs) for o in OUTCOMES},
            "problems": sorted({f"{r['outcome']}: {r['detail']}" for r in rs if r["outcome"] != "answered"})[:5]}


def run_serving_bench(model: str, methods: list[str], prompts: list[str], concurrencies: list[int], *,
                      max_tokens: int = 64, requests_per_client: int = 2, rounds: int = 1, dtype: str = "bf16",
                      max_batch: int = 16, threads: int | None = None, long_prompt: str | None = None,
                      long_prompt_at: list[int] | None = None, request_timeout: float = 600.0,
                      progress=print) -> list[dict]:
    """One row per method and level (see the module docstring); with `long_prompt`, rows of the
    levels in `long_prompt_at` (default: every level) carry the probe's `long_*` fields."""
    servers: dict[str, tuple[subprocess.Popen, str]] = {}
    probe_levels = set(concurrencies if long_prompt_at is None else long_prompt_at) if long_prompt else set()
    try:
        for method in methods:
            servers[method] = start_server(model, method, dtype, max_batch, threads, request_timeout)
            asyncio.run(_level(servers[method][1], prompts, 1, 1, min(8, max_tokens), timeout=request_timeout))  # warm-up
        rows = []
        for c in concurrencies:
            levels: dict[str, list[dict]] = {m: [] for m in methods}
            probes: dict[str, list[dict]] = {m: [] for m in methods}
            for r in range(rounds):
                n = max(2, requests_per_client * c)
                for method in (methods if r % 2 == 0 else methods[::-1]):  # round r: the same prompts for all
                    base = servers[method][1]
                    levels[method].append(asyncio.run(_level(base, prompts, c, n, max_tokens, r * n, timeout=request_timeout)))
                    if c in probe_levels:
                        probes[method].append(asyncio.run(_level(base, prompts, c, n, max_tokens, r * n,
                                                                 long_prompt=long_prompt, timeout=request_timeout)))
            for method in methods:
                row = {"method": method, **summarize(_merge(c, levels[method]))}
                if probes[method]:
                    with_long = summarize(_merge(c, probes[method]))
                    longs = [lv["long"] for lv in probes[method] if lv["long"] is not None]
                    row.update({"long_ttft_p99": with_long["ttft_p99"], "long_ttft_ratio": with_long["ttft_p99"] / row["ttft_p99"],
                                "long_own_ttft": max(x["ttft"] for x in longs),
                                "long_prompt_tokens": longs[0]["prompt_tokens"],
                                **{f"long_{o}": with_long[o] + sum(x["outcome"] == o for x in longs) for o in OUTCOMES}})
                    row["problems"] = sorted(set(row["problems"]) | set(with_long["problems"])
                                             | {f"{x['outcome']}: {x['detail']}" for x in longs if x["outcome"] != "answered"})[:5]
                rows.append(row)
                lost = sum(row[o] for o in OUTCOMES[1:])
                progress(f"{method:12} c={c:<3} {row['tokens_per_s']:7.1f} tok/s  TTFT p50 {row['ttft_p50']:.2f}s  "
                         f"TPOT p50 {1000 * row['tpot_p50']:.0f} ms" + (f"  not answered {lost}" if lost else "")
                         + (f"  TTFT p99 with the long prompt {row['long_ttft_ratio']:.2f}x" if "long_ttft_ratio" in row else ""))
        return sorted(rows, key=lambda row: methods.index(row["method"]))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _merge(c: int, done: list[dict]) -> dict:
    """Rounds of one level as one: summed requests, wall time and tokens; every request."""
    return {"concurrency": c, "requests": sum(lv["requests"] for lv in done), "wall": sum(lv["wall"] for lv in done),
            "tokens": sum(lv["tokens"] for lv in done), "per_request": [q for lv in done for q in lv["per_request"]]}


def write_report(rows: list[dict], out: Path, command: str, header: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    base = {r["concurrency"]: r["tokens_per_s"] for r in rows if r["method"] == "none"}
    lines = [f"# {header}", "", f"`{command}`", "",
             "| method | clients | requests | answered | refused / failed / hung | tok/s | vs none | TTFT p50 | TTFT p99 | TPOT p50 | TPOT p99 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["tokens_per_s"] / base[r["concurrency"]] if r["concurrency"] in base else float("nan")
        lines.append(f"| {r['method']} | {r['concurrency']} | {r['requests']} | {r.get('answered', r['requests'])} | "
                     f"{r.get('refused', 0)} / {r.get('failed', 0)} / {r.get('hung', 0)} | {r['tokens_per_s']:.1f} | {ratio:.2f}x | "
                     f"{r['ttft_p50']:.2f} s | {r['ttft_p99']:.2f} s | {1000 * r['tpot_p50']:.0f} ms | {1000 * r['tpot_p99']:.0f} ms |")
    probed = [r for r in rows if "long_ttft_ratio" in r]
    if probed:
        lines += ["", f"## One long prompt ({probed[0]['long_prompt_tokens']} tokens) arriving mid-run", "",
                  "The same level again with one more request, sent when half of the level's requests had started. "
                  "TTFT p99 of the other requests with it against without it, and the long request's own TTFT.", "",
                  "| method | clients | TTFT p99 without | TTFT p99 with | ratio | long request's TTFT | not answered |",
                  "|---|---|---|---|---|---|---|"]
        for r in probed:
            lost = sum(r[f"long_{o}"] for o in OUTCOMES[1:])
            lines.append(f"| {r['method']} | {r['concurrency']} | {r['ttft_p99']:.2f} s | {r['long_ttft_p99']:.2f} s | "
                         f"{r['long_ttft_ratio']:.2f}x | {r['long_own_ttft']:.2f} s | {lost} |")
    problems = sorted({p for r in rows for p in r.get("problems", [])})
    if problems:
        lines += ["", "## Requests not answered (first of each kind)", "", *[f"- {p}" for p in problems[:20]]]
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
