"""Training rows for drafters: target rollouts (the target answers ShareGPT instructions with its
chat template; the drafter is distilled on those answers), or ShareGPT's own answers. The ShareGPT
readers are in draftsmith.data.sharegpt.

Rollouts are stored as token ids, one JSON line per prompt (`id`, `prompt_ids`,
`response_ids`, `finish`); the target's logits are not stored (the loss recomputes them). A
rollout file is resumable: prompts already in it are skipped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from transformers import DynamicCache

from ..data.sharegpt import is_sharegpt, read_sharegpt, sharegpt_path, turns
from ..errors import DraftsmithError
from ..sampling import probs, sample
from ..target import CausalLM
from ..types import SamplingParams


# ----- target rollouts ------------------------------------------------------------------
def done_ids(out: Path) -> set[str]:
    """Prompt ids already in a rollout file (a torn last line is ignored)."""
    ids: set[str] = set()
    if out.is_file():
        for line in out.read_text().splitlines():
            try:
                ids.add(json.loads(line)["id"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return ids


@torch.inference_mode()
def sample_batch(target: CausalLM, prompts: list[list[int]], params: SamplingParams,
                 generator: torch.Generator, pad_id: int) -> list[tuple[list[int], str]]:
    """Sample answers to several prompts at once: left-padded prompts, one shared KV cache,
    positions counted per row from its first real token. Returns (response ids, finish)."""
    B, longest = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, longest), pad_id, dtype=torch.long)
    mask = torch.zeros((B, longest), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, longest - len(p):] = torch.tensor(p)
        mask[row, longest - len(p):] = 1
    device = target.model.device
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, T]
    cache = DynamicCache(config=target.config)
    eos = target.eos_token_ids
    out: list[list[int]] = [[] for _ in prompts]
    finish = ["length"] * B
    live = torch.ones(B, dtype=torch.bool)
    step_ids = ids
    for _ in range(params.max_new_tokens):
        logits = target.model(input_ids=step_ids, attention_mask=mask, position_ids=positions,
                              past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]  # [B, V]
        tokens = sample(probs(logits, params), generator)  # [B]
        drawn = tokens.tolist()
        for row in torch.nonzero(live).flatten().tolist():
            t = drawn[row]
            out[row].append(t)
            if t in eos:
                live[row], finish[row] = False, "stop"
        if not live.any():
            break
        step_ids = tokens.unsqueeze(-1)  # [B, 1]
        mask = torch.cat([mask, torch.ones((B, 1), dtype=torch.long, device=device)], dim=-1)
        positions = positions[:, -1:] + 1
    return list(zip(out, finish))


def generate_rollouts(target: CausalLM, instructions: list[tuple[str, str]], out: str | Path, *,
                      temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 256,
                      max_prompt_tokens: int = 256, batch_size: int = 16, seed: int = 0,
                      progress: bool = True) -> dict:
    """The target answers each instruction (chat template); appends to `out`, skipping ids it
    already holds. Prompts longer than `max_prompt_tokens` are skipped."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    have = done_ids(out)
    todo = []
    for pid, text in instructions:
        if pid in have:
            continue
        ids = target.encode([{"role": "user", "content": text}])
        if len(ids) <= max_prompt_tokens:
            todo.append((pid, ids))
    # similar lengths share a batch (less padding), sorted within windows so that a run stopped
    # early still holds prompts of every length
    window = batch_size * 8
    todo = [item for w in range(0, len(todo), window) for item in sorted(todo[w:w + window], key=lambda it: len(it[1]))]
    pad_id = target.tokenizer.pad_token_id if target.tokenizer is not None and target.tokenizer.pad_token_id is not None else 0
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc="rollouts", unit="prompt", disable=not progress)
    tokens, start = 0, time.perf_counter()
    if out.is_file() and out.stat().st_size and not out.read_bytes().endswith(b"\n"):
        with out.open("a") as f:  # a run killed mid-line: end the torn line so new records stay whole
            f.write("\n")
    with out.open("a") as f:
        for b in range(0, len(todo), batch_size):
            batch = todo[b:b + batch_size]
            generator = torch.Generator().manual_seed(seed * 1_000_003 + hash_ids([pid for pid, _ in batch]))
            answers = sample_batch(target, [ids for _, ids in batch], params, generator, pad_id)
            for (pid, ids), (response, finish) in zip(batch, answers):
                f.write(json.dumps({"id": pid, "prompt_ids": ids, "response_ids": response, "finish": finish}) + "\n")
                tokens += len(response)
            f.flush()
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - start):.0f}")
    bar.close()
    return {"prompts": len(todo), "skipped_done": len(have), "tokens": tokens,
            "seconds": time.perf_counter() - start}


def hash_ids(ids: list[str]) -> int:
    """A stable (not salted, unlike hash()) 31-bit seed from a batch's prompt ids."""
    import zlib

    return zlib.crc32("\0".join(ids).encode()) & 0x7FFFFFFF


def read_rollouts(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise DraftsmithError(f"rollout file not found: {path} (make it with `draftsmith train data`)")
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("response_ids"):
            rows.append(row)
    return rows


# ----- training rows: rollouts, or ShareGPT's own answers ------------------------------------
def training_rows(target: CausalLM, data: str, *, limit: int | None = None, max_prompt_tokens: int = 256) -> list[dict]:
    """Rows with `prompt_ids` and `response_ids` from `data`: a rollouts JSONL file (the target's
    own answers), or ShareGPT (`sharegpt` for the packaged file, or a ShareGPT .json path)."""
    if is_sharegpt(data):
        return sharegpt_answers(target, None if data == "sharegpt" else data, limit=limit,
                                max_prompt_tokens=max_prompt_tokens)
    return read_rollouts(data)[:limit]


def sharegpt_answers(target: CausalLM, path: str | Path | None = None, *, limit: int | None = None,
                     max_prompt_tokens: int = 256) -> list[dict]:
    """ShareGPT first turns as rows: the question in the target's chat template (`prompt_ids`),
    then ShareGPT's answer as the template closes an assistant turn (`response_ids`). The fixed
    data of EAGLE and Medusa: the tokens are ShareGPT's, the labels a loss takes from the target."""
    if target.tokenizer is None or not target.has_chat_template:
        raise DraftsmithError(f"{target.name}: ShareGPT training data needs the target's tokenizer and chat template")
    rows = []
    for i, record in enumerate(read_sharegpt(sharegpt_path(path))):
        conv = turns(record)
        if len(conv) < 2 or conv[0][0] != "human" or conv[1][0] != "gpt":
            continue
        (_, user), (_, answer) = conv[:2]
        if not user.strip() or not answer.strip():
            continue
        prompt = target.encode([{"role": "user", "content": user}])
        if len(prompt) > max_prompt_tokens:
            continue
        whole = target.tokenizer.apply_chat_template([{"role": "user", "content": user},
                                                      {"role": "assistant", "content": answer}], tokenize=True)
        whole = list(whole["input_ids"] if hasattr(whole, "keys") else whole)
        if whole[: len(prompt)] != prompt:  # a template that renders earlier turns differently: unusable
            continue
        rows.append({"id": str(record.get("id", i)), "prompt_ids": prompt, "response_ids": whole[len(prompt):]})
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise DraftsmithError(f"{path or 'sharegpt'}: no usable ShareGPT first turns (a human turn, then a gpt turn)")
    return rows
