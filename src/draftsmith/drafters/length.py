"""Choosing the draft length k each step.

`AdaptiveLength` picks the k that maximises expected tokens per unit of time, from the measured
per-token acceptance rate alpha and the cost c of one draft token relative to one target
step (Leviathan et al. 2023, section 3.4):

    E[tau](k) = (1 - alpha^(k+1)) / (1 - alpha)        tokens per step, bonus included
    cost(k)   = 1 + c * k                              in target-step units
    k*        = argmax_k E[tau](k) / cost(k),  k in 0..k_max

k* = 0 means "plain decoding is faster": the drafter then stays quiet, except for a one-token
probe every `probe_every` steps so that alpha keeps being measured.
"""

from __future__ import annotations


class AdaptiveLength:
    def __init__(self, k_max: int, *, prior_alpha: float = 0.6, decay: float = 0.9, probe_every: int = 16):
        self.k_max = k_max
        self.decay = decay
        self.probe_every = probe_every
        # discounted counts of accept/reject trials, started from a weak prior
        self.hits, self.trials = 2 * prior_alpha, 2.0
        self.quiet_steps = 0

    @property
    def alpha(self) -> float:
        return min(self.hits / self.trials, 0.999)

    def choose(self, cost_ratio: float) -> int:
        a = self.alpha
        best_k, best_rate = 0, 1.0  # k = 0: one token per one step
        for k in range(1, self.k_max + 1):
            rate = (1 - a ** (k + 1)) / (1 - a) / (1 + cost_ratio * k)
            if rate > best_rate:
                best_k, best_rate = k, rate
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
