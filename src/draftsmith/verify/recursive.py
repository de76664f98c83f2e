"""Recursive rejection sampling over siblings drawn WITHOUT replacement (Recursive Speculative
Decoding, Jeon et al. 2024).

At one tree node the target's distribution is p and its children x_1..x_k were drawn from q
without replacement (Gumbel-top-k, `multi:replacement=false`): x_j comes from
q_j = q with x_1..x_{j-1} removed, renormalised. Starting from p_1 = p:

    accept x_j with probability min(1, p_j(x_j) / q_j(x_j));  done
    else p_{j+1} = norm(max(0, p_j - q_j)) and try x_{j+1} (q_{j+1} = q_j without x_j, renormalised)
    every sibling rejected: the bonus is drawn from p_{k+1}

Why it is exact, by induction from the last sibling: suppose that from sibling j+1 on the rule
outputs p_{j+1} whatever x_1..x_j were (true for the final draw from p_{k+1}). At sibling j, given
x_1..x_{j-1} (so q_j is fixed) and x_j ~ q_j: P(accept, out = y) = min(p_j(y), q_j(y)); P(reject)
= 1 - sum min(p_j, q_j) = sum max(0, p_j - q_j); and p_{j+1} depends on q_j only, not on which x_j
was rejected. So P(out = y) = min(p_j, q_j)(y) + max(0, p_j - q_j)(y) = p_j(y). The drafter's law
may depend on the rejected x_j (q_{j+1} excludes it): that is what makes it "without replacement",
and why each sibling is a fresh token, unlike i.i.d. siblings that repeat the likeliest one.

Trees: the accepted child's children are the next node's siblings (a chain below: k = 1, ordinary
speculative sampling). The bonus after a fully accepted path is drawn from p at its last node.

What the draft must be, checked: siblings are distinct tokens, and each sibling's q row is the
first sibling's q with the earlier siblings removed and renormalised (the law it was drawn from,
as `Draft.q` documents). Siblings drawn with replacement (i.i.d.: their q rows are all the same q,
which gives mass to the earlier siblings) are refused with a message: recursive rejection with
q_j "without x_1..x_{j-1}" on i.i.d. siblings would bend the output (tests/integration/
test_multidraft.py shows it failing the distribution test). Deterministic siblings (q None,
one-hot) are distinct candidates: p_j loses x_j each time. At temperature 0 the rule is greedy
verification.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import DraftsmithError
from ..sampling import probs, uniform
from ..types import Draft, SamplingParams, VerifyResult
from .base import VerifierBase, register_verifier
from .spectr import greedy_walk, walk

SAME_Q = 1e-4  # a sibling's q equals the expected conditional law up to rounding (max abs difference)


def without_replacement_qs(q: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    """[k, V]: row j is q ([V]) with tokens[:j] removed, renormalised (the law of the j-th draw
    without replacement)."""
    rows = q.expand(len(tokens), -1).clone()  # [k, V]
    for j in range(1, len(tokens)):
        rows[j:, tokens[j - 1]] = 0.0
    return rows / rows.sum(-1, keepdim=True).clamp_min(1e-30)


def recursive_step(p: torch.Tensor, q: torch.Tensor, x: int) -> tuple[float, torch.Tensor]:
    """One sibling: (probability of accepting x ~ q, the target's law if it is rejected:
    norm(max(0, p - q)), or p itself when nothing is left)."""
    accept = min(1.0, float(p[x]) / float(q[x])) if float(q[x]) > 0 else 0.0
    rest = (p - q).clamp_min(0.0)
    mass = rest.sum()
    return accept, torch.where(mass > 0, rest / mass.clamp_min(1e-30), p)


@register_verifier
class RecursiveVerifier(VerifierBase):
    name: ClassVar[str] = "recursive"
    lossless: ClassVar[bool] = True
    trees: ClassVar[bool] = True

    def verify_row(self, draft: Draft, target_logits: torch.Tensor, params: SamplingParams,
                   generator: torch.Generator | None = None) -> VerifyResult:  # [1, N], [1, N+1, V]
        p = probs(target_logits, params)  # [1, N+1, V]
        if params.greedy:
            return greedy_walk(draft, p, target_logits)
        return walk(draft, p, target_logits, lambda kids, tokens, dist: self.pick(draft, kids, tokens, dist, generator),
                    generator)

    def pick(self, draft: Draft, kids: list[int], tokens: list[int], dist: torch.Tensor, generator):
        """Recursive rejection at one node: (the accepted sibling, None) or (None, what is left of p)."""
        qs = self.sibling_qs(draft, kids, tokens, dist)  # [k, V]
        if kids:
            u = uniform((len(kids),), generator, dist.device).tolist()
        for j, c in enumerate(kids):
            x = tokens[c]
            q_x, p_x = float(qs[j, x]), float(dist[x])
            if u[j] * q_x < p_x:  # u < p_j(x) / q_j(x), without dividing
                return c, None
            rest = (dist - qs[j]).clamp_min(0.0)
            mass = rest.sum()
            dist = torch.where(mass > 0, rest / mass.clamp_min(1e-30), dist)
        return None, dist

    @staticmethod
    def sibling_qs(draft: Draft, kids: list[int], tokens: list[int], p: torch.Tensor) -> torch.Tensor:
        """[k, V] the law each sibling was drawn from (q_j); refuses siblings not drawn without
        replacement from one q."""
        if not kids:
            return p.new_zeros(0, p.shape[-1])
        xs = [tokens[c] for c in kids]
        if len(set(xs)) < len(xs):
            raise DraftsmithError(
                f"recursive: siblings repeat a token ({xs}): they were drawn with replacement; recursive rejection "
                "needs siblings drawn without replacement (multi:replacement=false); verify i.i.d. siblings with "
                "'spectr' or 'rejection'")
        if draft.q is None:  # distinct deterministic candidates: one-hot q each
            return torch.nn.functional.one_hot(torch.tensor(xs, device=p.device), p.shape[-1]).to(p.dtype)
        Q = draft.q[0, kids].float()  # [k, V]
        if len(kids) == 1:
            return Q
        want = without_replacement_qs(Q[0], xs)  # [k, V]
        if float((Q - want).abs().max()) > SAME_Q:
            if float((Q - Q[0]).abs().max()) <= SAME_Q:
                how = ("all carry the same q: they were drawn with replacement (i.i.d.); verify them with 'spectr' or "
                       "'rejection', or draft with multi:replacement=false")
            else:
                how = "carry q's that are not the first one's with the earlier siblings removed"
            raise DraftsmithError(f"recursive: the {len(kids)} siblings {how}: recursive rejection needs siblings "
                                  "drawn without replacement from one q")
        return want
