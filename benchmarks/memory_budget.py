"""Speculation under a memory budget (SpecMemo; draftsmith/policy/memory.py), measured with peak RSS.

For each drafter, budgets are chosen from the plan so that the longest question's context leaves
room for 0, 2, 8 and 32 draft nodes a step (and a run without a budget). Every run is its own
process: it loads the target and drafter, resets the peak resident size (/proc/self/clear_refs),
answers the questions, and reports the peak RSS above what it held once loaded (the step buffers
and caches the budget is about), beside the plan's estimate of the same, with τ, speed and whether
the output is the unbudgeted run's. Linux only (VmHWM).

    python benchmarks/memory_budget.py --questions ../shared/data/spec_bench/question.jsonl \
        --out benchmarks/smollm2-135m-bf16-memory-budget
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from draftsmith.bench.report import report_head

NODES = (0, 2, 8, 32)


def status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def worker(cfg: dict) -> dict:
    """One run in this process (the parent starts one process per run)."""
    import time

    import torch

    from draftsmith import SamplingParams, SpeculativeDecoder, load_target
    from draftsmith.drafters import build_drafter, parse_spec
    from draftsmith.policy.memory import plan

    torch.set_num_threads(cfg["threads"])
    rss_start = status("VmRSS")
    target = load_target(cfg["model"], dtype=cfg["dtype"])
    name, options = parse_spec(cfg["drafter"])
    prompts = [target.encode(q) for q in cfg["prompts"]]
    params = SamplingParams(max_new_tokens=cfg["max_new_tokens"])
    longest = max(len(p) for p in prompts) + cfg["max_new_tokens"]
    allowed = budget = None
    if cfg.get("nodes") is not None:  # the budget that leaves `nodes` draft nodes at the longest context
        probe = build_drafter(name, **options)
        probe.bind(target)
        p = plan(target, probe, 1 << 50)
        prefill = max(len(ids) for ids in prompts) * p.per_prefill  # the longest prompt prefilled at once
        budget = p.weights + longest * p.per_token + max((cfg["nodes"] + 1) * p.per_node, prefill)
        allowed = (budget - p.weights - longest * p.per_token) // p.per_node - 1  # what the prefill's room allows
    dec = SpeculativeDecoder(target, build_drafter(name, **options), memory_budget=budget)
    dec.generate(prompts[0], SamplingParams(max_new_tokens=4))  # warm-up (kernels, lazy tables)
    rss_loaded = status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts from here
    outs, t0 = [], time.perf_counter()
    steps = drafted = accepted = new = 0
    for ids in prompts:
        r = dec.generate(ids, params)
        outs.append(r.token_ids)
        s = r.stats
        steps, drafted, accepted, new = steps + s.steps, drafted + s.drafted, accepted + s.accepted, new + s.new_tokens
    seconds = time.perf_counter() - t0
    m = dec.memory
    return {"drafter": cfg["drafter"], "nodes_asked": cfg.get("nodes"), "nodes_allowed": allowed, "budget": budget,
            "plan": None if m is None else {"weights": m.weights, "per_token": m.per_token, "per_node": m.per_node,
                                            "per_prefill": m.per_prefill},
            "longest_context": longest, "rss_start": rss_start, "rss_loaded": rss_loaded, "peak": status("VmHWM"),
            "tau": new / max(steps, 1), "drafted": drafted, "accepted": accepted, "new_tokens": new,
            "tok_s": new / seconds, "outputs": outs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--questions", required=True)
    ap.add_argument("--categories", nargs="+", default=["summarization", "rag"])
    ap.add_argument("--per-category", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--drafter", action="append", help="drafter specs (default: ngram:k=32 and an EAGLE tree of 32)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    rows = [json.loads(line) for line in Path(args.questions).read_text().splitlines() if line.strip()]
    prompts = []
    for cat in args.categories:
        prompts += [r["turns"][0] for r in rows if r.get("category") == cat][: args.per_category]
    drafters = args.drafter or ["ngram:k=32", "eagle:k=6,tree_nodes=32,topk=4,beam=4"]
    results = []
    for drafter in drafters:
        for nodes in (None, *NODES):
            cfg = {"model": args.model, "dtype": args.dtype, "drafter": drafter, "nodes": nodes, "prompts": prompts,
                   "max_new_tokens": args.max_new_tokens, "threads": args.threads}
            out = subprocess.run([sys.executable, __file__, "--questions", args.questions, "--out", args.out,
                                  "--worker", json.dumps(cfg)], capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"{drafter} nodes={nodes}: {out.stderr[-2000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(r)
            print(f"{drafter:40s} nodes {str(nodes):>4s}: peak above loaded {(r['peak'] - r['rss_loaded']) / 2**20:6.1f} MiB"
                  f", τ {r['tau']:.2f}, {r['tok_s']:.1f} tok/s", flush=True)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [*report_head("Speculation under a memory budget (SpecMemo), peak RSS", "benchmarks/memory_budget.py",
                          f"{args.model} {args.dtype}, {len(prompts)} questions ({', '.join(args.categories)}), "
                          f"{args.max_new_tokens} new tokens, greedy, {args.threads} threads"),
             "Budget: weights + the longest context's KV + the larger of (nodes + 1) x the plan's bytes per draft "
             "node and the longest prompt's prefill (the same memory serves both, one after the other), so a "
             "step may draft up to 'allowed' nodes at the longest context (more at shorter ones). "
             "'planned above weights' is what the plan holds beyond the weights (KV of the longest context and "
             "the step's nodes); 'peak above loaded' is the measured peak RSS during the answers minus the RSS "
             "once the model, drafter and a warm-up were in memory (so it excludes the weights and the runtime).", "",
             "| drafter | nodes asked / allowed at the longest context | budget MiB | planned above weights MiB | peak above loaded MiB | "
             "peak RSS MiB | τ | tok/s | = unbudgeted |", "|---|---|---|---|---|---|---|---|---|"]
    for drafter in drafters:
        mine = [r for r in results if r["drafter"] == drafter]
        ref = next(r for r in mine if r["nodes_asked"] is None)
        for r in mine:
            budget = "-" if r["budget"] is None else f"{r['budget'] / 2**20:.1f}"
            planned = "-" if r["budget"] is None else f"{(r['budget'] - r['plan']['weights']) / 2**20:.1f}"
            same = sum(a == b for a, b in zip(r["outputs"], ref["outputs"]))
            asked = "no budget" if r["nodes_asked"] is None else f"{r['nodes_asked']} / {r['nodes_allowed']}"
            lines.append(f"| {drafter} | {asked} | {budget} | "
                         f"{planned} | {(r['peak'] - r['rss_loaded']) / 2**20:.1f} | {r['peak'] / 2**20:.0f} | "
                         f"{r['tau']:.2f} | {r['tok_s']:.1f} | {same}/{len(ref['outputs'])} |")
    plan = next((r["plan"] for r in results if r["plan"]), None)
    if plan:
        lines += ["", f"Plan: weights {plan['weights'] / 2**20:.1f} MiB, KV {plan['per_token'] / 1024:.1f} KiB a token, "
                      f"{plan['per_node'] / 1024:.0f} KiB a draft node, {plan['per_prefill'] / 1024:.1f} KiB a prompt token "
                      f"prefilled; longest context {results[0]['longest_context']} tokens. '= unbudgeted' is the "
                      "greedy output's equality with the unbudgeted run of the same drafter: in bf16 a different draft "
                      "length rounds the verification differently (use --exact for equality)."]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    (out_dir / "results.json").write_text(json.dumps([{k: v for k, v in r.items() if k != "outputs"} for r in results],
                                                     indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
