"""Real-model check of early_exit (issue 19) on the default model with the shipped adapter: fp32 greedy
equality with plain decoding (2 prompts, 48 tokens, the default exit and DEL), then bf16 tau,
acceptance, drafter share and speedup against `none`, interleaved in one process (3 prompts, 64
tokens). Usage: OMP_NUM_THREADS=1 python benchmarks/early_exit_check.py [ADAPTER_FOLDER] > log"""
import json, sys, time, torch
torch.set_num_threads(1)
from draftsmith import load_target, build_drafter, SpeculativeDecoder, SamplingParams
adapter = sys.argv[1] if len(sys.argv) > 1 else None
PROMPTS = ["Explain why the sky is blue in three sentences.",
           "Write a short Python function that returns the n-th Fibonacci number.",
           "Give me three tips for learning a new language."]
opts = {"adapter": adapter} if adapter else {}
out = {}
t = load_target("smollm2-135m-instruct", dtype="float32", progress=False)
for p in PROMPTS[:2]:
    ref = SpeculativeDecoder(t, build_drafter("none")).generate(p, SamplingParams(max_new_tokens=48)).token_ids
    for spec in ({}, {"exit_layer": "dynamic"}):
        r = SpeculativeDecoder(t, build_drafter("early_exit", **opts, **spec)).generate(p, SamplingParams(max_new_tokens=48))
        print("fp32", spec, "equal:", r.token_ids == ref, "tau", round(r.stats.tau, 3), flush=True)
        out.setdefault("fp32_equal", []).append(r.token_ids == ref)
t = load_target("smollm2-135m-instruct", dtype="bfloat16", progress=False)
configs = {"none": ("none", {}), "early_exit": ("early_exit", opts),
           "early_exit-dynamic": ("early_exit", {**opts, "exit_layer": "dynamic"}),
           "early_exit-predictor": ("early_exit", {**opts, "predictor": True, "confidence": 0.2}),
           "early_exit-adaptive": ("early_exit", {**opts, "adaptive": True})}
rows = {}
for p in PROMPTS:
    for name, (d, o) in configs.items():  # interleaved, same process: the load on this shared machine hits all alike
        dec = SpeculativeDecoder(t, build_drafter(d, **o))
        r = dec.generate(p, SamplingParams(max_new_tokens=64))
        s = r.stats
        rows.setdefault(name, []).append((s.new_tokens, s.steps, s.wall_time, s.drafter_time, s.drafted, s.accepted))
        print(name, "tau", round(s.tau, 3), "tok/s", round(s.tokens_per_second, 2), "drafted", s.drafted, "accepted", s.accepted,
              "drafter share", round(s.drafter_share, 3), flush=True)
summary = {}
for name, rs in rows.items():
    tok, steps, wall, dt, drafted, acc = (sum(x[i] for x in rs) for i in range(6))
    summary[name] = {"tau": round(tok / steps, 3), "tokens_per_s": round(tok / wall, 2), "drafter_share": round(dt / wall, 3),
                     "acceptance_rate": round(acc / max(drafted, 1), 3)}
base = summary["none"]["tokens_per_s"]
for name in summary:
    summary[name]["speedup"] = round(summary[name]["tokens_per_s"] / base, 3)
out["bf16"] = summary
print(json.dumps(out, indent=1))
