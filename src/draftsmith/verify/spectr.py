"""SpecTr (Sun et al. 2023, "SpecTr: Fast Speculative Decoding via Optimal Transport"): lossless
selection among k candidates drawn i.i.d. from one q, by the paper's k-sequential rule K-SEQ.

At one tree node the target's distribution is p and its k children x_1..x_k were drawn
independently from the same q (duplicates allowed). With a constant rho in [1, k]:

    m(y)     = min(q(y), p(y) / rho)          beta = sum_y m(y)    (one candidate's acceptance)
    for i = 1..k: accept x_i with probability  min(1, p(x_i) / (rho q(x_i))) = m(x_i) / q(x_i)
    none accepted (probability (1 - beta)^k): draw the bonus from the residual
    r(y)     = p(y) - m(y) (1 - (1 - beta)^k) / beta,    normalised (its mass is (1 - beta)^k)

Why it is exact: candidate i is the first accepted and equals y with probability
(1 - beta)^(i-1) q(y) m(y)/q(y), so P(out = y) = m(y) sum_{i<k} (1 - beta)^i + (1 - beta)^k r(y) / (1 - beta)^k
= m(y) c + r(y) = p(y), with c = (1 - (1 - beta)^k) / beta. The residual is a distribution when
r >= 0, i.e. m(y) c <= p(y) for every y. Where m = p / rho that asks c <= rho; where m = q < p / rho
it asks c <= p / q. So rho is valid when c(rho) <= max(rho, min_{p,q>0} p / q). rho = k always is
(1 - (1 - beta)^k <= k beta). Acceptance, 1 - (1 - beta(rho))^k, falls as rho grows, so the rule
takes the smallest valid rho: the paper's root of rho beta(rho) = 1 - (1 - beta(rho))^k (c = rho),
or rho = 1 when the second case already holds there (q's excess mass sits where p is zero). It is
found on two nested grids of 64 points in [1, k] (the valid set is [1, rho_1] or [rho_2, k]: the first
valid grid point, then refined; never below a valid rho by more than (k - 1) / 63^2). k = 1 gives
rho = 1: ordinary speculative sampling (accept min(1, p / q), residual norm(max(0, p - q))).

Trees: the root's children are the k candidates; the accepted child's own children are the next
node's candidates (k = 1 down a chain: the drafts "k independent chains from one prefix" of the
paper's setting, `multi:replacement=true`). Given the candidates at a node, the subtrees below
them were drawn independently of the selection, so recursing down the accepted child keeps the
law. The bonus after a fully accepted path is drawn from p at its last node.

What the draft must be, checked: at every node with several children, the children's q rows are
one and the same q (drawn i.i.d.). Siblings drawn without replacement (each later one's q gives
no mass to the earlier siblings: the `recursive` rule's drafts) or deterministic siblings (q None)
are refused with a message, never verified with a bent law. At temperature 0 the rule is greedy
verification (p is one-hot: the only lossless answer is the target's argmax, which it follows down
the tree whatever the siblings).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import DraftsmithError
from ..sampling import probs, sample, uniform
from ..types import Draft, SamplingParams, VerifyResult
from .base import VerifierBase, register_verifier

GRID = 64
SAME_Q = 1e-5  # siblings' q rows equal up to rounding (they passed the loop's renormalisation)


def kseq_rho(p: torch.Tensor, q: torch.Tensor, k: int) -> torch.Tensor:
    """The smallest valid rho in [1, k] ([] float64) for target p and drafter q ([V] each, float64):
    the first grid point where c(rho) = (1 - (1 - beta)^k) / beta <= max(rho, min p / q). No host sync."""
    if k <= 1:
        return torch.ones((), dtype=torch.float64, device=p.device)
    both = (p > 0) & (q > 0)
    r_min = torch.where(both, p / q.clamp_min(1e-300), torch.full_like(p, float("inf"))).min()  # [] (inf: no overlap)
    lo = torch.ones((), dtype=torch.float64, device=p.device)
    hi = torch.full((), float(k), dtype=torch.float64, device=p.device)
    steps = torch.linspace(0, 1, GRID, dtype=torch.float64, device=p.device)  # [G]
    for _ in range(2):
        rho = lo + (hi - lo) * steps  # [G]
        beta = torch.minimum(q[None], p[None] / rho[:, None]).sum(-1)  # [G]
        accepted = 1 - (1 - beta) ** k  # [G] = c beta
        ok = accepted <= torch.maximum(rho, r_min) * beta  # c <= max(rho, r_min), without dividing by beta
        ok[-1] = True  # rho = k (first grid) or the valid end of the bracket (second): valid up to rounding
        first = ok.to(torch.int8).argmax()  # the first valid grid point
        hi = rho[first]
        lo = rho[(first - 1).clamp_min(0)]
    return hi


def kseq(p: torch.Tensor, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """K-SEQ at one node, for k candidates drawn i.i.d. from q ([V] each). Returns (accept [V]: the
    probability a candidate of value y is accepted, min(1, p / (rho q)); residual [V]: the law of the
    bonus when no candidate is accepted, normalised; rho []). float64."""
    p, q = p.double(), q.double()
    rho = kseq_rho(p, q, k)
    m = torch.minimum(q, p / rho)  # [V]
    beta = m.sum()
    c = torch.where(beta > 0, (1 - (1 - beta) ** k) / beta.clamp_min(1e-300), torch.full_like(beta, float(k)))
    residual = (p - m * c).clamp_min(0.0)  # >= 0 exactly in real arithmetic (c <= rho); rounding clamped
    mass = residual.sum()
    residual = torch.where(mass > 0, residual / mass.clamp_min(1e-300), p)  # no mass left: p is the law
    accept = torch.where(q > 0, m / q.clamp_min(1e-300), torch.zeros_like(q))
    return accept, residual, rho


def greedy_walk(draft: Draft, p: torch.Tensor, target_logits: torch.Tensor) -> VerifyResult:
    """Temperature 0: follow the target's argmax down the draft (chain or tree)."""
    want = p[0].argmax(-1).tolist()  # [N+1]
    tokens = draft.token_ids[0].tolist()
    children = draft.tree.children if draft.parents is not None else None
    node, path = -1, []
    while True:
        kids = children.get(node, []) if children is not None else ([node + 1] if node + 1 < len(tokens) else [])
        nxt = next((c for c in kids if tokens[c] == want[node + 1]), None)
        if nxt is None:
            break
        path.append(nxt)
        node = nxt
    out = torch.tensor([[tokens[i] for i in path] + [want[node + 1]]], device=draft.token_ids.device)
    return VerifyResult(tokens=out, num_accepted=len(path), num_drafted=draft.size,
                        path=path if draft.parents is not None else None, target_logits=target_logits)


