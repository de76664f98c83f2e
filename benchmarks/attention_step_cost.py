"""Forward time of a verification step (B rows x w new tokens over a cached context, 4-D mask,
bf16) with transformers' own `sdpa` attention and with draftsmith's packed-GQA attention
(attention.py), same model, same run, interleaved; median of `--repeats` after a warm-up.

    .venv/bin/python benchmarks/attention_step_cost.py --out benchmarks/smollm2-135m-bf16-attention
"""

import argparse
import json
import platform
import sys
import time
from datetime import datetime
from pathlib import Path

import torch
from transformers import DynamicCache

from draftsmith import load_target
from draftsmith.attention import stock_attention

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="smollm2-135m-instruct")
parser.add_argument("--context", type=int, default=300)
parser.add_argument("--repeats", type=int, default=5)
parser.add_argument("--out", required=True)
args = parser.parse_args()
torch.set_num_threads(2)
target = load_target(args.model, dtype="bfloat16", progress=False)
model = target.model


def median_ms(B: int, w: int, cache: DynamicCache) -> float:
    mask = torch.zeros(B, 1, w, args.context + w, dtype=target.dtype)
    mask[..., args.context:] = torch.triu(torch.full((w, w), torch.finfo(target.dtype).min, dtype=target.dtype), 1)
    ids = torch.randint(0, 1000, (B, w), generator=torch.Generator().manual_seed(0))
    times = []
    with torch.inference_mode():
        for _ in range(args.repeats + 1):
            t0 = time.perf_counter()
            model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True)
            times.append(time.perf_counter() - t0)
            cache.crop(-w)
    return 1000 * sorted(times[1:])[args.repeats // 2]


rows = []
for B in (1, 4, 16):
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=torch.randint(0, 1000, (B, args.context), generator=torch.Generator().manual_seed(1)),
              past_key_values=cache, use_cache=True, logits_to_keep=1)
    for w in (1, 2, 5, 9):
        with stock_attention(model):
            stock = median_ms(B, w, cache)
        packed = median_ms(B, w, cache)
        rows.append({"rows": B, "width": w, "sdpa_ms": round(stock, 1), "packed_gqa_ms": round(packed, 1)})
        print(rows[-1], flush=True)

out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
(out / "results.json").write_text(json.dumps(rows, indent=1))
lines = [f"# verification forward time, {args.model}, bf16, {args.context}-token context",
         "", f"`python {' '.join(sys.argv)}`", "",
         f"{datetime.now().isoformat(timespec='seconds')}, {platform.machine()}, torch threads {torch.get_num_threads()}",
         "", "| rows × width | transformers sdpa | packed GQA (draftsmith) |", "|---|---|---|"]
lines += [f"| {r['rows']} × {r['width']} | {r['sdpa_ms']} ms | {r['packed_gqa_ms']} ms |" for r in rows]
(out / "report.md").write_text("\n".join(lines) + "\n")
