"""Training batches. A batch is `ids` [B, T], `attention` [B, T] (1 = real token) and `loss_mask`
[B, T] (1 where the token at t+1 is a training target for position t). A layout that is not one
causal sequence (PARD's mask blocks, train/pard.py) gives `attention` as a [B, 1, T, T] boolean
mask with `positions` [B, T] and `labels` [B, T] (the token each position predicts, -100 where
none) instead of the next-token shift."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass
class Batch:
    ids: torch.Tensor        # [B, T]
    attention: torch.Tensor  # [B, T]
    loss_mask: torch.Tensor  # [B, T]  position t predicts ids[t + 1]
    prompts: list[list[int]] | None = None  # for on-policy resampling of the responses
    target_hidden: torch.Tensor | None = None  # [N, H] the target's last hidden state at each loss position
                                               # (row-major order of loss_mask), when it comes from a feature file
    positions: torch.Tensor | None = None  # [B, T] position ids (None: 0 .. T-1)
    labels: torch.Tensor | None = None     # [B, T] the token each position predicts (None: ids[t + 1] where loss_mask)

    @property
    def tokens(self) -> int:
        return int(self.loss_mask.sum())

    def to(self, device: torch.device | str) -> "Batch":
        """The batch with its tensors on `device` (itself when they are there already)."""
        if self.ids.device == torch.device(device):
            return self
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Batch(move(self.ids), move(self.attention), move(self.loss_mask), self.prompts,
                     move(self.target_hidden), move(self.positions), move(self.labels))


def pack_texts(token_lists: Iterable[list[int]], seq_len: int, max_tokens: int) -> torch.Tensor:
    """Concatenate documents (each already ending in EOS) and cut into rows of seq_len + 1
    tokens: [R, seq_len + 1]; stops after `max_tokens` tokens."""
    flat: list[int] = []
    for ids in token_lists:
        flat.extend(ids)
        if len(flat) >= max_tokens:
            break
    rows = len(flat) // (seq_len + 1)
    return torch.tensor(flat[: rows * (seq_len + 1)], dtype=torch.long).view(rows, seq_len + 1)


def packed_batch(rows: torch.Tensor) -> Batch:
    ids = rows  # [B, T]
    mask = torch.ones_like(ids)
    mask[:, -1] = 0
    return Batch(ids, torch.ones_like(ids), mask)


def rollout_batch(rows: list[dict], pad_id: int, max_len: int) -> Batch:
    """Right-padded prompt + response; the loss covers the response tokens."""
    seqs, masks, prompts = [], [], []
    for row in rows:
        prompt, response = list(row["prompt_ids"]), list(row["response_ids"])
        seq = (prompt + response)[:max_len]
        loss = [0] * len(seq)
        for t in range(len(prompt) - 1, len(seq) - 1):  # position t predicts response token t+1
            loss[t] = 1
        seqs.append(seq)
        masks.append(loss)
        prompts.append(prompt)
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), T), dtype=torch.long)
    loss_mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, (seq, loss) in enumerate(zip(seqs, masks)):
        ids[i, : len(seq)] = torch.tensor(seq)
        attention[i, : len(seq)] = 1
        loss_mask[i, : len(seq)] = torch.tensor(loss)
    return Batch(ids, attention, loss_mask, prompts)


def feature_batch(items: list, pad_id: int) -> Batch:
    """Feature-file items (train/features.Item: ids [L], the target's feats [L, H], answer start) as
    a right-padded batch whose loss covers the answer tokens, with the target's hidden state at
    each loss position (position t predicts ids[t + 1], and feats[t] gives the target's p there)."""
    batch = rollout_batch([{"prompt_ids": it.ids[: it.start].tolist(), "response_ids": it.ids[it.start:].tolist()}
                           for it in items], pad_id, max_len=max(len(it.ids) for it in items))
    batch.target_hidden = torch.cat([it.feats[it.start - 1: len(it.ids) - 1] for it in items])  # [N, H]
    return batch
