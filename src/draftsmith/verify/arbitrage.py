"""Arbitrage-style step arbitration (after Arbitrage, advantage-aware speculation for reasoning,
2025): lossy.

Arbitrage decides, a whole step at a time, between the drafter's continuation and the target's
own by the advantage of the target's: where the target would do clearly better, its own tokens
replace the drafter's; elsewhere the drafter's stand, even where they differ from the target's
choice. Arbitrage scores steps with a process reward model and a router trained to predict the
advantage; here the target is its own judge, as the issue asks ("by the advantage the target
assigns"), so the rule needs no model besides the two. The advantage of the target's choice t at
draft node i, under the target's distribution p before it (criterion_probs: softmax(logits) at
temperature 0, the request's p otherwise):

    A_i = log p(t_i) - log p(x_i) >= 0         t_i = argmax p (the target's own continuation)

and a draft prefix is kept while the advantage summed along it stays within `budget` nats:

    keep node i  <=>  sum of A_j over node i's root path (i included) <= budget

So tokens the target would have chosen cost nothing, a near-tie costs little, and a draft that
keeps departing from the target is cut once the departures add up, wherever they fall in the
step. The bonus is the target's own next token. `budget=0` is greedy verification at temperature
0 (every kept token is the target's argmax; exact ties aside), and larger budgets keep more of the
drafter's text. Unlike `typical` (a test on each token alone) the budget is spent over the step.

Lossy (`lossless = False`): every output that used it says so. Its quality is measured as GSM8K
accuracy beside lossless decoding (benchmarks/qwen-coder-0.5b-gsm8k-arbitrage).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import DraftsmithError
from ..types import SamplingParams
from .base import register_verifier
from .lossy import LossyVerifier


@register_verifier
class ArbitrageVerifier(LossyVerifier):
    name: ClassVar[str] = "arbitrage"
    reads_paths: ClassVar[bool] = True  # accept() gets the draft's parents: the budget is spent along root paths

    def __init__(self, budget: float = 1.0):
        """budget: nats of the target's advantage over the drafter a step may spend on kept draft
        tokens (0 = greedy verification at temperature 0)."""
        if not isinstance(budget, (int, float)) or isinstance(budget, bool) or not 0 <= budget < float("inf"):
            raise DraftsmithError(f"arbitrage: budget must be a finite number of nats >= 0, got {budget!r}")
        self.budget = float(budget)
        super().__init__()

    def accept(self, x: torch.Tensor, p: torch.Tensor, q: torch.Tensor | None, params: SamplingParams,
               generator: torch.Generator | None, parents: list[int] | None = None) -> torch.Tensor:
        log_p = p.clamp_min(1e-30).log()  # [N, V]
        advantage = log_p.max(-1).values - log_p.gather(-1, x.unsqueeze(-1)).squeeze(-1)  # [N] >= 0
        advantage = torch.where(x == p.argmax(-1), torch.zeros_like(advantage), advantage)  # the target's choice: free
        parents = list(range(-1, len(x) - 1)) if parents is None else parents
        spent = advantage.tolist()
        for i, parent in enumerate(parents):  # topological order: a node's parent comes first
            if parent >= 0:
                spent[i] += spent[parent]
        return torch.tensor(spent, device=x.device) <= self.budget + 1e-9
