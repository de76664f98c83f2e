"""Greedy verification: keep the longest draft prefix (chain) or root path (tree) that equals
the target's argmax, then the target's own argmax as the bonus token."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..sampling import greedy
from ..types import Draft, SamplingParams, VerifyResult
from .base import VerifierBase, register_verifier


@register_verifier
class GreedyVerifier(VerifierBase):
    name: ClassVar[str] = "greedy"
    lossless: ClassVar[bool] = True  # at temperature 0: the target's own argmax, token for token

    def lossless_for(self, params: SamplingParams) -> bool:
        """Sampling parameters asking for samples make greedy verification argmax decoding: lossy."""
        return bool(self.lossless) and params.greedy

    def verify_row(
        self,
        draft: Draft,  # token_ids [1, N]
        target_logits: torch.Tensor,  # [1, N+1, V]: after the last committed token and after each draft token
        params: SamplingParams,
        generator: torch.Generator | None = None,
    ) -> VerifyResult:
        n_draft = draft.size
        target_ids = greedy(target_logits)  # [1, N+1]
        if draft.parents is not None:
            return self._verify_tree(draft, target_ids, target_logits)
        match = draft.token_ids == target_ids[:, :n_draft]  # [1, N]
        n = int(match.long().cumprod(-1).sum(-1)[0])
        tokens = torch.cat([draft.token_ids[:, :n], target_ids[:, n : n + 1]], dim=-1)  # [1, n+1]
        return VerifyResult(tokens=tokens, num_accepted=n, num_drafted=n_draft, target_logits=target_logits)

    @staticmethod
    def _verify_tree(draft: Draft, target_ids: torch.Tensor, target_logits: torch.Tensor) -> VerifyResult:
        """Follow the target's argmax down the tree as far as a child carries it."""
        tree = draft.tree
        want = target_ids[0].tolist()  # [N+1]: the target's choice after the root and after each node
        tokens = draft.token_ids[0].tolist()
        node, path = -1, []
        while True:
            nxt = next((c for c in tree.children[node] if tokens[c] == want[node + 1]), None)
            if nxt is None:
                break
            path.append(nxt)
            node = nxt
        out = torch.tensor([[tokens[i] for i in path] + [want[node + 1]]], device=target_ids.device)
        return VerifyResult(tokens=out, num_accepted=len(path), num_drafted=draft.size, path=path,
                            target_logits=target_logits)
