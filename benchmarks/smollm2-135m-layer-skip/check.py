"""layer_skip (SWIFT) on the default model: greedy equality with plain decoding, tau, speedup and
what the skip-set search found, per prompt. One decoder per method serves the prompts in order
(so `reuse=1` searches on the first prompt only).

    PYTHONPATH=. OMP_NUM_THREADS=2 python benchmarks/smollm2-135m-layer-skip/check.py DTYPE NEW N SPEC [SPEC ...]

DTYPE float32|bfloat16, NEW new tokens, N prompts (the first question of the first N MT-Bench
categories). Prints one JSON line per (prompt, method); `none` is timed right before the methods
on each prompt."""
import json
import sys

import torch

import draftsmith
from draftsmith import SamplingParams, SpeculativeDecoder, build_drafter
from draftsmith.data.questions import load_questions

dtype, new, n, specs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
target = draftsmith.load_target("smollm2-135m-instruct", dtype=dtype, progress=False)
questions = load_questions("mtbench", per_category=1)[:n]
params = SamplingParams(max_new_tokens=new)
plain = SpeculativeDecoder(target, "none")
plain.generate("warm up", SamplingParams(max_new_tokens=4))
decoders, rows = {}, {}
for spec in specs:
    d = build_drafter(spec)
    rows[spec] = []
    fork = d.fork
    d.fork = lambda fork=fork, spec=spec: rows[spec].append(fork()) or rows[spec][-1]
    decoders[spec] = SpeculativeDecoder(target, d)
print(json.dumps({"threads": torch.get_num_threads(), "dtype": dtype, "new": new}))
for q in questions:
    ref = plain.generate(q.turns[0], params)
    print(json.dumps({"category": q.category, "spec": "none", "tok_s": round(ref.stats.new_tokens / ref.stats.wall_time, 2)}),
          flush=True)
    for spec in specs:
        out = decoders[spec].generate(q.turns[0], params)
        r, s = rows[spec][-1], out.stats
        print(json.dumps({
            "category": q.category, "spec": spec, "equal": out.token_ids == ref.token_ids, "tau": round(s.tau, 3),
            "steps": s.steps, "drafted": s.drafted, "accepted": s.accepted,
            "tok_s": round(s.new_tokens / s.wall_time, 2), "speedup": round(ref.stats.wall_time / s.wall_time, 3),
            "drafter_share": round(s.drafter_time / s.wall_time, 3), "skipped": list(r.skipped or ()),
            "search_score": round(r.search.score, 3) if r.search else None,
            "search_s": round(r.search.seconds, 2) if r.search else None}), flush=True)
