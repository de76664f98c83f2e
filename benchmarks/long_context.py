"""Speculative decoding on long prompts (4k-8k tokens): where drafters with caches that grow with the
context (a draft model re-reading it, an EAGLE head's own cache) pay more each step, and where a
drafter trained on short sequences meets distances it never saw (LongSpec's case, issue 22).

Prompts, built here from data this project has (none trained on), each in the chat template:
- `summarization`, `rag`: Spec-Bench development questions of that category, one after the other
  until the prompt reaches the length asked, then an instruction about the last one (the
  benchmark's own long-input categories, made longer);
- `sharegpt`: a long ShareGPT conversation (past the first 10,000, which the heads never saw),
  its turns kept from the end until the length asked, ending with a user turn; left out when none
  comes within 60% of it (the packaged conversations are short: the longest fit past the first
  10,000 is about 2.2k tokens).

Each method answers every prompt greedily in one process (the target loaded once); reported per
prompt: decode speed (new tokens over the time after the prefill), its ratio to plain decoding on
the same prompt, τ, the drafter's share of the time, and whether the output equals plain decoding.

    python benchmarks/long_context.py --questions ../shared/data/spec_bench/question.jsonl \
        --out benchmarks/smollm2-135m-bf16-long-context
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from draftsmith.bench.report import report_head

DEFAULT_METHODS = ["none", "ngram", "eagle:k=4", "glide:k=4", "longspec:k=4",
                   "draft_model:model=smollm2-135m-instruct-drafter,k=4"]


def build_prompts(target, questions: str, lengths: list[int], skip: int) -> list[tuple[str, list[int]]]:
    """(name, ids) per (source, length)."""
    from draftsmith.data.sharegpt import read_sharegpt, sharegpt_path, turns

    rows = [json.loads(line) for line in Path(questions).read_text().splitlines() if line.strip()]
    out = []
    for cat, ask in (("summarization", "Summarize the last article above in three sentences."),
                     ("rag", "Answer the last question above from the passages given with it.")):
        texts = [r["turns"][0] for r in rows if r.get("category") == cat]
        for n in lengths:
            parts: list[str] = []
            for text in texts:
                if parts and len(target.encode("\n\n".join(parts + [text, ask]))) > n:
                    break
                parts.append(text)
            ids = target.encode("\n\n".join(parts + [ask]))
            out.append((f"{cat}-{round(len(ids) / 1000)}k", ids))
    convs = []  # the long ones (characters: 4 to 5 a token)
    for i, record in enumerate(read_sharegpt(sharegpt_path())):
        conv = [(s, t) for s, t in turns(record) if s in ("human", "gpt") and t.strip()]
        while conv and conv[-1][0] != "human":
            conv = conv[:-1]
        if i >= skip and len(conv) >= 3 and sum(len(t) for _, t in conv) > 2.5 * min(lengths):
            convs.append(conv)
    for n in lengths:  # the conversation whose newest turns come closest to n tokens
        best: list[int] = []
        for conv in convs:
            kept: list[dict] = []
            for speaker, text in reversed(conv):
                message = {"role": "user" if speaker == "human" else "assistant", "content": text}
                if kept and len(target.encode([message] + kept)) > n:
                    break
                kept.insert(0, message)
            while kept and kept[0]["role"] != "user":
                kept = kept[1:]
            ids = target.encode(kept) if kept else []
            if len(best) < len(ids) <= n:
                best = ids
        if len(best) >= 0.6 * n:  # the packaged conversations are short: none may come close
            out.append((f"sharegpt-{round(len(best) / 1000)}k", best))
        else:
            print(f"no ShareGPT conversation (past the first {skip}) reaches {0.6 * n:.0f} of {n} tokens: its longest "
                  f"fit is {len(best)} tokens; left out", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--questions", required=True)
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 8000], help="prompt lengths in tokens (at most)")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--method", action="append", help=f"drafter specs (default: {' '.join(DEFAULT_METHODS)})")
    ap.add_argument("--sharegpt-skip", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import torch

    from draftsmith import SamplingParams, SpeculativeDecoder, load_target
    from draftsmith.errors import DraftsmithError

    torch.set_num_threads(args.threads)
    target = load_target(args.model, dtype=args.dtype)
    prompts = build_prompts(target, args.questions, args.lengths, args.sharegpt_skip)
    methods = args.method or DEFAULT_METHODS
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    log = (out_dir / "records.jsonl").open("w")  # each record as it is made: a later failure loses nothing
    for spec in methods:
        try:
            dec = SpeculativeDecoder(target, spec)
        except DraftsmithError as e:
            print(f"{spec}: not run: {e}", flush=True)
            continue
        dec.generate(prompts[0][1][:64], SamplingParams(max_new_tokens=8))  # warm-up
        for name, ids in prompts:
            t0 = time.perf_counter()
            r = dec.generate(ids, params)
            s = r.stats
            decode = max(s.wall_time - s.prefill_time, 1e-9)
            rec = {"method": spec, "prompt": name, "prompt_tokens": len(ids), "new_tokens": s.new_tokens,
                   "decode_tok_s": s.new_tokens / decode, "tau": s.tau, "drafter_share": s.drafter_time / decode,
                   "prefill_s": s.prefill_time, "wall_s": time.perf_counter() - t0, "token_ids": r.token_ids}
            records.append(rec)
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(f"{spec:24s} {name:18s} {len(ids):5d} tokens: {rec['decode_tok_s']:6.1f} tok/s, τ {s.tau:.2f}, "
                  f"drafter {rec['drafter_share']:.0%}, prefill {s.prefill_time:.1f} s", flush=True)
    log.close()
    plain = {r["prompt"]: r for r in records if r["method"] == "none"}
    lines = [*report_head("Long prompts (4k-8k tokens): decode speed, τ and the drafter's share",
                          "benchmarks/long_context.py",
                          f"{args.model} {args.dtype}, greedy, {args.max_new_tokens} new tokens, {args.threads} threads"),
             "Decode speed: new tokens over the time after the prefill (each method prefills the same prompt); "
             "speedup: against plain decoding on the same prompt, same run. '= none': the output equals plain "
             "decoding token for token (bf16: a near-tie can flip).", "",
             "| method | prompt | prompt tokens | decode tok/s | speedup | τ | drafter share | = none |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        ref = plain.get(r["prompt"])
        speed = f"{r['decode_tok_s'] / ref['decode_tok_s']:.2f}x" if ref else "-"
        same = "-" if ref is None else ("yes" if r["token_ids"] == ref["token_ids"] else "no")
        lines.append(f"| {r['method']} | {r['prompt']} | {r['prompt_tokens']} | {r['decode_tok_s']:.1f} | {speed} | "
                     f"{r['tau']:.2f} | {r['drafter_share']:.0%} | {same} |")
    lines += ["", "Mean over prompts:", "", "| method | speedup | τ | drafter share | = none |", "|---|---|---|---|---|"]
    for spec in methods:
        mine = [r for r in records if r["method"] == spec]
        ratios = [r["decode_tok_s"] / plain[r["prompt"]]["decode_tok_s"] for r in mine if r["prompt"] in plain]
        same = sum(r["token_ids"] == plain[r["prompt"]]["token_ids"] for r in mine if r["prompt"] in plain)
        lines.append(f"| {spec} | {sum(ratios) / max(len(ratios), 1):.2f}x | {sum(r['tau'] for r in mine) / len(mine):.2f} | "
                     f"{sum(r['drafter_share'] for r in mine) / len(mine):.0%} | {same}/{len(mine)} |")
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
