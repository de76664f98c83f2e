"""Chimera (Zeng et al. 2024, arXiv 2402.15758) as a drafter: a trigram encoder over the newest
three tokens, a full-context encoder (one causal decoder layer over the committed pairs, with its
own KV cache) and K residual decoding heads that draft in parallel (modules.ChimeraHeads).

With n committed tokens x_0..x_{n-1} the drafter holds the target's features f_0..f_{n-2} (f_j
gave x_{j+1}; x_{n-1} is the bonus token) and so n-1 pairs j = (f_j, [e_{j-1}; e_j; e_{j+1}]). A
step feeds the pairs not yet cached (the accepted tokens of the last step: the cache holds only
committed pairs, nothing to crop), and the K heads read the newest pair's output c_{n-2} and
f_{n-2}: head i drafts x_{n+i}. One forward of the layer per step, whatever k is.

A chain of each head's choice (greedy: argmax; sampling: a draw from the head's q, which depends
on the context alone, so rejection sampling keeps the target's distribution), or (tree_nodes > 0)
Medusa's tree: each head's `topk` tokens combined by beam search, deterministic nodes (q None).

Options: heads (a folder from `draftsmith train heads --kind chimera`; default: the heads shipped
for the target, if any), k (default: the heads' num_heads), tree_nodes (0 = chain), topk (4),
vocab (the pruned draft vocabulary, as the other heads').
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ...errors import DraftsmithError
from ...types import Draft
from ..base import DraftContext, register
from ..trie import position_tree
from .drafters import HeadsDrafter


@register
class ChimeraDrafter(HeadsDrafter):
    name: ClassVar[str] = "chimera"
    trees: ClassVar[bool] = True

    def __init__(self, heads: str | None = None, k: int | None = None, tree_nodes: int = 0, topk: int = 4,
                 vocab: int = 8192):
        super().__init__(heads, k, vocab)
        if not (isinstance(tree_nodes, int) and tree_nodes >= 0) or not (isinstance(topk, int) and topk >= 1):
            raise DraftsmithError(f"chimera: tree_nodes must be an integer >= 0 and topk >= 1, got {tree_nodes!r}, {topk!r}")
        self.tree_nodes, self.topk = tree_nodes, topk

    def prefill(self, prompt_ids: list[int], features: torch.Tensor | None = None) -> None:
        super().prefill(prompt_ids, features)
        self.cache = self.module.new_cache()
        self.cached = 0  # committed pairs in the cache

    def _sync(self, ctx: DraftContext) -> torch.Tensor:
        """Feed the committed pairs not yet cached; -> c of the newest pair [1, H]."""
        n, past = len(self.features), self.cached  # pairs j < n; x_{j+1} = ctx.ids[j + 1]
        if n == past:  # asked again with nothing committed since
            return self.last
        dev = self.features[0].device
        lo = max(past - 1, 0)  # the trigram of pair `past` starts at x_{past-1}
        embeds = self.embed(torch.tensor([ctx.ids[lo:n + 1]], device=dev))  # [1, n + 1 - lo, H]
        if past == 0:
            embeds = torch.cat([torch.zeros_like(embeds[:, :1]), embeds], dim=1)  # e_{-1} = 0
        tri = torch.cat([embeds[:, :-2], embeds[:, 1:-1], embeds[:, 2:]], dim=-1)  # [1, n - past, 3H]
        feats = torch.stack(self.features[past:])[None]  # [1, n - past, H]
        pos = torch.arange(past, n, device=dev)[None]
        c = self.module.encode(feats, tri, pos, self.cache)
        self.cached, self.last = n, c[0, -1]
        return self.last

    @torch.inference_mode()
    def propose(self, ctx: DraftContext) -> Draft:
        k = min(self.k, self.module.cfg.num_heads, ctx.max_tokens)
        if k <= 0 or not self._ready(ctx):
            return Draft.empty()
        c = self._sync(ctx)
        x = self.module.features(c, self.features[-1], heads=k)  # [k, H]
        if self.tree_nodes:
            return position_tree(self.lm_head(x).float().log_softmax(-1), self.topk, self.tree_nodes)
        if ctx.params.greedy:
            return self._draft([int(t) for t in self._top(x, 1)[1][:, 0]], [])
        picks = [self._choose(logits, ctx) for logits in self.lm_head(x)]
        return self._draft([t for t, _ in picks], [q for _, q in picks])
