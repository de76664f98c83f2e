"""A pruned draft vocabulary for draft heads (the idea of FR-Spec, Zhao et al. 2025, and EAGLE-3's
draft vocabulary): heads share the target's LM head, and on a small target that H x V product is
most of what drafting costs (SmolLM2-135M: 576 x 49,152, a fifth of the whole model). Drafting
over the N most frequent tokens only costs N/V of it.

`SubsetLMHead` computes logits for those N tokens and returns them in the full vocabulary's
layout with -inf elsewhere, so every drafter reads it exactly like the full LM head: greedy picks
the best token of the subset, trees take their top-k from it, and a sampled draft's q is a
distribution that is zero outside the subset. Verification is unchanged, so decoding stays
lossless; only tokens outside the subset can no longer be drafted (the target still emits them
as bonus tokens).

The subset is stored beside the heads as `draft_vocab.safetensors` (`token_ids` [N], most
frequent first): `draftsmith train heads` writes it from the token counts of its training answers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ...errors import DraftsmithError

FILE = "draft_vocab.safetensors"


class SubsetLMHead(nn.Module):
    """lm_head restricted to `token_ids` [N]: x [.., H] -> logits [.., V], -inf outside the subset."""

    def __init__(self, lm_head: nn.Module, token_ids: torch.Tensor):
        super().__init__()
        weight = lm_head.weight  # [V, H]
        self.vocab_size = weight.shape[0]
        ids = token_ids.to(device=weight.device, dtype=torch.long)
        if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size:
            raise DraftsmithError(f"draft vocabulary: token ids must lie in [0, {self.vocab_size}), got {ids.numel()} ids")
        self.register_buffer("token_ids", ids, persistent=False)
        self.weight = nn.Parameter(weight.detach().index_select(0, ids), requires_grad=False)  # [N, H]
        bias = getattr(lm_head, "bias", None)
        self.bias = None if bias is None else nn.Parameter(bias.detach().index_select(0, ids), requires_grad=False)

    def subset(self, x: torch.Tensor) -> torch.Tensor:
        """x [.., H] -> the subset's logits [.., N], in `token_ids` order."""
        return nn.functional.linear(x, self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sub = self.subset(x)                                                    # [.., N]
        full = sub.new_full((*sub.shape[:-1], self.vocab_size), float("-inf"))  # [.., V]
        return full.index_copy_(-1, self.token_ids, sub)


def count_tokens(sequences: Iterable[Iterable[int]]) -> list[int]:
    """Token ids by frequency over the sequences, most frequent first (ties: smaller id first)."""
    counts = Counter(int(t) for seq in sequences for t in seq)
    return [t for t, _ in sorted(counts.items(), key=lambda tc: (-tc[1], tc[0]))]


def vocab_order(token_ids: Iterable[int], always: Iterable[int] = ()) -> list[int]:
    """The draft vocabulary's order: the `always` ids (end of sequence, say) first, then
    `token_ids` (most frequent first), each id once."""
    return [int(t) for t in dict.fromkeys([*always, *token_ids])]


def save_vocab(folder: str | Path, token_ids: list[int], always: Iterable[int] = ()) -> Path:
    """Write `token_ids` (most frequent first) to the heads folder, in `vocab_order`."""
    ids = vocab_order(token_ids, always)
    path = Path(folder) / FILE
    save_file({"token_ids": torch.tensor(ids, dtype=torch.int64)}, str(path))
    return path


def load_vocab(folder: str | Path, size: int | None) -> torch.Tensor | None:
    """The `size` (None: all) most frequent token ids stored beside the heads or a draft model,
    or None if there is no file."""
    path = Path(folder) / FILE
    if not path.is_file():
        return None
    return load_file(str(path))["token_ids"][:size]
