"""The multi-request run of issue 19: the same questions answered twice in one run, as agentic and
repeated workloads do, so that drafters with cross-request state (`suffix`'s global suffix
structure, `hierarchy`'s session database) can draft the second pass from the first.

Each method is ONE decoder (`draftsmith.SpeculativeDecoder`, one drafter bound once: what a
server keeps between requests) that answers every question (both turns; turn 2 continues from the
`none` answer, as in `draftsmith bench`) in pass 1, then all of them again in pass 2, interleaved
per question with `none` (draftsmith.bench.runner.run_bench with repeats=2). The warm-up runs on
separate decoders with an unrelated prompt, so nothing from the questions is cached before pass 1.

Reported per method (overall and per category): speedup over `none` in each pass, τ in each
pass, and the second pass over the first: `pass 2 / pass 1` (its speedup over none in pass 2
divided by the same in pass 1: the gain from what pass 1 left behind, with the machine's drift
cancelled by none in the same pass) and the raw tokens/s ratio.

    python benchmarks/suffix_repeat.py --per-category 2 --max-new-tokens 128 --out runs/suffix-repeat
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import torch

from draftsmith import SamplingParams, SpeculativeDecoder, load_target
from draftsmith.bench import report
from draftsmith.bench.runner import MethodSpec, run_bench
from draftsmith.data.questions import load_questions
from draftsmith.drafters import REGISTRY

WARM_PROMPT = "List the planets of the solar system in order."  # not a Spec-Bench question


def passes(records: list[dict]) -> list[list[dict]]:
    return [[r for r in records if r["repeat"] == k] for k in sorted({r["repeat"] for r in records})]


def comparison(rows1: list[dict], rows2: list[dict]) -> list[dict]:
    by2 = {(r["method"], r["category"]): r for r in rows2}
    out = []
    for a in rows1:
        b = by2.get((a["method"], a["category"]))
        if b is None:
            continue
        out.append({"method": a["method"], "category": a["category"], "speedup1": a["speedup"], "speedup2": b["speedup"],
                    "gain": b["speedup"] / a["speedup"], "tps_ratio": b["tokens_per_s"] / a["tokens_per_s"],
                    "tau1": a["tau"], "tau2": b["tau"], "identical1": f"{a['identical']}/{a['turns']}",
                    "identical2": f"{b['identical']}/{b['turns']}"})
    return out


def comparison_markdown(rows: list[dict]) -> str:
    f = lambda v, s=".2f": "-" if v is None else format(v, s)  # noqa: E731
    lines = ["| method | category | speedup pass 1 | speedup pass 2 | pass 2 / pass 1 | tok/s 2 / 1 | τ pass 1 | τ pass 2 "
             "| = none (1, 2) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['category']} | {f(r['speedup1'])}x | {f(r['speedup2'])}x | "
                     f"**{f(r['gain'])}x** | {f(r['tps_ratio'])}x | {f(r['tau1'])} | {f(r['tau2'])} | "
                     f"{r['identical1']}, {r['identical2']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--questions", default="../shared/data/spec_bench/question.jsonl")
    ap.add_argument("--categories", nargs="*", default=None)
    ap.add_argument("--per-category", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--method", action="append", default=None,
                    help="a drafter spec, repeatable (default: none, ngram, suffix); none is always first")
    ap.add_argument("--out", required=True, help="folder for report.md and records.jsonl")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    specs = [MethodSpec.parse(m) for m in (args.method or ["none", "ngram", "suffix"])]
    questions = load_questions(args.questions, args.categories, args.per_category)
    target = load_target(args.model, dtype=args.dtype, device=args.device)
    params = SamplingParams(temperature=args.temperature, max_new_tokens=args.max_new_tokens)

    warm = SamplingParams(temperature=args.temperature, max_new_tokens=16)
    for s in specs:  # kernels and lazy state warmed on throw-away decoders: the measured ones start empty
        if s.name not in REGISTRY:
            continue
        SpeculativeDecoder(target, s.name, **s.options).generate(WARM_PROMPT, warm,
                                                                 generator=torch.Generator().manual_seed(0))

    t0 = time.perf_counter()
    done = [0]

    def progress(n, total):
        done[0] += n
        print(f"\r{done[0]}/{total} generations, {time.perf_counter() - t0:.0f} s", end="", file=sys.stderr, flush=True)

    records = run_bench(target, questions, specs, params, repeats=2, warmup=0, progress=progress)
    print(file=sys.stderr)
    first, second = passes(records)
    rows1, rows2 = report.summarize(first), report.summarize(second)
    table = comparison(rows1, rows2)

    mode = "greedy" if params.greedy else f"T={params.temperature}"
    title = (f"{args.model} ({args.dtype}, {args.device}, {mode}, {params.max_new_tokens} new tokens), "
             f"{len(questions)} questions from {Path(args.questions).name}, each answered twice by one decoder per method")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "records.jsonl", "w") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    command = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    machine = f"{platform.machine()}, {args.device}, torch threads {torch.get_num_threads()}"
    (out / "report.md").write_text(
        f"# {title}\n\n`{command}`\n\n{dt.datetime.now().isoformat(timespec='seconds')}, {machine}\n\n"
        "Pass 2 asks the same questions again, to the same decoders. `pass 2 / pass 1`: the method's speedup over "
        "`none` in pass 2 over the same in pass 1; `tok/s 2 / 1`: its raw tokens/s ratio.\n\n"
        f"{comparison_markdown(table)}\n\n## Pass 1\n\n{report.markdown(rows1)}\n\n## Pass 2\n\n{report.markdown(rows2)}\n")
    print(comparison_markdown([r for r in table if r["category"] == report.ALL]))
    print(f"report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
