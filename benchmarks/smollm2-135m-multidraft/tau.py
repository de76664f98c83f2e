"""τ at temperature 1 of the multi-draft rules against single-draft rejection sampling, same
target, same drafter, same prompts, same seeds (a short run: CPU, few prompts).

    .venv/bin/python benchmarks/smollm2-135m-multidraft/tau.py [PROMPTS] [NEW_TOKENS] [SEEDS]
"""

import json
import sys
import time

import torch

from draftsmith import SamplingParams, SpeculativeDecoder, build_drafter, load_target

N_PROMPTS = int(sys.argv[1]) if len(sys.argv) > 1 else 4
NEW = int(sys.argv[2]) if len(sys.argv) > 2 else 64
SEEDS = int(sys.argv[3]) if len(sys.argv) > 3 else 1
D = "smollm2-135m-instruct-drafter"
METHODS = [  # (label, drafter spec, verifier)
    ("single draft, rejection", f"draft_model:model={D},k=4,adaptive=false,confidence=0", "rejection"),
    ("3 i.i.d. drafts, spectr", f"multi:model={D},branches=3,replacement=true,k=4", "spectr"),
    ("3 drafts w/o replacement, recursive", f"multi:model={D},branches=3,replacement=false,k=4", "recursive"),
]

torch.set_num_threads(1)
target = load_target("smollm2-135m-instruct", dtype="bfloat16")
questions = [json.loads(line) for line in open("/work/shared/data/spec_bench/question.jsonl")]
seen, prompts = set(), []
for q in questions:  # the first question of each category, in file order
    if q["category"] not in seen:
        seen.add(q["category"])
        prompts.append((q["category"], q["turns"][0]))
prompts = prompts[:N_PROMPTS]
params = SamplingParams(temperature=1.0, max_new_tokens=NEW, ignore_eos=True)
rows = []
for label, spec, verifier in METHODS:
    dec = SpeculativeDecoder(target, build_drafter(spec), verifier=verifier)
    new = steps = acc = drafted = 0
    t0 = time.time()
    for cat, text in prompts:
        for seed in range(SEEDS):
            out = dec.generate(text, params, torch.Generator().manual_seed(seed))
            new, steps = new + out.stats.new_tokens, steps + out.stats.steps
            acc, drafted = acc + out.stats.accepted, drafted + out.stats.drafted
    rows.append({"method": label, "drafter": spec, "verifier": verifier, "tau": round(new / steps, 3),
                 "accepted_per_step": round(acc / steps, 3), "drafted_per_step": round(drafted / steps, 2),
                 "new_tokens": new, "steps": steps, "wall_s": round(time.time() - t0, 1)})
    print(json.dumps(rows[-1]), flush=True)
print(json.dumps({"prompts": [c for c, _ in prompts], "new_tokens": NEW, "seeds": SEEDS}))
