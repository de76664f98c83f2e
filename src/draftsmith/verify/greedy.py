"""Greedy verification: keep the longest draft prefix that equals the target's argmax."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..types import Draft, SamplingParams, VerifyResult


class GreedyVerifier:
    lossless: ClassVar[bool] = True

    def verify(
        self,
        draft: Draft,
        target_logits: torch.Tensor,  # [B, N+1, V]: logits after the last committed token and after each draft token
        params: SamplingParams,
        generator: torch.Generator | None = None,
    ) -> VerifyResult:
        n_draft = draft.size
        target_ids = target_logits.argmax(-1)  # [B, N+1]
        match = draft.token_ids == target_ids[:, :n_draft]  # [B, N]
        n = int(match.long().cumprod(-1).sum(-1)[0])
        tokens = torch.cat([draft.token_ids[:, :n], target_ids[:, n : n + 1]], dim=-1)  # [B, n+1]
        return VerifyResult(tokens=tokens, num_accepted=n, num_drafted=n_draft)
