"""Training rows for drafters: target rollouts (the target answers ShareGPT instructions with its
chat template; the drafter is distilled on those answers), or ShareGPT's own answers. The ShareGPT
readers are in draftsmith.data.sharegpt.

Rollouts are stored as token ids, one JSON line per prompt (`id`, `prompt_ids`,
`response_ids`, `finish`: "stop" at the target's EOS, "length" at the token budget); the target's
logits are not stored (the loss recomputes them). They are generated on the batched engine
(BatchDecoder, continuous refill, optionally speculative), one seeded generator per prompt. A
rollout file is resumable: prompts already in it are skipped. `sample_batch` (a plain sampling
loop over one fixed batch) serves DistillSpec's on-policy batches (train/pipeline.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from transformers import DynamicCache

from ..data.sharegpt import is_sharegpt, read_sharegpt, sharegpt_path, turns
from ..decode.rows import Row
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


def rollout_generator(seed: int, pid: str) -> torch.Generator:
    """The random numbers of one prompt's answer: seeded from the run's seed and the prompt id
    alone, so a record does not depend on which prompts shared its batch, nor on their order."""
    return torch.Generator().manual_seed(seed * 1_000_003 + hash_ids([pid]))


def generate_rollouts(target: CausalLM, instructions: list[tuple[str, str | list[int]]], out: str | Path, *,
                      temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 256,
                      max_prompt_tokens: int = 256, batch_size: int = 16, seed: int = 0,
                      drafter: str = "none", progress: bool = True) -> dict:
    """The target answers each instruction (chat template); appends to `out`, skipping ids it
    already holds. Prompts longer than `max_prompt_tokens` are skipped. An instruction given as
    token ids (a text prefix, `text_prefixes`) is continued as it is, with no chat template:
    FastDraft's text-completion data.

    Runs on the batched engine (BatchDecoder) with continuous refill: up to `batch_size` rows
    decode together, and the next prompt joins as soon as a row finishes, so no row idles until
    the slowest one of a batch ends. Each record is written (and flushed) when its row finishes.
    Each prompt samples with a generator of its own (`rollout_generator`), so its answer is the
    same whatever else shares the batch. `drafter` (a drafter spec, e.g. `ngram`) makes the
    generation speculative; lossless verification keeps the answers samples of the target."""
    from ..decode.api import BatchDecoder

    if batch_size < 1:
        raise DraftsmithError(f"batch_size must be >= 1, got {batch_size}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    have = done_ids(out)
    todo: list[tuple[str, list[int]]] = []
    seen, too_long = set(have), 0
    for pid, text in instructions:
        if pid in seen:  # in the file already (or a duplicate id: answered once)
            continue
        seen.add(pid)
        ids = list(text) if isinstance(text, list) else target.encode([{"role": "user", "content": text}])
        if len(ids) <= max_prompt_tokens and len(ids) < target.max_length:
            todo.append((pid, ids))
        else:
            too_long += 1
    decoder = BatchDecoder(target, drafter)
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc="rollouts", unit="prompt", disable=not progress)
    tokens, steps, drafted, accepted, start = 0, 0, 0, 0, time.perf_counter()
    if out.is_file() and out.stat().st_size and not out.read_bytes().endswith(b"\n"):
        with out.open("a") as f:  # a run killed mid-line: end the torn line so new records stay whole
            f.write("\n")
    queue = iter(todo)
    flight: dict[int, tuple[Row, str, list[int]]] = {}  # id(row) -> (row, prompt id, prompt ids)
    with out.open("a") as f:
        while True:
            while len(flight) < batch_size and (item := next(queue, None)) is not None:  # refill
                pid, ids = item
                room = replace(params, max_new_tokens=min(max_new_tokens, target.max_length - len(ids)))
                row = decoder.add(ids, room, rollout_generator(seed, pid))
                flight[id(row)] = (row, pid, ids)
            if not flight:
                break
            finished = 0
            for row, _ in decoder.step():
                if not row.done:
                    continue
                row, pid, ids = flight.pop(id(row))
                if row.error is not None:
                    raise DraftsmithError(f"rollout of prompt {pid!r} failed: {row.error}")
                response = row.new_ids
                f.write(json.dumps({"id": pid, "prompt_ids": ids, "response_ids": response,
                                    "finish": row.stats.finish_reason}) + "\n")
                tokens, steps, finished = tokens + len(response), steps + row.stats.steps, finished + 1
                drafted, accepted = drafted + row.stats.drafted, accepted + row.stats.accepted
            if finished:
                f.flush()
                bar.update(finished)
                bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - start):.0f}")
    bar.close()
    seconds = time.perf_counter() - start
    return {"prompts": len(todo), "skipped_done": len(have), "skipped_long": too_long, "tokens": tokens, "seconds": seconds,
            "tok_s": tokens / seconds if seconds > 0 else 0.0, "drafter": drafter,
            "tau": tokens / steps if steps else 0.0,  # tokens per row step, bonus included
            "drafted": drafted, "accepted": accepted}


def text_prefixes(target: CausalLM, texts, *, prefix_tokens: int = 64, skip: int = 0):
    """(id, token ids) of the first `prefix_tokens` tokens of each text (plain, no chat template),
    for the target to continue (FastDraft's text-completion data); texts no longer than that are
    skipped. Ids are `text-<skip + i>` (i counts the texts), so a rerun skips the prefixes its file
    already holds."""
    if target.tokenizer is None:
        raise DraftsmithError("text prefixes need the target's tokenizer")
    if prefix_tokens < 1:
        raise DraftsmithError(f"prefix_tokens must be >= 1, got {prefix_tokens}")
    for i, text in enumerate(texts):
        tokens = target.tokenizer.encode(text, add_special_tokens=False)
        if len(tokens) > prefix_tokens:
            yield f"text-{skip + i}", tokens[:prefix_tokens]


def hash_ids(ids: list[str]) -> int:
    """A stable (not salted, unlike hash()) 31-bit seed from prompt ids."""
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
