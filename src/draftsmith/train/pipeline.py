"""The drafter-alignment recipe (Goel et al. 2024) as stages, each writing a Hugging Face folder:

1. pretrain  a new drafter (drafter_model.py) on chat-formatted ShareGPT conversations,
2. data      the target answers ShareGPT instructions (data.py),
3. distill   the drafter on those answers with a distillation loss (losses.py), optionally with
             DistillSpec on-policy batches and AdaSPEC token selection (trainer.py).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import DraftsmithError
from ..target import CausalLM, load_causal_lm
from .batches import Batch, pack_texts, packed_batch, rollout_batch
from .data import _turns, is_sharegpt, read_sharegpt, sample_batch, sharegpt_path, training_rows
from .drafter_model import new_drafter
from .trainer import TrainConfig, train


def chat_documents(target: CausalLM, path: str | Path, *, skip: int = 0):
    """ShareGPT conversations in the target's chat template, as token ids."""
    roles = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant", "assistant": "assistant"}
    for i, record in enumerate(read_sharegpt(path)):
        if i < skip:
            continue
        messages = [{"role": roles[r], "content": v} for r, v in _turns(record) if r in roles and v.strip()]
        if not messages:
            continue
        if target.has_chat_template:
            try:
                ids = target.tokenizer.apply_chat_template(messages, tokenize=True)
            except Exception:  # a template that rejects this role order: skip the conversation
                continue
            ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        else:
            ids = target.tokenizer.encode("\n\n".join(m["content"] for m in messages))
        yield ids + [min(target.eos_token_ids)] if not target.has_chat_template else ids


def pretrain(target: CausalLM, cfg: TrainConfig, *, sharegpt: str | None = None, seq_len: int = 512,
             layers: int = 2, hidden: int | None = 384, init: str = "target", progress: bool = True) -> Path:
    tokens = cfg.steps * cfg.batch_size * (seq_len + 1)
    rows = pack_texts(chat_documents(target, sharegpt_path(sharegpt)), seq_len, tokens)  # [R, seq_len + 1]
    if len(rows) == 0:
        raise DraftsmithError("no pretraining text")
    drafter = new_drafter(target.model, init=init, layers=layers, hidden=hidden, seed=cfg.seed)
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed))

    def get_batch(i: int) -> Batch:
        idx = torch.tensor([int(order[(i * cfg.batch_size + j) % len(rows)]) for j in range(cfg.batch_size)])
        return packed_batch(rows[idx])

    cfg.extra.update(stage_data=f"{len(rows) * (seq_len + 1)} tokens of chat-formatted ShareGPT", seq_len=seq_len,
                     init=init, layers=layers, hidden=drafter.config.hidden_size)
    metrics = train(drafter, get_batch, cfg, progress=progress)
    return save_drafter(drafter, target, cfg, metrics) if _main_process() else Path(cfg.out)


def distill(target: CausalLM, drafter_path: str, data: str, cfg: TrainConfig, *, max_len: int = 512,
            progress: bool = True) -> Path:
    rows = training_rows(target, data)
    if len(rows) < 2:
        raise DraftsmithError(f"{data} holds {len(rows)} training rows; distillation needs at least 2 (one is held out)")
    held = max(1, len(rows) // 50)  # 2% held out for the model card's agreement numbers
    train_rows, eval_rows = rows[held:], rows[:held]
    drafter = load_causal_lm(drafter_path, dtype="float32", progress=progress).model.train()
    reference = load_causal_lm(cfg.adaspec_ref, dtype="bfloat16", progress=progress).model if cfg.adaspec_ref else None
    pad = target.tokenizer.pad_token_id if target.tokenizer is not None and target.tokenizer.pad_token_id is not None else 0
    rng = random.Random(cfg.seed)
    order = list(range(len(train_rows)))
    rng.shuffle(order)

    def get_batch(i: int) -> Batch:
        return rollout_batch([train_rows[order[(i * cfg.batch_size + j) % len(order)]] for j in range(cfg.batch_size)], pad, max_len)

    def resample(model: torch.nn.Module, batch: Batch, generator: torch.Generator) -> Batch:
        """DistillSpec on-policy: the drafter answers the batch's prompts itself."""
        from ..types import SamplingParams

        params = SamplingParams(temperature=cfg.on_policy_temperature, max_new_tokens=cfg.on_policy_max_new_tokens)
        answers = sample_batch(CausalLM(model, target.tokenizer), batch.prompts, params, generator, pad)
        return rollout_batch([{"prompt_ids": p, "response_ids": a} for p, (a, _) in zip(batch.prompts, answers)], pad, max_len)

    what = "ShareGPT first turns with ShareGPT's answers" if is_sharegpt(data) else "target rollouts"
    cfg.extra.update(stage_data=f"{len(train_rows)} {what} ({data})", init_from=str(drafter_path), max_len=max_len)
    metrics = train(drafter, get_batch, cfg, target=target.model, reference=reference, resample=resample, progress=progress)
    if not _main_process():  # one process writes the folder
        return Path(cfg.out)
    cfg.extra["held_out"] = evaluate(drafter, target.model, [rollout_batch(eval_rows[i:i + 8], pad, max_len) for i in range(0, len(eval_rows), 8)])
    return save_drafter(drafter, target, cfg, metrics)


def _main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


@torch.inference_mode()
def evaluate(drafter: torch.nn.Module, target: torch.nn.Module, batches: list[Batch]) -> dict:
    """Top-1 agreement and mean TVD(p, q) on held-out rollouts: 1 - TVD is the acceptance
    probability of one sampled draft token, agreement the greedy one."""
    from .trainer import SelectedLogits

    d, t = SelectedLogits(drafter).eval(), SelectedLogits(target).eval()
    agree = tvd = n = 0.0
    for b in batches:
        select = b.loss_mask.bool()
        q, p = d(b.ids, b.attention, select).float(), t(b.ids, b.attention, select).float()
        agree += float((q.argmax(-1) == p.argmax(-1)).sum())
        tvd += float((0.5 * (p.softmax(-1) - q.softmax(-1)).abs().sum(-1)).sum())
        n += q.shape[0]
    return {"tokens": int(n), "top1_agreement": round(agree / max(n, 1), 4), "tvd": round(tvd / max(n, 1), 4)}


def save_drafter(drafter: torch.nn.Module, target: CausalLM, cfg: TrainConfig, metrics: dict) -> Path:
    """Write a Hugging Face folder: config.json, model.safetensors (bf16), the target's
    tokenizer, training.json and a model card."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model = drafter.to(torch.bfloat16).eval()
    model.config.dtype = "bfloat16"
    model.save_pretrained(out, safe_serialization=True)
    if target.tokenizer is not None:
        target.tokenizer.save_pretrained(out)
    record = {"target": target.name, "config": asdict(cfg), "final_metrics": metrics}
    (out / "training.json").write_text(json.dumps(record, indent=2, default=str))
    from .card import write_card

    write_card(out, target, model, record)
    return out
