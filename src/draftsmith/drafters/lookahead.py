"""Lookahead decoding (Fu et al. 2024): Jacobi iteration and an n-gram pool, verified in the
same target forward as the draft.

Each step's tree hangs two kinds of branch off the last committed token:
- the *lookahead branch*: a window of W guessed tokens (a chain). Feeding it through the target
  is one Jacobi iteration: the target's prediction after window position i becomes the next
  guess for position i + 1 (guesses for positions now committed are dropped, new ones filled
  from the context);
- the *verification branch*: up to G n-grams from the pool that start with the last committed
  token.
Both are ordinary draft paths, verified losslessly like any tree (q = None: deterministic).

The pool learns n-grams from the Jacobi trajectory: with the guesses of the last N - 1
iterations kept by absolute position, the tokens along a diagonal (guess at position p in
iteration s, at p + 1 in iteration s + 1, ...) followed by the newest prediction form an n-gram
in which each token was predicted after the one before it.
"""

from __future__ import annotations

from collections import deque
from typing import ClassVar

import torch

from ..errors import DraftsmithError
from ..sampling import greedy
from ..types import VerifyResult
from .base import DraftContext, DrafterBase, register
from .trie import merge_paths


@register
class LookaheadDrafter(DrafterBase):
    name: ClassVar[str] = "lookahead"
    trees: ClassVar[bool] = True

    def __init__(self, window: int = 5, ngram: int = 4, guesses: int = 5, seed: int = 0):
        """window: W, Jacobi guesses per step. ngram: N, length of pool n-grams (the first
        token is the key, N - 1 are drafted). guesses: G, pool candidates verified per step."""
        if not all(isinstance(v, int) for v in (window, ngram, guesses)) or window < 1 or ngram < 2 or guesses < 0:
            raise DraftsmithError("lookahead: need window >= 1, ngram >= 2, guesses >= 0 (integers)")
        self.W, self.N, self.G = window, ngram, guesses
        self.k = window  # the window is the deepest path
        self.seed = seed
        self.pool: dict[int, list[tuple[int, ...]]] = {}  # first token -> continuations, newest first
        self.reset_window()

    def reset_window(self) -> None:
        self.levels: deque[dict[int, int]] = deque(maxlen=self.N - 1)  # past guesses: position -> token
        self.predicted: dict[int, int] = {}  # newest predictions: position -> token
        self.window_at: list[int] = []  # absolute positions of this step's window nodes
        self.window_nodes: list[int] = []  # their draft node indices
        self.generator = torch.Generator().manual_seed(self.seed)

    def prefill(self, prompt_ids: list[int], features=None) -> None:
        self.reset_window()  # the pool is kept (shared by every fork): n-grams stay true across prompts

    def _fill(self, ids: list[int]) -> int:
        """A guess for a position nothing predicted yet: a random context token (the paper
        initialises the window from the prompt)."""
        return ids[int(torch.randint(len(ids), (1,), generator=self.generator))]

    def propose(self, ctx: DraftContext):
        L, last = len(ctx.ids), ctx.ids[-1]
        depth = min(self.W, ctx.max_tokens)
        if depth <= 0:
            self.window_nodes = []
            return merge_paths([], 0, 0)
        window = [self.predicted.get(L + i, None) for i in range(depth)]
        window = [t if t is not None else self._fill(ctx.ids) for t in window]
        candidates = self.pool.get(last, [])[: self.G]
        draft = merge_paths([window, *candidates], max_nodes=depth + self.G * (self.N - 1), max_depth=max(depth, 1))
        # the window is the first path, so its nodes are 0..depth-1 whatever the candidates share
        self.window_at = [L + i for i in range(depth)]
        self.window_nodes = list(range(depth))
        self.levels.append(dict(zip(self.window_at, window)))
        self.committed = L
        return draft

    def observe(self, result: VerifyResult) -> None:
        if result.target_logits is None or not self.window_nodes or result.num_drafted < len(self.window_nodes):
            return
        best = greedy(result.target_logits[0]).tolist()  # [N + 1]: row 0 is the root
        # row 0 predicts position L (the root is the last committed token); node j at position p predicts p + 1
        self.predicted = {self.committed: best[0]}
        for node, pos in zip(self.window_nodes, self.window_at):
            self.predicted[pos + 1] = best[node + 1]
        self._collect()

    def _collect(self) -> None:
        """Add the trajectory's diagonal n-grams to the pool."""
        levels = list(self.levels)
        if len(levels) < self.N - 1:
            return
        for start in levels[0]:
            gram = [levels[d].get(start + d) for d in range(self.N - 1)] + [self.predicted.get(start + self.N - 1)]
            if any(t is None for t in gram):
                continue
            key, cont = gram[0], tuple(gram[1:])
            seen = self.pool.setdefault(key, [])
            if cont in seen:
                seen.remove(cont)
            seen.insert(0, cont)
            del seen[max(self.G, 1) * 4:]
