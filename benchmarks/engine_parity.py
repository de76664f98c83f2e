"""Speed parity of two checkouts of draftsmith on the same prompts, methods interleaved.

Two worker processes, one per checkout (`--old SRC` and `--new SRC`, each a `src/` folder), load
the same target once and wait for commands; the driver sends every (method, prompt) pair to
both in turn, alternating which goes first, so the two versions see the same machine load.
Greedy, the default model in bf16; each (method, prompt) is generated once per round after a
warm-up. Writes a markdown report with tokens/s per method and the new/old ratio.

    .venv/bin/python benchmarks/engine_parity.py --old ../old/src --new src \
        --questions ../shared/data/spec_bench/question.jsonl --limit 8 --rounds 2 \
        --method none --method ngram --method "eagle:k=5,tree_nodes=16,topk=4,beam=4" \
        --method "draft_model:model=smollm2-135m-instruct-drafter" --out benchmarks/engine-parity
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def worker(src: str, model: str, dtype: str, threads: int) -> None:
    """Read `{"method": spec, "ids": [...], "max_new": n}` lines; answer `{"tokens", "seconds", "ids"}`."""
    sys.path.insert(0, str(Path(src).resolve()))
    import torch

    import draftsmith
    from draftsmith.drafters import build_drafter, parse_spec

    torch.set_num_threads(threads)
    target = draftsmith.load_target(model, dtype=dtype, progress=False)
    decoders: dict[str, object] = {}
    print(json.dumps({"ready": draftsmith.__file__}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["method"] not in decoders:
            name, options = parse_spec(cmd["method"])
            decoders[cmd["method"]] = draftsmith.SpeculativeDecoder(target, build_drafter(name, **options))
        dec = decoders[cmd["method"]]
        params = draftsmith.SamplingParams(max_new_tokens=cmd["max_new"])
        t0 = time.perf_counter()
        out = dec.generate(cmd["ids"], params, generator=torch.Generator().manual_seed(0))
        seconds = time.perf_counter() - t0
        print(json.dumps({"tokens": out.stats.new_tokens, "seconds": seconds, "ids": out.token_ids,
                          "tau": out.stats.tau}), flush=True)


class Worker:
    def __init__(self, src: str, args):
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", src, "--model", args.model, "--dtype",
                                      args.dtype, "--threads", str(args.threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.where = json.loads(self.proc.stdout.readline())["ready"]

    def run(self, method: str, ids: list[int], max_new: int) -> dict:
        self.proc.stdin.write(json.dumps({"method": method, "ids": ids, "max_new": max_new}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker")
    ap.add_argument("--old")
    ap.add_argument("--new")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--questions", default="../shared/data/spec_bench/question.jsonl")
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--method", action="append")
    ap.add_argument("--serve-method", help="also: old and new servers with this drafter under --clients clients")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.model, args.dtype, args.threads)

    sys.path.insert(0, str(Path(args.new).resolve()))
    import draftsmith
    from draftsmith.data.questions import load_questions

    target = draftsmith.load_target(args.model, dtype=args.dtype, progress=False)
    questions = load_questions(args.questions, None, 1, args.limit)
    prompts = [target.encode(q.turns[0]) for q in questions]
    methods = args.method or ["none", "ngram"]
    old, new = Worker(args.old, args), Worker(args.new, args)
    print(f"old: {old.where}\nnew: {new.where}", file=sys.stderr)
    for w in (old, new):  # warm-up
        for m in methods:
            w.run(m, prompts[0], 16)
    times = {(v, m): [] for v in ("old", "new") for m in methods}
    tokens = {(v, m): [] for v in ("old", "new") for m in methods}
    same = {m: 0 for m in methods}
    for r in range(args.rounds):
        for i, ids in enumerate(prompts):
            for j, m in enumerate(methods):
                order = [("old", old), ("new", new)] if (r + i + j) % 2 == 0 else [("new", new), ("old", old)]
                outs = {}
                for v, w in order:
                    outs[v] = w.run(m, ids, args.max_new_tokens)
                    times[v, m].append(outs[v]["seconds"])
                    tokens[v, m].append(outs[v]["tokens"])
                same[m] += outs["old"]["ids"] == outs["new"]["ids"]
                print(f"round {r} prompt {i} {m}: old {outs['old']['tokens'] / outs['old']['seconds']:.1f} tok/s, "
                      f"new {outs['new']['tokens'] / outs['new']['seconds']:.1f} tok/s", file=sys.stderr)
    old.close(), new.close()
    serving = serve_parity(args, questions) if args.serve_method else ""
    rows = ["| method | old tok/s | new tok/s | new / old | outputs identical |", "| --- | --- | --- | --- | --- |"]
    for m in methods:
        rate = {v: sum(tokens[v, m]) / sum(times[v, m]) for v in ("old", "new")}
        per = [o / n for o, n in zip(times["old", m], times["new", m])]  # per-pair speed ratio new/old
        rows.append(f"| `{m}` | {rate['old']:.2f} | {rate['new']:.2f} | {rate['new'] / rate['old']:.3f} "
                    f"(median pair {statistics.median(per):.3f}) | {same[m]}/{len(prompts) * args.rounds} |")
    table = "\n".join(rows) + serving
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(
            f"# Engine parity: old vs new checkout, {args.model} {args.dtype}, greedy, {args.max_new_tokens} new "
            f"tokens\n\n`{' '.join(sys.argv)}`\n\n{time.strftime('%Y-%m-%d %H:%M')}, {len(prompts)} prompts "
            f"(first turns of {Path(args.questions).name}), {args.rounds} rounds, {args.threads} threads; old and new "
            f"alternate per (prompt, method), order swapped each time.\n\n{table}\n")


def serve_parity(args, questions) -> str:
    """Old and new `draftsmith serve` with the same drafter, both up; rounds of `--clients`
    concurrent streaming clients against each in turn. Returns a markdown table."""
    import asyncio
    import os

    from draftsmith.bench.serving import _level, start_server, summarize

    prompts = [q.turns[0] for q in questions]
    servers = {}
    saved = os.environ.get("PYTHONPATH")
    for v, src in (("old", args.old), ("new", args.new)):
        os.environ["PYTHONPATH"] = str(Path(src).resolve())  # the server process imports this checkout
        servers[v] = start_server(args.model, args.serve_method, args.dtype, 16, args.threads)
    if saved is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = saved
    results = {"old": [], "new": []}
    try:
        for v in servers:  # warm-up
            asyncio.run(_level(servers[v][1], prompts, 1, 1, 8))
        for r in range(args.rounds):
            for v in (("old", "new") if r % 2 == 0 else ("new", "old")):
                level = asyncio.run(_level(servers[v][1], prompts, args.clients, 2 * args.clients,
                                           args.max_new_tokens, r * args.clients))
                results[v].append(summarize(level))
                print(f"serve round {r} {v}: {results[v][-1]}", file=sys.stderr)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
    keys = [k for k in results["old"][0] if isinstance(results["old"][0][k], (int, float))]
    out = [f"\n\nServer, `{args.serve_method}`, {args.clients} concurrent streaming clients, {args.rounds} rounds "
           "(mean over rounds):\n", "| | " + " | ".join(keys) + " |", "| --- |" + " --- |" * len(keys)]
    for v in ("old", "new"):
        out.append(f"| {v} | " + " | ".join(f"{statistics.mean(x[k] for x in results[v]):.4g}" for k in keys) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