def children_of(draft: Draft) -> dict[int, list[int]]:
    """Node -> its children in order (-1: the root); a chain is the tree of one child each."""
    if draft.parents is not None:
        return draft.tree.children
    n = draft.size
    return {i: [i + 1] if i + 1 < n else [] for i in range(-1, n)}


def walk(draft: Draft, p: torch.Tensor, target_logits: torch.Tensor, pick, generator) -> VerifyResult:
    """Down the draft (chain or tree) from the root: at each node, `pick(kids, tokens, dist)` with
    the target's law `dist` [V] there gives (the accepted child, None) or (None, the bonus's law
    [V]); the accepted path and the bonus drawn from that law, as a VerifyResult."""
    tokens = draft.token_ids[0].tolist()
    children = children_of(draft)
    node, path = -1, []
    while True:
        chosen, rest = pick(children.get(node, []), tokens, p[0, node + 1])
        if chosen is None:
            bonus = int(sample(rest.unsqueeze(0), generator))
            break
        path.append(chosen)
        node = chosen
    out = torch.tensor([[tokens[i] for i in path] + [bonus]], device=draft.token_ids.device)
    return VerifyResult(tokens=out, num_accepted=len(path), num_drafted=draft.size,
                        path=path if draft.parents is not None else None, target_logits=target_logits)


@register_verifier
class SpecTrVerifier(VerifierBase):
    name: ClassVar[str] = "spectr"
    lossless: ClassVar[bool] = True
    trees: ClassVar[bool] = True
    rule = staticmethod(kseq)  # (p, q, k) -> (accept [V], residual [V], rho); tests swap it for a broken one

    def verify_row(self, draft: Draft, target_logits: torch.Tensor, params: SamplingParams,
                   generator: torch.Generator | None = None) -> VerifyResult:  # [1, N], [1, N+1, V]
        p = probs(target_logits, params)  # [1, N+1, V]
        if params.greedy:
            return greedy_walk(draft, p, target_logits)
        return walk(draft, p, target_logits, lambda kids, tokens, dist: self.pick(draft, kids, tokens, dist, generator),
                    generator)

    def pick(self, draft: Draft, kids: list[int], tokens: list[int], dist: torch.Tensor, generator):
        """K-SEQ at one node: (the accepted candidate, None) or (None, the residual law)."""
        if not kids:
            return None, dist
        q = self.shared_q(draft, kids, tokens, dist)  # [V]
        accept, residual, _ = self.rule(dist, q, len(kids))
        u = uniform((len(kids),), generator, dist.device).double()  # [k]
        ok = (u < accept[torch.tensor([tokens[c] for c in kids], device=dist.device)]).tolist()
        chosen = next((c for c, a in zip(kids, ok) if a), None)
        return (chosen, None) if chosen is not None else (None, residual.float())

    @staticmethod
    def shared_q(draft: Draft, kids: list[int], tokens: list[int], p: torch.Tensor) -> torch.Tensor:
        """The one q the candidates `kids` were drawn from, i.i.d.; refuses siblings drawn otherwise."""
        if draft.q is None:
            if len(kids) > 1:
                raise DraftsmithError(
                    f"spectr: {len(kids)} sibling candidates are deterministic proposals (q None); SpecTr's selection "
                    "needs candidates drawn i.i.d. from one q (multi:replacement=true), or verify them with "
                    "'recursive' or 'rejection'")
            return torch.nn.functional.one_hot(torch.tensor(tokens[kids[0]], device=p.device), p.shape[-1]).to(p.dtype)
        Q = draft.q[0, kids].float()  # [k, V]
        if len(kids) > 1 and float((Q - Q[0]).abs().max()) > SAME_Q:
            first = tokens[kids[0]]
            if bool((Q[1:, first] == 0).any()) and float(Q[0, first]) > 0:
                how = ("were drawn without replacement (a later sibling's q gives no mass to the first one's token); "
                       "verify them with 'recursive' or 'rejection', or draft with multi:replacement=true")
            else:
                how = "carry different q's"
            raise DraftsmithError(f"spectr: the {len(kids)} siblings {how}: SpecTr needs candidates drawn i.i.d. "
                                  "from one q")
        return Q[0]
