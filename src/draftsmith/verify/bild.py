"""Big Little Decoder's fallback and rollback policies (Kim et al., NeurIPS 2023) as an
acceptance rule: lossy.

BiLD lets a small model write until it is unsure (fallback), then has the large model check
what it wrote and roll back to the first token it disagrees with too much (rollback):

    fallback:  a draft node whose drafter confidence max q < `fallback` is not kept: the small
               model would have handed over there (applies where the draft carries q, i.e.
               sampled drafts; at temperature 0 the draft model's own `confidence` option,
               `draft_model:confidence=0.6`, is the same policy on the drafter's side)
    rollback:  a draft token x is rejected when the target's distance from it exceeds
               `rollback`: d = -log p(x) (`distance="nll"`, BiLD's cross-entropy of the small
               model's token under the large model), or d = -sum q log p (`distance="ce"`, the
               cross-entropy of the drafter's whole distribution, -log p(x) where q is None)

The first rejected node ends a chain (a tree keeps its longest accepted root path) and the
target's own token follows (BiLD's y_L). Defaults are the paper's most conservative setting
(rollback 2, fallback 0.6). At temperature 0, p = softmax(logits) (lossy.py) and the target's
argmax is always kept (BiLD would roll back to it and emit the same token)."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import DraftsmithError
from ..types import SamplingParams
from .base import register_verifier
from .lossy import QUALITY_REPORT, LossyVerifier


@register_verifier
class BildVerifier(LossyVerifier):
    name: ClassVar[str] = "bild"
    quality_note: ClassVar[str | None] = (  # measured: benchmarks/smollm2-135m-lossy-quality
        "on smollm2-135m (bf16, greedy, ngram drafts, 3 GSM8K + 3 HumanEval cases) its text kept 0.42-0.70 "
        "difflib similarity to lossless decoding; an accuracy loss was not resolvable there (0/3 for every "
        "method, lossless included); quality not established, see " + QUALITY_REPORT)

    def __init__(self, rollback: float = 2.0, fallback: float = 0.6, distance: str = "nll"):
        """rollback: alpha_RB, the largest distance a kept token may have (nats); fallback: alpha_FB,
        the least drafter confidence a kept node needs (0 = off); distance: "nll" or "ce"."""
        if not isinstance(rollback, (int, float)) or isinstance(rollback, bool) or rollback < 0:
            raise DraftsmithError(f"bild: rollback must be a number >= 0 (nats), got {rollback!r}")
        if not isinstance(fallback, (int, float)) or isinstance(fallback, bool) or not 0 <= fallback <= 1:
            raise DraftsmithError(f"bild: fallback must be a number in [0, 1], got {fallback!r}")
        if distance not in ("nll", "ce"):
            raise DraftsmithError(f"bild: distance must be 'nll' or 'ce', got {distance!r}")
        self.rollback, self.fallback, self.distance = float(rollback), float(fallback), distance
        super().__init__()

    def accept(self, x: torch.Tensor, p: torch.Tensor, q: torch.Tensor | None, params: SamplingParams,
               generator: torch.Generator | None) -> torch.Tensor:
        logp = p.clamp_min(1e-30).log()  # [N, V]
        if self.distance == "ce" and q is not None:
            d = -(q * logp).sum(-1)  # [N]
        else:
            d = -logp.gather(-1, x.unsqueeze(-1)).squeeze(-1)  # [N]
        ok = d <= self.rollback
        if params.greedy:
            ok |= x == p.argmax(-1)
        if q is not None and self.fallback > 0:
            ok &= q.amax(-1) >= self.fallback
        return ok
