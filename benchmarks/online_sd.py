"""Online speculative decoding on a repeated-topic request stream (issue 21): does acceptance rise
as the draft model trains on what it serves, and does serving ever pause for it?

    .venv/bin/python benchmarks/online_sd.py --out benchmarks/smollm2-135m-bf16-online-sd

The stream: ShareGPT first turns on one topic (those mentioning `--topic`, from the
`--skip`-th instruction on: past every instruction the packaged drafter was trained on), in
file order, never a Spec-Bench question. Served as the server's engine serves them: a
BatchDecoder keeping `--concurrency` rows busy, a new request joining as soon as one finishes,
greedy, `--max-new-tokens`. Run twice on the same stream, same process: the packaged draft model
frozen (`draft_model`), then the same draft model under `online` (it trains in a background
thread on every finished request). Per request: the draft tokens accepted over drafted; per step:
wall time. Reported: acceptance over the stream in windows of `--window` requests, each
variant's step-time p50/p99/max (a pause for training would show in the max), and tok/s.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import draftsmith
from draftsmith import BatchDecoder, SamplingParams
from draftsmith.bench.serving import percentile
from draftsmith.data.sharegpt import sharegpt_instructions, sharegpt_path


def stream(topic: str, skip: int, n: int) -> list[str]:
    out = []
    for _, text in sharegpt_instructions(sharegpt_path(), skip=skip):
        if topic.lower() in text.lower() and len(text) < 1500:
            out.append(text)
            if len(out) == n:
                break
    return out


def serve(dec: BatchDecoder, prompts: list[list[int]], params: SamplingParams, concurrency: int) -> dict:
    """Keep `concurrency` rows busy over the prompts, in order. -> per-request stats, step times."""
    pending = list(range(len(prompts)))
    rows: dict[int, object] = {}
    steps: list[float] = []
    results: dict[int, dict] = {}
    t0 = time.perf_counter()
    while pending or dec.rows:
        while pending and len(dec.rows) < concurrency:
            i = pending.pop(0)
            rows[i] = dec.add(prompts[i], params)
        s = time.perf_counter()
        dec.step()
        steps.append(time.perf_counter() - s)
        for i, row in list(rows.items()):
            if row.done:
                st = row.result().stats
                results[i] = {"accepted": st.accepted, "drafted": st.drafted, "tokens": st.new_tokens, "steps": st.steps}
                del rows[i]
    wall = time.perf_counter() - t0
    return {"requests": [results[i] for i in range(len(prompts))], "steps": steps, "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--drafter", default="smollm2-135m-instruct-drafter")
    ap.add_argument("--topic", default="python")
    ap.add_argument("--skip", type=int, default=9000)
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--warmup", type=int, default=16)
    ap.add_argument("--steps-per-row", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/smollm2-135m-bf16-online-sd"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    target = draftsmith.load_target(args.model, dtype="bf16")
    texts = stream(args.topic, args.skip, args.requests)
    prompts = [target.encode(t) for t in texts]
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    dm = f"draft_model:model={args.drafter}"
    variants = {"frozen": dm,
                "online": f"online:drafter=[{dm}],lr={args.lr},steps_per_row={args.steps_per_row},warmup={args.warmup}"}
    runs = {}
    for name, spec in variants.items():
        dec = BatchDecoder(target, spec, smartspec=False)
        runs[name] = serve(dec, prompts, params, args.concurrency)
        learner = getattr(dec.drafter, "learner", None)
        if learner is not None:
            runs[name]["trainer"] = {"steps": learner.version, "published": learner.published, "rows": learner.rows_seen,
                                     "error": learner.error, "last_losses": list(learner.losses)[-5:]}
            learner.stop()
        r = runs[name]
        acc = sum(x["accepted"] for x in r["requests"]) / max(1, sum(x["drafted"] for x in r["requests"]))
        print(f"{name}: acceptance {acc:.3f}, {sum(x['tokens'] for x in r['requests']) / r['wall']:.1f} tok/s, "
              f"step max {max(r['steps']) * 1e3:.0f} ms", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"model": args.model, "drafter": args.drafter, "topic": args.topic, "skip": args.skip,
            "requests": len(prompts), "concurrency": args.concurrency, "max_new_tokens": args.max_new_tokens,
            "variants": variants, "threads": args.threads, "torch": torch.__version__, "machine": platform.machine(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    W = args.window

    def windows(r):
        out = []
        for s in range(0, len(r["requests"]), W):
            chunk = r["requests"][s : s + W]
            out.append(sum(x["accepted"] for x in chunk) / max(1, sum(x["drafted"] for x in chunk)))
        return out

    curves = {n: windows(r) for n, r in runs.items()}
    cmd = (f".venv/bin/python benchmarks/online_sd.py --topic {args.topic} --skip {args.skip} --requests {args.requests} "
           f"--concurrency {args.concurrency} --max-new-tokens {args.max_new_tokens} --lr {args.lr} "
           f"--steps-per-row {args.steps_per_row} --warmup {args.warmup} --threads {args.threads} --out {args.out}")
    lines = [f"# Online speculative decoding on a repeated-topic stream ({args.model}, bf16, greedy)", "",
             f"Made by `benchmarks/online_sd.py` (its docstring says how). Command:", "", f"    {cmd}", "",
             f"{meta['date']}, {meta['machine']}, torch {meta['torch']}, {args.threads} threads. {len(prompts)} ShareGPT "
             f"first turns mentioning {args.topic!r} (from instruction {args.skip} on), {args.concurrency} rows at "
             f"once, {args.max_new_tokens} new tokens. Draft model `{args.drafter}`.", "",
             f"## Acceptance (draft tokens accepted / drafted) per window of {W} requests, in stream order", "",
             "| requests | " + " | ".join(curves) + " |", "|---|" + "---|" * len(curves)]
    for i in range(len(curves["frozen"])):
        lines.append(f"| {i * W + 1}-{min((i + 1) * W, len(prompts))} | "
                     + " | ".join(f"{curves[n][i]:.3f}" for n in curves) + " |")
    lines += ["", "## Serving", "", "| variant | acceptance | tok/s | step p50 | step p99 | step max | trainer steps |",
              "|---|---|---|---|---|---|---|"]
    for n, r in runs.items():
        acc = sum(x["accepted"] for x in r["requests"]) / max(1, sum(x["drafted"] for x in r["requests"]))
        tps = sum(x["tokens"] for x in r["requests"]) / r["wall"]
        tr = r.get("trainer", {})
        lines.append(f"| {n} | {acc:.3f} | {tps:.1f} | {percentile(r['steps'], 0.5) * 1e3:.0f} ms | "
                     f"{percentile(r['steps'], 0.99) * 1e3:.0f} ms | {max(r['steps']) * 1e3:.0f} ms | {tr.get('steps', '-')} |")
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for n, c in curves.items():
            ax.plot([(i + 0.5) * W for i in range(len(c))], c, marker="o", label=n)
        ax.set_xlabel("request (stream order)")
        ax.set_ylabel(f"acceptance, windows of {W}")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(args.out / "acceptance.png", dpi=120)
        plt.close(fig)
    except ImportError:
        pass
    print(f"wrote {args.out}/report.md")


if __name__ == "__main__":
    main()
