"""Goodput-aware draft length for batched decoding (SmartSpec, Liu et al. 2024).

Verification stops being nearly free as the batch grows. Each step the batched loop asks for the
draft length k (0 = plain batched decoding) that maximises expected committed tokens per second:

    k* = argmax_k  Σ_rows E[τ_row(k)] / cost(B rows × (k+1) tokens)

- E[τ_row(k)] comes from the row's recent drafting steps, (k offered, accepted) pairs; a row with
  fewer than 4 borrows the batch's pooled history (`expected_tokens`).
- Drafters that are `trimmable` (prompt lookup: the longest draft costs nothing more) are asked
  for their longest draft first, and k is chosen with every row's draft in hand: a row with no
  draft adds nothing and costs nothing extra, a row with a draft of n tokens is expected to keep
  what rows' drafts of that kind have kept (its (drafted, accepted) history, non-empty drafts
  only), cut to min(n, k). The drafts are then cut to k.
- `cost(B, w)` is a `StepCost`: the batched verification forward timed at start-up for a grid of
  batch sizes and widths (`calibrate`), times how long whole steps (drafting and verification
  included) have really taken against it lately, separately for plain (w = 1) and drafting steps.
- After `probe_every` plain steps in a row, one step drafts a single token so the estimates can
  recover.
- A safety net over the model: for each batch-size bucket (1, 2, 3-4, 5-8, 9-16, ...) the rate
  really committed by recent drafting steps and by recent plain steps (tokens per row per plain
  forward's time at that batch size) is kept; when drafting has been doing worse, the step is
  plain, and the next probe drafts the k the model wanted. A long drafting run is broken by a
  plain step so both figures stay current.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from ..cache import new_cache, remove_last


def theil_sen(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """A robust straight line y = a + c·x: c the median of the pairwise slopes, a the median of
    y - c·x. One wild timing (a busy CPU) moves it little, unlike least squares."""
    slopes = sorted((ys[j] - ys[i]) / (xs[j] - xs[i])
                    for i in range(len(xs)) for j in range(i + 1, len(xs)) if xs[j] != xs[i])
    c = slopes[len(slopes) // 2] if slopes else 0.0
    rest = sorted(y - c * x for x, y in zip(xs, ys))
    return rest[len(rest) // 2], c


class StepCost:
    """Seconds for one batched forward of `rows` rows × `width` tokens: for each timed batch size
    a robust line in width (`theil_sen`, slope kept >= 0), linearly interpolated between batch
    sizes (and extrapolated beyond the largest, never downwards)."""

    def __init__(self, points: Iterable[tuple[int, int, float]]):
        by_rows: dict[int, list[tuple[int, float]]] = {}
        for rows, width, seconds in points:
            by_rows.setdefault(rows, []).append((width, seconds))
        if not by_rows:
            raise ValueError("StepCost needs at least one (rows, width, seconds) point")
        self.lines: list[tuple[int, float, float]] = []  # (rows, seconds at width 1, seconds per extra token)
        for rows in sorted(by_rows):
            widths, secs = zip(*by_rows[rows])
            a, c = theil_sen([w - 1 for w in widths], list(secs))
            self.lines.append((rows, max(a, 1e-9), max(c, 0.0)))

    def _line(self, rows: int) -> tuple[float, float]:
        lines = self.lines
        if rows <= lines[0][0] or len(lines) == 1:
            scale = rows / lines[0][0] if rows > lines[0][0] else 1.0  # one batch size timed: proportional
            return lines[0][1] * scale, lines[0][2] * scale
        for (r0, a0, c0), (r1, a1, c1) in zip(lines, lines[1:]):
            if rows <= r1:
                f = (rows - r0) / (r1 - r0)
                return a0 + f * (a1 - a0), c0 + f * (c1 - c0)
        (r0, a0, c0), (r1, a1, c1) = lines[-2], lines[-1]
        f = (rows - r1) / (r1 - r0)
        return a1 + f * max(a1 - a0, 0.0), c1 + f * max(c1 - c0, 0.0)

    def __call__(self, rows: int, width: int) -> float:
        a, c = self._line(rows)
        return a + c * (width - 1)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def calibrate(model, config, batches: Iterable[int] = (1, 2, 4, 8, 16), widths: Iterable[int] = range(1, 10),
              context: int = 256, repeats: int = 3) -> StepCost:
    """Time the batched verification forward itself: B rows of `width` new tokens over a
    `context`-token cache with a 4-D mask (the median of `repeats` after a warm-up)."""
    points = []
    param = next(model.parameters())
    dtype, device = param.dtype, param.device
    with torch.inference_mode():
        for B in batches:
            cache = new_cache()
            model(input_ids=torch.zeros(B, context, dtype=torch.long, device=device), past_key_values=cache,
                  use_cache=True, logits_to_keep=1)
            for w in widths:
                mask = torch.zeros(B, 1, w, context + w, dtype=dtype, device=device)
                times = []
                for _ in range(repeats + 1):  # the first is a warm-up
                    synchronize(device)
                    t0 = time.perf_counter()
                    model(input_ids=torch.zeros(B, w, dtype=torch.long, device=device), attention_mask=mask,
                          past_key_values=cache, use_cache=True)
                    synchronize(device)  # a GPU runs asynchronously: time the work, not its launch
                    times.append(time.perf_counter() - t0)
                    remove_last(cache, w)
                times = sorted(times[1:])
                points.append((B, w, times[len(times) // 2]))
    return StepCost(points)


def bucket(rows: int) -> int:
    """Batch-size bucket of the safety net: 1, 2, 4 (3-4), 8 (5-8), 16 (9-16), ..."""
    return 1 << max(rows - 1, 0).bit_length()


@dataclass
class History:
    """One row's drafting steps: `spec` (k offered, accepted) for every step it was offered k > 0;
    `drafted` (draft size, accepted) for the steps its draft was not empty."""

    spec: list[tuple[int, int]] = field(default_factory=list)
    drafted: list[tuple[int, int]] = field(default_factory=list)


class SmartSpec:
    """The draft-length policy. `cost(rows, width)` predicts a forward's seconds (a `StepCost`,
    or any function for tests)."""

    def __init__(self, k_max: int, cost: Callable[[int, int], float], probe_every: int = 16, window: int = 32):
        self.k_max, self.cost, self.probe_every, self.window = k_max, cost, probe_every, window
        self.pool: deque[tuple[int, int]] = deque(maxlen=256)  # every row's recent (k offered, accepted)
        self.pool_drafted: deque[tuple[int, int]] = deque(maxlen=256)  # ... and (draft size, accepted)
        self.scale = {False: 1.0, True: 1.0}  # measured step time / predicted forward time, by width > 1
        self.nodes_per_k = 1.0  # widest draft / k of recent drafting steps: 1 for chains, more for trees
        self.plain_run = self.spec_run = 0
        self.realized: dict[tuple[int, bool], deque] = {}  # (bucket, drafted?) -> recent (tokens, seconds)

    @staticmethod
    def expected_tokens(samples, k: int) -> float:
        """E[tokens committed in a step with drafts of at most k], from (k offered, accepted)
        samples: 1 + the mean of min(accepted, k). Steps where the drafter had nothing count as 0
        (they cost the batch width all the same). A sample that accepted all it was offered says
        nothing about longer drafts; beyond it each further token counts 0.5, 0.25, ...
        Acceptance comes in bursts, which a single per-token rate would miss. With no samples,
        1 + 0.5 + ... + 0.5^k."""
        def gain(offered: int, accepted: int) -> float:
            if k <= offered or accepted < offered:
                return min(accepted, k)
            return accepted + sum(0.5 ** j for j in range(1, k - offered + 1))
        samples = list(samples)
        if not samples:
            return sum(0.5 ** j for j in range(k + 1))
        return 1.0 + sum(gain(o, a) for o, a in samples) / len(samples)

    def samples(self, own: list[tuple[int, int]], pool: deque):
        """A row's own last `window` samples once it has 4, else the batch's pooled ones."""
        return own[-self.window:] if len(own) >= 4 else pool

    def step_cost(self, rows: int, width: int) -> float:
        """Predicted whole-step seconds: the forward's cost times the measured ratio of its kind."""
        return self.cost(rows, width) * self.scale[width > 1]

    def choose_k(self, histories: list[History], sizes: list[int] | None = None) -> int:
        """The draft length for this step (the upper bound each row drafts to), from every row's
        history; with `sizes`, the rows' drafts are already made (trimmable drafters) and k
        only cuts them."""
        B, top = len(histories), self.k_max if sizes is None else min(self.k_max, max(sizes, default=0))
        expected = [0.0] * (top + 1)  # Σ_rows E[τ_row(k)]
        pooled: dict[int, list[float]] = {}  # from a pooled history, by draft size (-1: not drafted yet)
        for i, h in enumerate(histories):
            n = -1 if sizes is None else sizes[i]
            if n == 0:  # nothing drafted: the bonus token, at no extra cost
                expected = [e + 1.0 for e in expected]
                continue
            own, pool = (h.spec, self.pool) if n < 0 else (h.drafted, self.pool_drafted)
            samples = self.samples(own, pool)
            per_k = pooled.get(n) if samples is pool else None
            if per_k is None:
                per_k = [self.expected_tokens(samples, k if n < 0 else min(k, n)) for k in range(top + 1)]
                if samples is pool:
                    pooled[n] = per_k
            expected = [e + x for e, x in zip(expected, per_k)]
        best_k, best = 0, -1.0
        for k in range(top + 1):
            width = k + 1 if sizes is not None else 1 + math.ceil(k * self.nodes_per_k - 1e-9)
            goodput = expected[k] / self.step_cost(B, width)
            if goodput > best * 1.0001:
                best_k, best = k, goodput
        model_k = best_k
        if best_k > 0 and self.realized_worse(B):
            best_k = 0  # the safety net: drafting has really been doing worse at this batch size
        if top == 0:
            return 0  # nothing to draft this step: neither a plain choice nor a drafting one
        self.plain_run = self.plain_run + 1 if best_k == 0 else 0
        self.spec_run = self.spec_run + 1 if best_k > 0 else 0
        if self.plain_run > self.probe_every:  # a probe keeps the history and the net's figures alive:
            self.plain_run, best_k = 0, min(model_k or 1, top)  # at the model's k when the net overruled it
        elif self.spec_run > (self.probe_every if len(self.realized.get((bucket(B), False), ())) >= 8 else 4):
            self.spec_run, best_k = 0, 0  # and a plain step keeps the plain figure current
        return best_k

    def realized_worse(self, rows: int, min_steps: int = 8) -> bool:
        """Have recent drafting steps in this batch-size bucket committed fewer tokens per second
        than recent plain ones? Each step's rate is taken relative to the plain forward at its own
        batch size (tokens per row over seconds per `cost(rows, 1)`), so the sizes that share a
        bucket compare fairly. (False until both kinds have `min_steps` steps.)"""
        b = bucket(rows)
        spec, plain = self.realized.get((b, True), ()), self.realized.get((b, False), ())
        if len(spec) < min_steps or len(plain) < min_steps:
            return False
        rate = lambda steps: sum(t for t, _ in steps) / max(sum(s for _, s in steps), 1e-9)  # noqa: E731
        return rate(spec) < rate(plain)

    def record(self, history: History, offered: int, size: int, accepted: int) -> None:
        """One row's drafting step (k offered, the draft's size, accepted), into its history and
        the pooled ones."""
        history.spec.append((offered, accepted))
        self.pool.append((offered, accepted))
        if size > 0:
            history.drafted.append((size, accepted))
            self.pool_drafted.append((size, accepted))

    def observe_step(self, seconds: float, rows: int, width: int, tokens: int, k: int = 0) -> None:
        """Fold a whole step's measured time into the cost scale of its kind (width 1 or more),
        and its rate into the realized figures of its bucket: (tokens per row, seconds in units
        of the plain forward at this batch size). With the step's k, also how wide drafts of
        depth k really are (a tree drafter's draft at depth k has more than k nodes)."""
        drafted = width > 1
        if drafted and k > 0:
            self.nodes_per_k = 0.8 * self.nodes_per_k + 0.2 * max((width - 1) / k, 1.0)
        self.realized.setdefault((bucket(rows), drafted), deque(maxlen=16)).append(
            (tokens / rows, seconds / max(self.cost(rows, 1), 1e-9)))
        ratio = seconds / max(self.cost(rows, width), 1e-9)
        self.scale[drafted] = 0.9 * self.scale[drafted] + 0.1 * ratio
