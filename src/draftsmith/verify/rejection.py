"""Lossless speculative sampling (Leviathan et al. 2023; Chen et al. 2023), chain drafts.

For draft token x_i drawn from q_i, accept with probability min(1, p_i(x_i) / q_i(x_i)). At the
first rejection, the bonus token is drawn from the residual norm(max(0, p_i - q_i)); if every
draft token is accepted, the bonus is drawn from p_{N}. The emitted tokens are then distributed
exactly as the target's own samples. A deterministic draft (q = None) is a one-hot q: accept
with probability p_i(x_i), residual = p_i with x_i removed.

p and q are both shaped by the same SamplingParams (temperature, top-k, top-p), so the
guarantee is with respect to the target's *processed* distribution, as in plain sampling.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..sampling import probs, sample, uniform
from ..types import Draft, SamplingParams, VerifyResult
from .base import VerifierBase, register_verifier


@register_verifier
class RejectionVerifier(VerifierBase):
    name: ClassVar[str] = "rejection"
    lossless: ClassVar[bool] = True

    def verify_row(
        self,
        draft: Draft,  # token_ids [1, N], q [1, N, V] or None
        target_logits: torch.Tensor,  # [1, N+1, V]
        params: SamplingParams,
        generator: torch.Generator | None = None,
    ) -> VerifyResult:
        n_draft = draft.size
        x = draft.token_ids  # [1, N]
        p = probs(target_logits, params)  # [1, N+1, V]
        if draft.parents is not None:
            return self._verify_tree(draft, p, generator, target_logits)
        p_x = p[:, :n_draft].gather(-1, x.unsqueeze(-1)).squeeze(-1)  # [1, N]
        if draft.q is None:
            q_x = torch.ones_like(p_x)
        else:
            q_x = draft.q.gather(-1, x.unsqueeze(-1)).squeeze(-1).float()  # [1, N]
        r = uniform(p_x.shape, generator, p_x.device)  # [1, N]
        accept = r * q_x < p_x  # r < p/q, without dividing by q
        n = int(accept.long().cumprod(-1).sum(-1)[0])

        if n < n_draft:
            if draft.q is None:
                residual = p[:, n].scatter(-1, x[:, n : n + 1], 0.0)  # [1, V]
            else:
                residual = (p[:, n] - draft.q[:, n].float()).clamp_min(0.0)  # [1, V]
            mass = residual.sum(-1, keepdim=True)
            # p == q up to rounding leaves no residual mass; p itself is then the right law
            residual = torch.where(mass > 0, residual / mass.clamp_min(1e-30), p[:, n])
            bonus = sample(residual, generator)  # [1]
        else:
            bonus = sample(p[:, n_draft], generator)  # [1]
        tokens = torch.cat([x[:, :n], bonus.unsqueeze(-1)], dim=-1)  # [1, n+1]
        return VerifyResult(tokens=tokens, num_accepted=n, num_drafted=n_draft, target_logits=target_logits)

    @staticmethod
    def _verify_tree(draft: Draft, p: torch.Tensor, generator, target_logits) -> VerifyResult:
        """Recursive rejection sampling over sibling candidates (SpecInfer; Chen et al. 2023's
        multi-draft form). At a node with target distribution p, try its children in order:
        accept child x (drawn from q) with probability min(1, p(x) / q(x)); on rejection set
        p <- norm(max(0, p - q)) and try the next sibling. If every child is rejected, the bonus
        is drawn from what is left of p. Exact when the siblings were drawn independently from
        their q, or are distinct deterministic candidates (q one-hot: p loses x each time)."""
        tree = draft.tree
        tokens = draft.token_ids[0].tolist()
        node, path = -1, []
        while True:
            dist = p[0, node + 1]  # [V]
            accepted = None
            for c in tree.children[node]:
                x = tokens[c]
                q = None if draft.q is None else draft.q[0, c].float()  # [V]
                q_x = 1.0 if q is None else float(q[x])
                if float(uniform((), generator, dist.device)) * q_x < float(dist[x]):
                    accepted = c
                    break
                dist = dist.clone()
                if q is None:
                    dist[x] = 0.0
                else:
                    dist = (dist - q).clamp_min(0.0)
                mass = dist.sum()
                dist = dist / mass if mass > 0 else p[0, node + 1]
            if accepted is None:
                bonus = int(sample(dist.unsqueeze(0), generator))
                break
            path.append(accepted)
            node = accepted
        out = torch.tensor([[tokens[i] for i in path] + [bonus]], device=p.device)
        return VerifyResult(tokens=out, num_accepted=len(path), num_drafted=draft.size, path=path,
                            target_logits=target_logits)
