"""Speculative decoding over continuous-valued tokens (Continuous Speculative Decoding, Wang et al.
2024, arXiv 2411.11925, for autoregressive image models whose tokens are real vectors drawn from
a density per position, e.g. a diffusion or mixture head): lossless.

Glossary as everywhere in draftsmith, with densities in place of probability vectors:
    p_i   the target's density of token i given the prefix and draft[:i]   (a `Density`)
    q_i   the drafter's density of draft token i                          (a `Density`)
    x_i   draft token i, drawn from q_i                                   # [D]

Verification of a chain x_0..x_{N-1} (one target call over prefix + draft gives p_0..p_N):
    accept x_i with probability min(1, p_i(x_i) / q_i(x_i)), in order, stopping at the first rejection;
    on rejecting x_i, the next token is drawn from the residual  r(y) ∝ max(0, p_i(y) - q_i(y));
    when every draft token is accepted, the bonus is drawn from p_N.
A discrete vocabulary normalizes max(0, p - q) by summing it; a density cannot be summed, so the
residual is drawn by acceptance-rejection from p: y ~ p_i, kept with probability
max(0, 1 - q_i(y) / p_i(y)) = r(y)·Z / p_i(y) <= 1 (Z = the total variation between p_i and q_i).
Given a rejection, a try succeeds with probability Z; a rejection itself happens with probability
Z, so a step costs one extra draw of p in expectation, however close p and q are. The tries are
bounded (`max_draws`): past them the token is drawn from p_i and counted in `fallbacks`; this
happens with probability at most Z·(1 - Z)^max_draws <= 1 / (e·max_draws) per rejection
(5.6e-6 at the default 65,536), the only departure from the target's distribution, and reported.

Densities carry `log_prob(x [n, D]) -> [n]` and `sample(n, generator) -> [n, D]`: explicit
generators (torch.distributions cannot take one). `Gaussian` (diagonal) and `GaussianMixture` are
provided; any object with those two methods works.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from .errors import DraftsmithError
from .sampling import uniform


class Density(Protocol):
    def log_prob(self, x: torch.Tensor) -> torch.Tensor: ...  # [n, D] -> [n]

    def sample(self, n: int, generator: torch.Generator | None) -> torch.Tensor: ...  # -> [n, D]


class Gaussian:
    """A diagonal Gaussian: mean [D], std [D] (> 0)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)  # [D]
        self.std = torch.as_tensor(std, dtype=torch.float64).reshape(-1).expand_as(self.mean)  # [D]
        if not bool((self.std > 0).all()):
            raise DraftsmithError(f"Gaussian: std must be > 0, got {self.std.tolist()}")

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.to(self.mean) - self.mean) / self.std  # [n, D]
        return (-0.5 * z * z - self.std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)

    def sample(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        eps = torch.randn((n, self.mean.numel()), generator=generator, dtype=torch.float64)
        return self.mean + self.std * eps


class GaussianMixture:
    """weights [M] (summing to 1), means [M, D], stds [M, D]."""

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, stds: torch.Tensor):
        self.weights = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)  # [M]
        if not bool((self.weights >= 0).all()) or abs(float(self.weights.sum()) - 1) > 1e-6:
            raise DraftsmithError(f"GaussianMixture: weights must be >= 0 and sum to 1, got {self.weights.tolist()}")
        means = torch.as_tensor(means, dtype=torch.float64)
        means = means.reshape(self.weights.numel(), -1)  # [M, D]
        self.parts = [Gaussian(m, s) for m, s in zip(means, torch.as_tensor(stds, dtype=torch.float64)
                                                     .reshape(means.shape[0], -1).expand_as(means))]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.stack([g.log_prob(x) for g in self.parts], -1)  # [n, M]
        return torch.logsumexp(parts + self.weights.log(), -1)

    def sample(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        which = torch.multinomial(self.weights, n, replacement=True, generator=generator)  # [n]
        draws = torch.stack([g.sample(n, generator) for g in self.parts], 1)  # [n, M, D]
        return draws[torch.arange(n), which]


@dataclass
class ContinuousStats:
    drafted: int = 0
    accepted: int = 0
    rejections: int = 0  # steps that ended at a rejected draft token
    residual_draws: int = 0  # draws of p spent on residuals
    fallbacks: int = 0  # residuals that ran past max_draws and were drawn from p (see the module docstring)
    per_step: list[int] = field(default_factory=list)  # tokens committed per step (τ's samples)

    @property
    def steps(self) -> int:
        """Target calls (one per step)."""
        return len(self.per_step)

    @property
    def tau(self) -> float:
        """Mean tokens committed per target call (the bonus included)."""
        return sum(self.per_step) / max(len(self.per_step), 1)


def residual_sample(p: Density, q: Density, generator: torch.Generator | None, *, max_draws: int = 65536,
                    batch: int = 64) -> tuple[torch.Tensor, int, bool]:
    """A draw from r ∝ max(0, p - q) by acceptance-rejection from p -> (token [D], draws of p, fell back)."""
    used = 0
    while used < max_draws:
        y = p.sample(batch, generator)  # [b, D]
        keep = 1.0 - torch.exp(q.log_prob(y) - p.log_prob(y))  # [b]: max(0, ·) below via the comparison
        u = uniform(keep.shape, generator, "cpu").to(keep)
        hit = (u < keep).nonzero()
        if hit.numel():
            first = int(hit[0, 0])
            return y[first], used + first + 1, False
        used += batch
    return p.sample(1, generator)[0], used + 1, True


def verify_chain(draft: torch.Tensor, p: list[Density], q: list[Density], generator: torch.Generator | None,
                 stats: ContinuousStats | None = None, *, max_draws: int = 65536) -> tuple[int, torch.Tensor]:
    """draft [N, D] drawn from q (N densities), p the target's N + 1 densities -> (accepted count,
    the next token [D]: the residual's draw at the first rejection, else the bonus from p[N])."""
    n = draft.shape[0]
    if len(q) != n or len(p) != n + 1:
        raise DraftsmithError(f"verify_chain: {n} draft tokens need {n} drafter densities and {n + 1} target "
                              f"densities, got {len(q)} and {len(p)}")
    stats = stats if stats is not None else ContinuousStats()
    for i in range(n):
        x = draft[i:i + 1]  # [1, D]
        log_ratio = float(p[i].log_prob(x)[0] - q[i].log_prob(x)[0])
        u = float(uniform((1,), generator, "cpu")[0])
        if u == 0.0 or math.log(u) < log_ratio:  # u < p/q, in logs
            continue
        token, draws, fell_back = residual_sample(p[i], q[i], generator, max_draws=max_draws)
        stats.rejections += 1
        stats.residual_draws += draws
        stats.fallbacks += int(fell_back)
        return i, token
    return n, p[n].sample(1, generator)[0]


Target = Callable[[torch.Tensor], list]  # sequence [T, D] -> T densities: p of the token after seq[:1] .. seq[:T]
Drafter = Callable[[torch.Tensor], Density]  # sequence [T, D] -> q of the next token


def generate(target: Target, drafter: Drafter | None, prompt: torch.Tensor, n: int, k: int,
             generator: torch.Generator | None, stats: ContinuousStats | None = None, *,
             max_draws: int = 65536) -> torch.Tensor:
    """prompt [T0, D] -> its continuation [n, D]: propose k tokens from the drafter, verify them in
    one target call, commit the accepted ones and the next token, repeat (drafter None: plain
    sampling from the target, one token per call). `target(seq)` returns the target's density of the
    token after each prefix seq[:1] .. seq[:T] (T densities, as one causal forward gives them; the
    first T0 - 1 may be None: only the last prompt position's and the draft's are read)."""
    if not isinstance(k, int) or k < 0 or not isinstance(n, int) or n < 1:
        raise DraftsmithError(f"generate: k must be an integer >= 0 and n >= 1, got k={k!r}, n={n!r}")
    stats = stats if stats is not None else ContinuousStats()
    seq = torch.as_tensor(prompt, dtype=torch.float64)
    if seq.ndim != 2 or seq.shape[0] < 1:
        raise DraftsmithError(f"generate: prompt must be [T >= 1, D], got shape {tuple(seq.shape)}")
    start = seq.shape[0]
    while seq.shape[0] - start < n:
        room = n - (seq.shape[0] - start)
        kk = min(k, room - 1) if drafter is not None else 0  # never draft past the end
        draft, qs, ctx = [], [], seq
        for _ in range(kk):  # propose
            qi = drafter(ctx)
            x = qi.sample(1, generator)  # [1, D]
            draft.append(x[0])
            qs.append(qi)
            ctx = torch.cat([ctx, x])
        draft_t = torch.stack(draft) if draft else seq.new_zeros((0, seq.shape[1]))  # [kk, D]
        ps = list(target(torch.cat([seq, draft_t])))[seq.shape[0] - 1:]  # verify: one call, kk + 1 densities
        accepted, nxt = verify_chain(draft_t, ps, qs, generator, stats, max_draws=max_draws)
        seq = torch.cat([seq, draft_t[:accepted], nxt.unsqueeze(0)])  # commit
        stats.drafted += kk
        stats.accepted += accepted
        stats.per_step.append(accepted + 1)
    return seq[start:start + n]


def overlap(p: Density, q: Density, lo: float = -10.0, hi: float = 10.0, points: int = 40001) -> float:
    """∫ min(p, q) of two one-dimensional densities on a grid over [lo, hi]: 1 - TV(p, q), the
    probability that a draft drawn from q is accepted."""
    grid = torch.linspace(lo, hi, points, dtype=torch.float64).unsqueeze(-1)  # [points, 1]
    both = torch.minimum(p.log_prob(grid).exp(), q.log_prob(grid).exp())  # [points]
    return float(both.sum()) * (hi - lo) / (points - 1)


def ks_pvalue(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov test of samples a [n] and b [m]: the asymptotic p-value of their
    largest CDF gap (what the distribution test and benchmarks/continuous_sd.py check against)."""
    a, b = a.double().sort().values, b.double().sort().values
    grid = torch.cat([a, b]).sort().values
    d = float((torch.searchsorted(a, grid, right=True).double() / a.numel()
               - torch.searchsorted(b, grid, right=True).double() / b.numel()).abs().max())
    ne = a.numel() * b.numel() / (a.numel() + b.numel())
    lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d
    p = 2 * sum((-1) ** (j - 1) * math.exp(-2 * j * j * lam * lam) for j in range(1, 101))
    return min(max(p, 0.0), 1.0)
