"""Per-row draft length.

`AdaptiveLength` picks the k that maximises expected tokens per unit of time, from the measured
per-token acceptance rate alpha and the cost c of one draft token relative to one target
step (Leviathan et al. 2023, section 3.4):

    E[tau](k) = (1 - alpha^(k+1)) / (1 - alpha)        tokens per step, bonus included
    cost(k)   = 1 + c * k                              in target-step units
    k*        = argmax_k E[tau](k) / cost(k),  k in 0..cap

The rate rises to one peak and then falls (E[tau] is concave in k, cost linear), so the search
stops at the first k that does worse than the best so far: a few iterations, whatever the cap.
k* = 0 means "plain decoding is faster": the row then drafts nothing, except for a one-token
probe every `probe_every` steps so that alpha keeps being measured.
"""

from __future__ import annotations

from typing import Protocol


class LengthPolicy(Protocol):
    def choose(self, cap: int) -> int: ...  # the draft length for this step, 0..cap
    def update(self, drafted: int, accepted: int) -> None: ...


class FixedLength:
    """Always the cap: the drafter's k, cut by budget and context."""

    def choose(self, cap: int) -> int:
        return cap

    def update(self, drafted: int, accepted: int) -> None:
        pass


class AdaptiveLength:
    def __init__(self, cost_ratio: float, *, prior_alpha: float = 0.6, decay: float = 0.9, probe_every: int = 16):
        self.cost_ratio = cost_ratio
        self.decay = decay
        self.probe_every = probe_every
        # discounted counts of accept/reject trials, started from a weak prior
        self.hits, self.trials = 2 * prior_alpha, 2.0
        self.quiet_steps = 0

    @property
    def alpha(self) -> float:
        return min(self.hits / self.trials, 0.999)

    def choose(self, cap: int) -> int:
        if cap <= 0:
            return 0
        a, c = self.alpha, self.cost_ratio
        best_k, best_rate = 0, 1.0  # k = 0: one token per one step
        for k in range(1, cap + 1):
            rate = (1 - a ** (k + 1)) / (1 - a) / (1 + c * k)
            if rate > best_rate:
                best_k, best_rate = k, rate
            else:
                break  # past the peak: each further token adds alpha^k < the cost it adds
        if best_k == 0:
            self.quiet_steps += 1
            if self.quiet_steps >= self.probe_every:
                self.quiet_steps = 0
                return 1
        return best_k

    def update(self, drafted: int, accepted: int) -> None:
        if drafted == 0:
            return
        trials = accepted + (1 if accepted < drafted else 0)  # tokens tried until the first rejection
        self.hits = self.decay * self.hits + accepted
        self.trials = self.decay * self.trials + trials


def row_policy(drafter) -> LengthPolicy:
    """The row-level policy a drafter asks for (its declared `adaptive` and `cost_ratio`)."""
    return AdaptiveLength(drafter.cost_ratio) if drafter.adaptive else FixedLength()
