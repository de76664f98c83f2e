"""Is a greedy answer the same whatever else is in the batch? (issues 20 and 21, bf16)

The server's engine is a BatchDecoder stepping every admitted row together; this drives one the
way the server does, on the default model in bf16, for each of `none` and `ngram`, without and
with exact mode:

    alone       the prompt decoded alone (batch of one): the reference
    with 7      the prompt plus 7 other Spec-Bench prompts, added together
    late        the prompt added after the 7 others have run 8 steps (rows of other lengths)
    8 copies    the same prompt 8 times at once

and counts the answers equal to the reference, id for id, out of 8 (with 7: the prompt is each
of 8 prompts in turn; 8 copies: each copy).

    .venv/bin/python benchmarks/exact_determinism.py --out benchmarks/smollm2-135m-bf16-exact/determinism.md
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


def answers(dec: BatchDecoder, prompts: list, params: SamplingParams, late: int | None = None) -> list[list[int]]:
    """Decode prompts together; with `late`, the last prompt joins after `late` steps."""
    first = prompts if late is None else prompts[:-1]
    rows = [dec.add(p, params) for p in first]
    if late is not None:
        for _ in range(late):
            dec.step()
        rows.append(dec.add(prompts[-1], params))
    while dec.rows:
        dec.step()
    return [r.result().token_ids for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", default="../shared/data/spec_bench/question.jsonl")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--drafters", default="none,ngram",
                    help="drafter specs separated by commas, or by semicolons when a spec has options")
    ap.add_argument("--exact", choices=("both", "yes", "no"), default="both", help="which modes to run")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    target = draftsmith.load_target("smollm2-135m-instruct", dtype="bf16")
    by_cat: dict[str, list[str]] = {}
    for line in open(args.questions):
        q = json.loads(line)
        by_cat.setdefault(q["category"], []).append(q["turns"][0])
    prompts = [target.encode(v[0]) for v in list(by_cat.values())[:8]]
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    lines = ["# Greedy answers against batch composition (bf16)", "",
             f"`.venv/bin/python benchmarks/exact_determinism.py --drafters {args.drafters} --exact {args.exact} "
             f"--max-new-tokens {args.max_new_tokens} --threads {args.threads} --out {args.out}`", "",
             f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, torch threads {args.threads}, "
             f"SmolLM2-135M-Instruct bf16, {args.max_new_tokens} new tokens, 8 Spec-Bench prompts (first of 8 "
             "categories), BatchDecoder as the server's engine drives it (k_max 8, no SmartSpec).", "",
             "| drafter | exact | with 7 others | joining late | 8 copies at once | seconds |",
             "| --- | --- | --- | --- | --- | --- |"]
    modes = {"both": (False, True), "yes": (True,), "no": (False,)}[args.exact]
    for drafter in [d for d in args.drafters.split(";" if ";" in args.drafters else ",") if d]:
        for exact in modes:
            t0 = time.perf_counter()
            dec = BatchDecoder(target, drafter, exact=exact, smartspec=False)
            alone = [answers(dec, [p], params)[0] for p in prompts]
            together = answers(dec, prompts, params)
            with_7 = sum(a == b for a, b in zip(together, alone))
            late = 0
            for i in range(len(prompts)):  # prompt i joins last, after the others ran 8 steps
                order = [p for j, p in enumerate(prompts) if j != i] + [prompts[i]]
                late += answers(dec, order, params, late=8)[-1] == alone[i]
            copies = sum(a == alone[0] for a in answers(dec, [prompts[0]] * 8, params))
            row = f"| {drafter} | {'yes' if exact else 'no'} | {with_7}/8 | {late}/8 | {copies}/8 | " \
                  f"{time.perf_counter() - t0:.0f} |"
            print(row, flush=True)
            lines.append(row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
