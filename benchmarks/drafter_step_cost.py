"""What one drafted token costs against one target step, as the decoding loop runs them: a
one-token forward with a KV cache over a `--context`-token prompt (CausalLM.forward), bf16, 2
threads, median of `--repeats`. The target; then each draft model given, with its whole LM head
and over its stored draft vocabulary (`draft_model`'s default when it has one). Prints a table and
writes it to OUT/step_cost.md.

    .venv/bin/python benchmarks/drafter_step_cost.py runs/train/kd-fkl --out benchmarks/smollm2-135m-drafter-cost
"""

import argparse
import platform
import statistics
import time
from datetime import datetime
from pathlib import Path

import torch

from draftsmith import load_target
from draftsmith.drafters.heads.vocab import SubsetLMHead, load_vocab
from draftsmith.models import resolve_model
from draftsmith.target import load_causal_lm

parser = argparse.ArgumentParser()
parser.add_argument("drafters", nargs="+", help="draft model folders or pack names")
parser.add_argument("--model", default="smollm2-135m-instruct")
parser.add_argument("--context", type=int, default=200)
parser.add_argument("--repeats", type=int, default=50)
parser.add_argument("--out", required=True)
args = parser.parse_args()
torch.set_num_threads(2)
prompt = torch.randint(0, 1000, (args.context,), generator=torch.Generator().manual_seed(0)).tolist()


def one_token_ms(lm) -> float:
    """Median time of a one-token forward after the prompt; the cache is cropped back each time."""
    lm.reset()
    lm.forward(prompt, last_only=True)
    times = []
    for i in range(args.repeats + 5):
        t0 = time.perf_counter()
        lm.forward([prompt[i % len(prompt)]], last_only=True)
        times.append(time.perf_counter() - t0)
        lm.crop(len(prompt))
    return statistics.median(times[5:]) * 1e3


target = load_target(args.model, dtype="bfloat16", progress=False)
t_ms = one_token_ms(target)
rows = [("target " + args.model, sum(p.numel() for p in target.model.parameters()), t_ms)]
for name in args.drafters:
    lm = load_causal_lm(name, dtype="bfloat16", progress=False)
    params = sum(p.numel() for p in lm.model.parameters())
    rows.append((f"{name}, whole LM head", params, one_token_ms(lm)))
    ids = load_vocab(resolve_model(name, progress=False), None)
    if ids is not None:
        lm.model.set_output_embeddings(SubsetLMHead(lm.model.get_output_embeddings(), ids))
        rows.append((f"{name}, {len(ids)}-token draft vocabulary", params, one_token_ms(lm)))

lines = [f"One-token forward with a KV cache over {args.context} tokens, bf16, {torch.get_num_threads()} threads, "
         f"median of {args.repeats}; {platform.processor() or platform.machine()}, torch {torch.__version__}, "
         f"{datetime.now():%Y-%m-%d}.", "", "| model | parameters | ms | of a target step |", "|---|---|---|---|"]
lines += [f"| {n} | {p / 1e6:.1f}M | {ms:.2f} | {ms / t_ms:.3f} |" for n, p, ms in rows]
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
(out / "step_cost.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
