"""Falcon (Gao et al. 2024, arXiv 2412.12639) as a drafter: EAGLE's layer drafting `block` tokens
per forward (semi-autoregressive; modules.FalconHead).

With n committed tokens the drafter holds n - 1 pairs P_j = (f_j, e_{j+1}) (the target's feature
of token j, the embedding of token j+1), and the newest token (the bonus) is x_n. One forward:

- pass 1: the k = `block` newest pairs P_{n-k}..P_{n-1} are queries that see every committed pair
  (the relaxed causal mask: inside the block, in full); query o gives f̂_{n+o}, whose LM-head
  logits draft x̂_{n+1+o} (o = 0..k-1);
- pass u > 1: the k pairs (f̂_p, e(x̂_{p+1})) drafted by the pass before are appended to the
  head's cache and queried in full again, giving the next k drafts.

A chain of k tokens takes ceil(k / block) forwards of the layer, not k. Draft tokens are the LM
head's argmax when greedy and samples from q (temperature, top-k, top-p on the head's logits)
otherwise; a token of pass 1's offset o > 0 does not depend on the drafts before it in its block,
and q is still the law it was drawn from given everything before it, so rejection sampling keeps
the target's distribution.

Cache: the committed pairs, except the k - 1 newest, which the next step feeds again (they are
the next pass 1's queries); drafted pairs are cropped at the next step.

Options: heads (a folder from `draftsmith train heads --kind falcon`; default: the heads shipped
for the target, if any), k (draft length; default the heads' num_heads), vocab (the pruned draft
vocabulary, as `eagle`'s). Chains only: no draft trees (Falcon's own decoding tree is not built).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ...types import Draft
from ..base import DraftContext, register
from .drafters import EagleDrafter


@register
class FalconDrafter(EagleDrafter):
    name: ClassVar[str] = "falcon"
    trees: ClassVar[bool] = False

    def __init__(self, heads: str | None = None, k: int | None = None, vocab: int = 8192):
        super().__init__(heads, k, vocab=vocab)

    def bind(self, target) -> None:
        super().bind(target)
        self.block = self.module.cfg.block

    @torch.inference_mode()
    def propose(self, ctx: DraftContext) -> Draft:
        k = min(self.k, ctx.max_tokens)
        if k <= 0 or not self._ready(ctx) or len(self.features) < self.block:
            return Draft.empty()
        f = self._sync(ctx, self.block)  # [1, block, H]: pass 1
        n, dev = len(self.features), f.device
        tokens, qs = [], []
        pos = n  # position of the first pair of the block just drafted
        while True:
            block = []
            for o in range(f.shape[1]):
                if len(tokens) == k:
                    break
                if ctx.params.greedy:
                    tok, q = int(self._top(f[0, o], 1)[1][0]), None
                else:
                    tok, q = self._choose(self.lm_head(f[:, o])[0], ctx)
                tokens.append(tok)
                block.append(tok)
                qs += [q] if q is not None else []
            if len(tokens) == k:
                break
            e = self.embed(torch.tensor([block], device=dev))  # [1, block, H]
            positions = torch.arange(pos, pos + len(block), device=dev)[None]
            f = self.module(f, e, positions, self.cache, allow=torch.ones(len(block), self.cache.get_seq_length()
                                                                          + len(block), dtype=torch.bool, device=dev))
            pos += len(block)
        return self._draft(tokens, qs)
