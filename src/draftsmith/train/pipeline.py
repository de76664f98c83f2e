"""The drafter-alignment recipe (Goel et al. 2024) as stages, each writing a Hugging Face folder:

1. pretrain  a new drafter (drafter_model.py) on chat-formatted ShareGPT conversations,
2. data      the target answers ShareGPT instructions (rollouts.py),
3. align     (FastDraft, Zafrir et al. 2024, instead of distill) next-token cross-entropy on the
             target's own sequences: its answers to instructions and its continuations of text
             prefixes (`train data --text-prefix`); no target forward per step.
3. distill   the drafter on those answers with a distillation loss (losses.py), optionally with
             DistillSpec on-policy batches and AdaSPEC token selection (trainer.py). With a
             feature file (`features`, the one `train heads --features` makes from the same
             data) the target's p comes from its stored last hidden states through its LM head,
             with no target forward per step.

Both stages train over the training vocabulary (`cfg.train_vocab`, trainer.py): the N most frequent
tokens of the stage's data, written beside the drafter as `draft_vocab.safetensors` (the format of
drafters/heads/vocab.py), which the `draft_model` drafter then drafts over. Distillation keeps the
vocabulary of the drafter it starts from when that has one. Every stage trains on the target's
device (`--device`).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import DraftsmithError
from ..target import CausalLM, load_causal_lm
from ..drafters.heads.vocab import count_tokens, load_vocab, save_vocab, vocab_order
from .batches import Batch, feature_batch, pack_texts, packed_batch, rollout_batch
from ..data.sharegpt import is_sharegpt, read_sharegpt, sharegpt_path, turns
from .drafter_model import new_drafter
from .rollouts import sample_batch, training_rows
from .trainer import TrainConfig, train


def chat_documents(target: CausalLM, path: str | Path, *, skip: int = 0):
    """ShareGPT conversations in the target's chat template, as token ids."""
    roles = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant", "assistant": "assistant"}
    for i, record in enumerate(read_sharegpt(path)):
        if i < skip:
            continue
        messages = [{"role": roles[r], "content": v} for r, v in turns(record) if r in roles and v.strip()]
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
    vocab = training_vocab(target, rows.tolist())
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed))

    def get_batch(i: int) -> Batch:
        idx = torch.tensor([int(order[(i * cfg.batch_size + j) % len(rows)]) for j in range(cfg.batch_size)])
        return packed_batch(rows[idx])

    cfg.extra.update(stage_data=f"{len(rows) * (seq_len + 1)} tokens of chat-formatted ShareGPT", seq_len=seq_len,
                     init=init, layers=layers, hidden=drafter.config.hidden_size)
    metrics = train(drafter, get_batch, cfg, vocab_ids=_ids(vocab, cfg), progress=progress, device=target.device)
    return save_drafter(drafter, target, cfg, metrics, vocab) if _main_process() else Path(cfg.out)


def training_vocab(target: CausalLM, sequences) -> list[int]:
    """The data's tokens, most frequent first, the end-of-sequence ids leading (drafters/heads/vocab.py)."""
    return vocab_order(count_tokens(sequences), always=sorted(target.eos_token_ids))


def _ids(vocab: list[int], cfg: TrainConfig) -> torch.Tensor | None:
    """The training vocabulary as ids [N], or None for the whole vocabulary."""
    return torch.tensor(vocab[: cfg.train_vocab], dtype=torch.long) if cfg.train_vocab else None


