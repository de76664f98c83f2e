"""What GSD's merging saves (issue 20, graph-structured drafts): on the default model, greedy, bf16,
the `gsd` drafter with merging off (merge=0: the draft model's plain dynamic tree) and on
(merge=3, 2), the same prompts, interleaved per prompt with `none`. Reported per setting: τ, the
draft nodes fed to the draft model per step, the nodes merged per step, tokens/s over `none`, and
whether the output equals `none`'s.

    python benchmarks/gsd_merge.py --per-category 1 --max-new-tokens 96 --out benchmarks/smollm2-135m-bf16-gsd
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
from pathlib import Path

import torch

from draftsmith import SamplingParams, SpeculativeDecoder, build_drafter, load_target
from draftsmith.data.questions import load_questions


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", default="../shared/data/spec_bench/question.jsonl")
    ap.add_argument("--per-category", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--merges", default="0,3,2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tree", default="", help="more gsd options, e.g. confidence=0,beam=4,topk=4,max_nodes=32")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    target = load_target("smollm2-135m-instruct", dtype="bfloat16")
    qs = load_questions(args.questions, per_category=args.per_category)
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    merges = [int(m) for m in args.merges.split(",")]
    decoders = {"none": SpeculativeDecoder(target, "none")}
    drafters = {}
    for m in merges:
        drafters[m] = build_drafter(f"gsd:model=smollm2-135m-instruct-drafter,merge={m}" + (f",{args.tree}" if args.tree else ""))
        decoders[m] = SpeculativeDecoder(target, drafters[m])
    for dec in decoders.values():  # warm-up
        dec.generate(target.encode("List the planets of the solar system."), SamplingParams(max_new_tokens=8))
    before = {m: (d.fed, d.merged) for m, d in drafters.items()}
    rows = {k: {"tokens": 0, "time": 0.0, "steps": 0, "equal": 0} for k in decoders}
    for q in qs:
        ids = target.encode(q.turns[0])
        ref = None
        for key, dec in decoders.items():
            out = dec.generate(ids, params)
            ref = out.token_ids if key == "none" else ref
            r = rows[key]
            r["tokens"] += len(out.token_ids)
            r["time"] += out.stats.wall_time
            r["steps"] += out.stats.steps
            r["equal"] += int(out.token_ids == ref)
    base = rows["none"]["tokens"] / rows["none"]["time"]
    lines = [f"# GSD merging on smollm2-135m-instruct (bf16, greedy, {args.max_new_tokens} tokens)", "",
             f"`python benchmarks/gsd_merge.py --per-category {args.per_category} --max-new-tokens "
             f"{args.max_new_tokens} --merges {args.merges} --threads {args.threads}"
             + (f" --tree {args.tree}" if args.tree else "") + f" --out {args.out}`", "",
             f"{dt.datetime.now().isoformat(timespec='minutes')}, {platform.machine()}, torch threads {args.threads}, "
             f"{len(qs)} Spec-Bench first turns ({args.questions}), each method interleaved per prompt with none.", "",
             "| method | τ | fed / step | merged / step | tok/s | x none | = none |", "| --- | --- | --- | --- | --- | --- | --- |"]
    result = {}
    for key, r in rows.items():
        tps = r["tokens"] / r["time"]
        fed = merged = 0.0
        if key != "none":
            d = drafters[key]
            fed = (d.fed - before[key][0]) / r["steps"]
            merged = (d.merged - before[key][1]) / r["steps"]
        label = "none" if key == "none" else f"gsd merge={key}"
        tau = r["tokens"] / r["steps"]
        lines.append(f"| {label} | {tau:.2f} | {fed:.2f} | {merged:.2f} | {tps:.1f} | {tps / base:.2f}x | "
                     f"{r['equal']}/{len(qs)} |")
        result[label] = {**r, "tau": tau, "fed_per_step": fed, "merged_per_step": merged, "tok_s": tps}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "README.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
