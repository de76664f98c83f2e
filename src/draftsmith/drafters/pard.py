"""PARD, parallel drafting (An et al., AMD 2025, arXiv 2504.18583): a draft model adapted to
predict k tokens in ONE forward. It reads the committed tokens followed by k - 1 copies of a mask
token; the logits at the last committed token give draft token 1, those at mask j draft token
j + 1. A draft model's cost is mostly per forward (a 2-layer drafter on this CPU: about the same
time for 1 or 8 tokens), so a chain of k costs about one draft step instead of k.

The model is a `draft_model` folder trained by `draftsmith train pard` (train/pard.py): its
config.json carries `pard_token` (the mask id, where vLLM's `parallel_drafting` reads it) and
`pard_k` (the k it was trained for, the default here). Each position's q depends on the context
only, not on the tokens drafted before it, which is still a proposal distribution: sampled drafts
stay lossless under rejection sampling. With `tree_nodes` > 0 the same forward gives a tree
instead of a chain: each position's `topk` tokens combined by beam search, as Medusa's heads
(trie.position_tree; deterministic nodes, lossless at any temperature through recursive
rejection with one-hot q).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import DraftsmithError, IncompatibleDrafterError
from ..sampling import greedy, sample
from ..target import CausalLM
from ..types import Draft
from .base import DraftContext, int_option, register
from .draft_model import DraftModelDrafter
from .trie import position_tree


@register
class PardDrafter(DraftModelDrafter):
    name: ClassVar[str] = "pard"
    trees: bool = False  # set per drafter: True with tree_nodes

    def __init__(self, model: str | CausalLM | None = None, k: int | None = None, mask_token: int | None = None,
                 confidence: float = 0.0, tree_nodes: int = 0, topk: int = 3, dtype: str | torch.dtype | None = None,
                 vocab: int | None = None):
        """model: a PARD draft model (folder, pack name or CausalLM). k: tokens per draft (default:
        the `pard_k` it was trained for, else 4). mask_token: the mask id (default: its config's
        `pard_token`). confidence: cut the draft after the first position whose top probability is
        below this (0 = off). tree_nodes: 0 = a chain; N > 0 = a tree of at most N nodes from each
        position's `topk` tokens. vocab: as for draft_model (its stored draft vocabulary)."""
        if model is None:
            raise DraftsmithError("pard needs a model: build_drafter('pard', model=NAME_OR_PATH), one trained by "
                                  "`draftsmith train pard`")
        if k is not None:
            int_option("pard", "k (draft length)", k, 1)
        if mask_token is not None:
            int_option("pard", "mask_token", mask_token, 0, kind="a token id")
        int_option("pard", "tree_nodes", tree_nodes, 0)
        int_option("pard", "topk", topk, 1)
        self.tree_nodes, self.topk = tree_nodes, topk
        self.trees = tree_nodes > 0
        super().__init__(model=model, k=k or 4, adaptive=False, confidence=confidence, dtype=dtype, vocab=vocab)
        self.k_given, self.mask_token = k, mask_token

    def bind(self, target: CausalLM) -> None:
        super().bind(target)
        config = self.draft.model.config
        if self.mask_token is None:
            self.mask_token = getattr(config, "pard_token", None)
        if self.mask_token is None:
            raise IncompatibleDrafterError(
                f"pard: {self.draft.name!r} has no `pard_token` in its config: it was not trained for parallel "
                "drafting (train one with `draftsmith train pard --drafter FOLDER ...`, or pass mask_token=ID)")
        rows = self.draft.model.get_input_embeddings().weight.shape[0]
        if not 0 <= int(self.mask_token) < rows:
            raise IncompatibleDrafterError(f"pard: mask token {self.mask_token} is outside the draft model's "
                                           f"{rows}-token embedding table")
        self.mask_token = int(self.mask_token)
        if self.k_given is None:
            self.k = int(getattr(config, "pard_k", None) or 4)

    def propose(self, ctx: DraftContext) -> Draft:
        k = min(self.k, ctx.max_tokens)
        if k <= 0:
            return Draft.empty()
        keep = min(self.confirmed, len(ctx.ids) - 1)  # the cache holds committed tokens only (masks are cut below)
        self.draft.crop(keep)
        feed = ctx.ids[keep:] + [self.mask_token] * (k - 1)
        logits = self.draft.forward(feed).logits[:, -k:]  # [1, k, V_draft]: the last committed token, then the masks
        self.draft.crop(len(ctx.ids))  # drop the masks' keys and values: the next step sees committed tokens only
        self.confirmed, self.tail = len(ctx.ids), []
        if self.tree_nodes:
            return position_tree(logits[0, :, : self.vocab].float().log_softmax(-1), self.topk, self.tree_nodes)
        tokens, qs = [], []
        for j in range(k):
            if ctx.params.greedy:  # over the target's ids only (a draft model's head may be wider)
                tokens.append(int(greedy(logits[0, j, : self.vocab])))
            else:
                q = self._q(logits[:, j: j + 1], ctx.params)  # [1, V]
                qs.append(q)
                tokens.append(int(sample(q, ctx.generator)))
            if self.confidence and float(logits[0, j].float().softmax(-1).max()) < self.confidence:
                break
        q = torch.stack(qs, dim=1) if qs else None  # [1, n, V]
        return Draft(torch.tensor([tokens], dtype=torch.long), q=q)