def distill(target: CausalLM, drafter_path: str, data: str, cfg: TrainConfig, *, max_len: int = 512,
            features: str | None = None, limit: int | None = None, progress: bool = True) -> Path:
    if features:
        return distill_from_features(target, drafter_path, data, cfg, features, max_len=max_len, limit=limit,
                                     progress=progress)
    rows = training_rows(target, data, limit=limit)
    if len(rows) < 2:
        raise DraftsmithError(f"{data} holds {len(rows)} training rows; distillation needs at least 2 (one is held out)")
    held = max(1, len(rows) // 50)  # 2% held out for the model card's agreement numbers
    train_rows, eval_rows = rows[held:], rows[:held]
    drafter = load_causal_lm(drafter_path, dtype="float32", progress=progress).model.train()
    vocab = _drafter_vocab(drafter_path, target, [r["response_ids"] for r in train_rows], cfg)
    reference = (load_causal_lm(cfg.adaspec_ref, dtype="bfloat16", device=target.device, progress=progress).model
                 if cfg.adaspec_ref else None)
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
    metrics = train(drafter, get_batch, cfg, target=target.model, reference=reference, resample=resample,
                    vocab_ids=_ids(vocab, cfg), progress=progress, device=target.device)
    if not _main_process():  # one process writes the folder
        return Path(cfg.out)
    cfg.extra["held_out"] = evaluate(drafter, target.model, [rollout_batch(eval_rows[i:i + 8], pad, max_len)
                                                             for i in range(0, len(eval_rows), 8)], _ids(vocab, cfg))
    return save_drafter(drafter, target, cfg, metrics, vocab)


def align(target: CausalLM, drafter_path: str, data: str, cfg: TrainConfig, *, max_len: int = 512,
          limit: int | None = None, progress: bool = True) -> Path:
    """FastDraft's alignment stage: the drafter learns the target's generated tokens (rollouts of
    `train data`, answers and text continuations alike) with cross-entropy, as labels. The target
    is needed only for the held-out agreement of the model card."""
    rows = training_rows(target, data, limit=limit)
    if len(rows) < 2:
        raise DraftsmithError(f"{data} holds {len(rows)} training rows; alignment needs at least 2 (one is held out)")
    held = max(1, len(rows) // 50)
    order = list(range(len(rows)))
    random.Random(cfg.seed).shuffle(order)  # held-out rows from every kind the file holds
    eval_rows, train_rows = [rows[k] for k in order[:held]], [rows[k] for k in order[held:]]
    drafter = load_causal_lm(drafter_path, dtype="float32", progress=progress).model.train()
    vocab = _drafter_vocab(drafter_path, target, [r["response_ids"] for r in train_rows], cfg)
    pad = target.tokenizer.pad_token_id if target.tokenizer is not None and target.tokenizer.pad_token_id is not None else 0

    def get_batch(i: int) -> Batch:
        return rollout_batch([train_rows[(i * cfg.batch_size + j) % len(train_rows)] for j in range(cfg.batch_size)],
                             pad, max_len)

    cfg.extra.update(stage_data=f"{len(train_rows)} target rollouts ({data})", init_from=str(drafter_path), max_len=max_len)
    metrics = train(drafter, get_batch, cfg, vocab_ids=_ids(vocab, cfg), progress=progress, device=target.device)
    if not _main_process():
        return Path(cfg.out)
    cfg.extra["held_out"] = evaluate(drafter, target.model, [rollout_batch(eval_rows[i:i + 8], pad, max_len)
                                                             for i in range(0, len(eval_rows), 8)], _ids(vocab, cfg))
    return save_drafter(drafter, target, cfg, metrics, vocab)


LENGTH_WINDOW = 128  # bucketed_steps sorts sequences by length within windows this long


def bucketed_steps(lengths: list[int], answers: list[int], per_step: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's steps over sequences of `lengths` tokens, `answers` of them answer tokens: a
    seeded permutation, sorted by length within windows of `LENGTH_WINDOW` sequences (a padded
    batch then holds sequences of similar lengths), cut where a step reaches `per_step` answer
    tokens; the steps then come in a seeded order. Every sequence is in exactly one step."""
    from .heads import epoch_order

    order = epoch_order(len(lengths), seed, epoch)
    order = [k for w in range(0, len(order), LENGTH_WINDOW)
             for k in sorted(order[w:w + LENGTH_WINDOW], key=lambda k: lengths[k])]
    steps, tokens = [[]], 0
    for k in order:
        if tokens >= per_step:
            steps.append([])
            tokens = 0
        steps[-1].append(k)
        tokens += answers[k]
    return [steps[s] for s in epoch_order(len(steps), seed + 1, epoch)]


def distill_from_features(target: CausalLM, drafter_path: str, data: str, cfg: TrainConfig, features: str, *,
                          max_len: int = 512, limit: int | None = None, progress: bool = True) -> Path:
    """Distillation whose p comes from a feature file: the target's last hidden states of the
    data's sequences, made once (`train heads --features` makes the same file from the same
    `data`, `limit` and `max_len`, and either run reuses it). Batches take whole sequences until
    they hold `cfg.batch_size` x 256 answer tokens. No on-policy batches or AdaSPEC here (both
    need the target's p on tokens the file does not hold)."""
    from .features import HOLDOUT, cached_features, load_sequences, usable

    if cfg.on_policy or cfg.adaspec_ref:
        raise DraftsmithError("distill --features: on-policy batches and AdaSPEC need a target forward per step; "
                              "run them without --features")
    sequences = usable(load_sequences(target, data, limit=limit), max_len)
    if len(sequences) <= HOLDOUT:
        raise DraftsmithError(f"{data}: {len(sequences)} usable sequences; need more than the {HOLDOUT} held out")
    held, train_seqs = sequences[:HOLDOUT], sequences[HOLDOUT:]
    items = cached_features(target, train_seqs, max_len, features, progress)
    drafter = load_causal_lm(drafter_path, dtype="float32", progress=progress).model.train()
    vocab = _drafter_vocab(drafter_path, target, [ids[start:] for ids, start in train_seqs], cfg)
    pad = target.tokenizer.pad_token_id if target.tokenizer is not None and target.tokenizer.pad_token_id is not None else 0
    per_step = cfg.batch_size * 256
    lengths, answers = [len(it.ids) for it in items], [len(it.ids) - it.start for it in items]
    epochs: list[list[list[int]]] = []  # per epoch, its steps' item indices

    def get_batch(i: int) -> Batch:
        epoch = 0
        while True:
            if epoch == len(epochs):
                epochs.append(bucketed_steps(lengths, answers, per_step, cfg.seed, epoch))
            if i < len(epochs[epoch]):
                return feature_batch([items[k] for k in epochs[epoch][i]], pad)
            i -= len(epochs[epoch])
            epoch += 1

    cfg.extra.update(stage_data=f"{len(items)} sequences of {data} with the target's features ({features})",
                     init_from=str(drafter_path), max_len=max_len, answer_tokens_per_step=per_step)
    metrics = train(drafter, get_batch, cfg, target=target.model, vocab_ids=_ids(vocab, cfg), progress=progress,
                    device=target.device)
    if not _main_process():
        return Path(cfg.out)
    held_rows = [{"prompt_ids": ids[:start], "response_ids": ids[start:]} for ids, start in held]
    cfg.extra["held_out"] = evaluate(drafter, target.model, [rollout_batch(held_rows[i:i + 8], pad, max_len)
                                                             for i in range(0, len(held_rows), 8)], _ids(vocab, cfg))
    return save_drafter(drafter, target, cfg, metrics, vocab)


def _drafter_vocab(drafter_path: str, target: CausalLM, answers, cfg: TrainConfig) -> list[int]:
    """The vocabulary of the drafter distillation starts from (noted in `cfg.extra["vocab_from"]`
    for the model card), or else the answers' (training_vocab)."""
    from ..models import resolve_model

    stored = load_vocab(resolve_model(drafter_path, progress=False), size=None)
    if stored is None:
        return training_vocab(target, answers)
    cfg.extra["vocab_from"] = str(drafter_path)
    return stored.tolist()


def _main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


@torch.inference_mode()
def evaluate(drafter: torch.nn.Module, target: torch.nn.Module, batches: list[Batch],
             vocab_ids: torch.Tensor | None = None) -> dict:
    """Top-1 agreement and mean TVD(p, q) on held-out rollouts: 1 - TVD is the acceptance
    probability of one sampled draft token, agreement the greedy one. q is the drafter's as it
    drafts (over `vocab_ids` when given, zero elsewhere), p the target's over its whole vocabulary."""
    from .trainer import SelectedLogits

    device = next(drafter.parameters()).device
    if vocab_ids is not None:
        vocab_ids = vocab_ids.to(device)
    d, t = SelectedLogits(drafter, vocab_ids).eval(), SelectedLogits(target).eval()
    agree = tvd = n = 0.0
    for b in batches:
        b = b.to(device)
        select = b.loss_mask.bool()
        q, p = d(b.ids, b.attention, select).float(), t(b.ids, b.attention, select).float()  # [N, V or N_vocab], [N, V]
        if vocab_ids is not None:  # the drafter's logits in the whole vocabulary's layout
            q = q.new_full(p.shape, float("-inf")).index_copy_(-1, vocab_ids, q)
        agree += float((q.argmax(-1) == p.argmax(-1)).sum())
        tvd += float((0.5 * (p.softmax(-1) - q.softmax(-1)).abs().sum(-1)).sum())
        n += q.shape[0]
    return {"tokens": int(n), "top1_agreement": round(agree / max(n, 1), 4), "tvd": round(tvd / max(n, 1), 4)}


def save_drafter(drafter: torch.nn.Module, target: CausalLM, cfg: TrainConfig, metrics: dict,
                 vocab: list[int] | None = None) -> Path:
    """Write a Hugging Face folder: config.json, model.safetensors (bf16), the target's
    tokenizer, training.json, a model card and, when it trained over a training vocabulary, that
    vocabulary (`draft_vocab.safetensors`, which the draft_model drafter drafts over)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if vocab is not None and cfg.train_vocab:
        save_vocab(out, vocab[: cfg.train_vocab])
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
