"""Prompt lookup (n-gram) drafting: find the latest earlier occurrence of the context's last
n tokens in prompt + generated text and propose the tokens that followed it. Training-free; the
draft is deterministic (q = None)."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import DraftsmithError
from ..types import Draft
from .base import DraftContext, DrafterBase, register


def earlier_matches(ids: torch.Tensor, n: int) -> list[int]:
    """Start positions of the earlier occurrences of the last n tokens of `ids` ([L]) that have
    a successor, oldest first."""
    L = ids.shape[0]
    windows = ids[: L - 1].unfold(0, n, 1)  # [L-n, n]: every n-gram that has a successor
    return (windows == ids[L - n :]).all(-1).nonzero().flatten().tolist()


@register
class NgramDrafter(DrafterBase):
    name: ClassVar[str] = "ngram"
    trimmable: ClassVar[bool] = True  # a lookup: the full-length draft costs nothing more; no state

    def __init__(self, k: int = 8, max_ngram: int = 3, min_ngram: int = 1):
        if not (isinstance(k, int) and k >= 1):
            raise DraftsmithError(f"ngram: k (draft length) must be an integer >= 1, got {k!r}")
        if not (isinstance(min_ngram, int) and isinstance(max_ngram, int) and 1 <= min_ngram <= max_ngram):
            raise DraftsmithError(f"ngram: need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.k, self.max_ngram, self.min_ngram = k, max_ngram, min_ngram

    def propose(self, ctx: DraftContext) -> Draft:
        k = min(self.k, ctx.max_tokens)
        if k <= 0:
            return Draft.empty()
        ids = torch.tensor(ctx.ids, dtype=torch.long)  # [L]
        L = ids.shape[0]
        for n in range(min(self.max_ngram, L - 1), self.min_ngram - 1, -1):
            hits = earlier_matches(ids, n)
            if hits:
                start = hits[-1] + n  # latest occurrence: most local continuation
                cont = ids[start : start + k]
                if cont.numel():
                    return Draft(cont.unsqueeze(0))  # [1, <=k]
        return Draft.empty()
