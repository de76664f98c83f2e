"""EAGLE-3 (Li et al. 2025, arXiv 2503.01840) as a drafter: the `eagle` drafter's chain and EAGLE-2
dynamic tree over an EAGLE-3 head (modules.Eagle3Head).

What differs from `eagle`:
- features: the loop hands this drafter the inputs of the target's `aux_layers` (low, middle and
  high; the target's hidden_states[i] concatenated, [.., 3H]) from the same verification forward
  (`feature_layers`), and the head fuses them once per committed token, g_j = fc([a_j; b_j; c_j]);
  the feature store keeps g (H wide), so the cache of (e_{j+1}, g_j) pairs and the draft loop are
  `eagle`'s;
- drafting: a draft step's output u (the layer's residual stream before the final norm) is fed
  back in place of g, and tokens come from the head's own LM head over its draft vocabulary:
  draft id i is target id i + d2t[i]. Greedy takes the argmax over the draft vocabulary; sampling
  draws from q, the softmax over it (zero outside), which is the law the token was drawn from, so
  rejection sampling keeps the target's distribution.

Options: heads (a folder from `draftsmith train heads --kind eagle3`; default: the heads shipped
for the target), k (draft length; default the heads' num_heads), tree_nodes (0 = a chain; > 0:
the EAGLE-2 tree of that many nodes), topk and beam (the tree's children per node and nodes
expanded per depth). The draft vocabulary is part of the head (`d2t`), so there is no `vocab`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ...errors import DraftsmithError, IncompatibleDrafterError
from ...types import VerifyResult
from ..base import register
from .drafters import EagleDrafter


class DraftVocabLogits(nn.Module):
    """An EAGLE-3 head's norm + LM head read like the target's LM head restricted to a subset
    (vocab.SubsetLMHead): `subset(u)` [.., Vd] in `token_ids` order, `forward(u)` [.., V] with
    -inf outside the draft vocabulary."""

    def __init__(self, module, vocab_size: int):
        super().__init__()
        self.module, self.vocab_size = module, vocab_size
        self.token_ids = module.token_ids()  # [Vd]

    def subset(self, u: torch.Tensor) -> torch.Tensor:
        return self.module.logits(u)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        sub = self.subset(u)                                                    # [.., Vd]
        full = sub.new_full((*sub.shape[:-1], self.vocab_size), float("-inf"))  # [.., V]
        return full.index_copy_(-1, self.token_ids, sub)


@register
class Eagle3Drafter(EagleDrafter):
    """EAGLE-3 heads: `eagle`'s chain or EAGLE-2 tree over fused low/mid/high target features and
    the head's own draft vocabulary (module docstring)."""

    name: ClassVar[str] = "eagle3"

    def __init__(self, heads: str | None = None, k: int | None = None, tree_nodes: int = 0, topk: int = 4,
                 beam: int = 4, vocab: int = 0):
        """vocab: refused unless 0 (the draft vocabulary is the head's own, d2t); kept as an option so
        that a `vocab=` carried over from an `eagle` spec gets this message, not a TypeError."""
        if vocab != 0:
            raise DraftsmithError("eagle3: the draft vocabulary is part of the heads (their d2t map, set when they are "
                                  "trained with --train-vocab N); drop vocab=")
        super().__init__(heads, k, tree_nodes, topk, beam, vocab=0)
        self.feature_layers: tuple[int, ...] | None = None  # known once the heads are loaded

    def bind(self, target) -> None:
        super().bind(target)
        cfg = self.module.cfg
        L = target.config.num_hidden_layers
        if any(not 0 <= i < L for i in cfg.aux_layers):
            raise IncompatibleDrafterError(f"eagle3: the heads fuse target layers {cfg.aux_layers}, but the target has "
                                           f"{L} layers (0..{L - 1})")
        if cfg.target_hidden_size != target.config.hidden_size:
            raise IncompatibleDrafterError(f"eagle3: heads for target hidden size {cfg.target_hidden_size}, target has "
                                           f"{target.config.hidden_size}")
        self.feature_layers = tuple(cfg.aux_layers)
        self.lm_head = DraftVocabLogits(self.module, target.vocab_size)

    def _fuse(self, aux: torch.Tensor, where: str) -> list[torch.Tensor]:
        want = len(self.feature_layers) * self.module.cfg.target_hidden_size
        if aux.shape[-1] != want:
            raise DraftsmithError(f"eagle3: {where} got features of width {aux.shape[-1]}, expected {want} (the inputs "
                                  f"of target layers {list(self.feature_layers)}; the loop must honour feature_layers)")
        with torch.inference_mode():
            return list(self.module.combine(aux.to(self.dtype))[0])  # [n] x [H]

    def prefill(self, prompt_ids: list[int], features: torch.Tensor | None = None) -> None:
        if features is None:
            raise DraftsmithError("eagle3 needs the target's hidden states (needs_hidden_states)")
        super().prefill(prompt_ids, features)
        self.features = self._fuse(features, "prefill")

    def observe(self, result: VerifyResult) -> None:
        if result.hidden is None:
            raise DraftsmithError("eagle3 needs the target's hidden states (needs_hidden_states)")
        self.features.extend(self._fuse(result.hidden, "observe"))
