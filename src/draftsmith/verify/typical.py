"""Typical acceptance (Medusa, Cai et al. 2024, section 2.3.1): lossy.

A draft token x is accepted when the target finds it typical enough:

    p(x) > min(epsilon, delta * exp(-H(p)))        H(p) = -sum p log(p + 1e-5) (Medusa's code)

with p the target's distribution before x. A confident target (low entropy) asks for at most
`epsilon`; an uncertain one accepts any token near its typical probability. The first rejected
token ends a chain; a tree keeps its longest accepted root path (ties: the higher likelihood,
as Medusa picks among candidates). The bonus is the target's own next token.

Defaults are Medusa's (`posterior_threshold=0.09`, `posterior_alpha=0.3`). At temperature 0 the
rule reads softmax(logits) (Medusa itself falls back to greedy there; see lossy.py), so
`--verifier typical` at temperature 0 accepts more than greedy verification and is lossy there
too. The target's argmax always passes (p_max >= exp(-H) > delta exp(-H))."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import DraftsmithError
from ..types import SamplingParams
from .base import register_verifier
from .lossy import QUALITY_REPORT, LossyVerifier


@register_verifier
class TypicalVerifier(LossyVerifier):
    name: ClassVar[str] = "typical"
    quality_note: ClassVar[str | None] = (  # measured: benchmarks/smollm2-135m-lossy-quality
        "on smollm2-135m (bf16, greedy, ngram drafts, 3 GSM8K + 3 HumanEval cases) its text kept only "
        "0.29-0.31 difflib similarity to lossless decoding (relaxed 0.80-0.85, bild 0.42-0.70); an accuracy "
        "loss was not resolvable there (0/3 for every method, lossless included); quality not established, "
        "see " + QUALITY_REPORT)

    def __init__(self, epsilon: float = 0.09, delta: float = 0.3):
        """epsilon: the hard threshold (Medusa's posterior_threshold); delta: the entropy-scaled
        threshold's factor (posterior_alpha)."""
        for label, v in (("epsilon", epsilon), ("delta", delta)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 1:
                raise DraftsmithError(f"typical: {label} must be a number in [0, 1], got {v!r}")
        self.epsilon, self.delta = float(epsilon), float(delta)
        super().__init__()

    def accept(self, x: torch.Tensor, p: torch.Tensor, q: torch.Tensor | None, params: SamplingParams,
               generator: torch.Generator | None) -> torch.Tensor:
        entropy = -(p * (p + 1e-5).log()).sum(-1)  # [N]
        threshold = torch.clamp(self.delta * torch.exp(-entropy), max=self.epsilon)  # [N]
        p_x = p.gather(-1, x.unsqueeze(-1)).squeeze(-1)  # [N]
        ok = p_x > threshold
        if params.greedy:
            ok |= x == p.argmax(-1)
        return ok

