"""The nouns of speculative decoding, shared by every module.

Glossary (used everywhere in draftsmith):
    target     the model whose output we must reproduce
    drafter    whatever proposes tokens (a small model, an n-gram table, ...)
    draft      one step's proposal: token ids, their parents, and q where the drafter has it
    step       one target forward (one verification)
    accepted   draft tokens kept in a step
    bonus      the token the target itself adds at the end of every step
    tau        tokens emitted per step = accepted + 1 (autoregressive decoding has tau = 1)
    p, q       the target's and the drafter's next-token distributions
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import torch

from .errors import DraftsmithError
from .tree import Tree


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. `temperature < 1e-5` is greedy; top-k/top-p apply to p and q alike."""

    temperature: float = 0.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    max_new_tokens: int = 128
    stop: tuple[str, ...] = ()  # stop strings: output ends before the first one
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):  # a single string is a common slip; accept it
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        t, k, p, n = self.temperature, self.top_k, self.top_p, self.max_new_tokens
        if not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0 or t > 100:
            raise DraftsmithError(f"temperature must be a number in [0, 100], got {t!r}")
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise DraftsmithError(f"top_k must be an integer >= 0 (0 = off), got {k!r}")
        if not isinstance(p, (int, float)) or not math.isfinite(p) or not 0 < p <= 1:
            raise DraftsmithError(f"top_p must be in (0, 1], got {p!r}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise DraftsmithError(f"max_new_tokens must be an integer >= 1, got {n!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise DraftsmithError(f"stop strings must be non-empty strings, got {self.stop!r}")

    @property
    def greedy(self) -> bool:
        """Temperature 0, or so close to it (< 1e-5, as vLLM) that dividing by it overflows."""
        return self.temperature < 1e-5


@dataclass(frozen=True)
class Draft:
    """One step's proposal: N nodes in topological order. With `parents` None it is a chain
    (node i's parent is node i-1, node 0 hangs off the last committed token); otherwise a tree
    (parent -1 = the last committed token; see tree.py). `q[:, i]` is the distribution node i
    was drawn from; `q` is None for deterministic proposals (treated as one-hot)."""

    token_ids: torch.Tensor  # [B, N]
    q: torch.Tensor | None = None  # [B, N, V]
    parents: torch.Tensor | None = None  # [N]; None = chain

    @property
    def size(self) -> int:
        return self.token_ids.shape[-1]

    @cached_property
    def tree(self) -> Tree | None:
        """The tree shape (checked once, shared by the forward and the verifier); None = chain."""
        return Tree.from_parents(self.parents) if self.parents is not None else None

    @staticmethod
    def empty(batch: int = 1, device: torch.device | str = "cpu") -> Draft:
        return Draft(torch.empty(batch, 0, dtype=torch.long, device=device))

    def row(self, b: int) -> Draft:
        """Row b of a batch of drafts, as a batch of one ([1, N])."""
        return Draft(self.token_ids[b:b + 1], None if self.q is None else self.q[b:b + 1], self.parents)

    def truncate(self, n: int) -> Draft:
        """The chain's first n nodes (a prefix of a chain is itself a valid draft: each node was
        proposed given the ones before it)."""
        if self.parents is not None:
            raise DraftsmithError("only a chain draft can be truncated")
        if n >= self.size:
            return self
        return Draft(self.token_ids[:, :n], None if self.q is None else self.q[:, :n])

    def first(self, n: int) -> Draft:
        """At most n nodes (a memory budget's cap). A chain: its first n. A deterministic tree (q
        None): its first n nodes in topological order, a tree again (every kept node's parent is
        kept), and any deterministic tree verifies losslessly. A sampled tree (q given): the path
        of first children, cut to n, a chain each of whose nodes was drawn from q given the ones
        before it (dropping some sampled siblings could change what a multi-draft rule assumes of
        them)."""
        if n >= self.size:
            return self
        if self.parents is None:
            return self.truncate(n)
        if self.q is None:
            parents = self.parents[:n]
            if all(int(p) == i - 1 for i, p in enumerate(parents.tolist())):
                return Draft(self.token_ids[:, :n])
            return Draft(self.token_ids[:, :n], parents=parents)
        path, node, parents = [], -1, self.parents.tolist()
        while len(path) < n:
            children = [i for i, p in enumerate(parents) if p == node]
            if not children:
                break
            node = children[0]
            path.append(node)
        return Draft(self.token_ids[:, path], self.q[:, path])


@dataclass(frozen=True)
class VerifyResult:
    """What one step keeps: the accepted draft tokens followed by the bonus token."""

    tokens: torch.Tensor  # [B, n_accepted + 1]
    num_accepted: int
    num_drafted: int
    path: list[int] | None = None  # tree drafts: the accepted nodes, root's child first
    target_logits: torch.Tensor | None = None  # [B, N+1, V] the step's logits, for drafters that learn from them
    hidden: torch.Tensor | None = None  # [B, n_accepted + 1, H] target's last hidden states of the root and the
    #                                     accepted nodes (set by the loop for drafters with needs_hidden_states)


@dataclass
class RunStats:
    """Per-run numbers. tau counts the bonus token; tokens cut by EOS, a stop string or
    max_new_tokens are not counted."""

    new_tokens: int = 0
    steps: int = 0
    drafted: int = 0
    accepted: int = 0
    wall_time: float = 0.0  # s, whole generation including prefill
    prefill_time: float = 0.0
    drafter_time: float = 0.0  # s spent in drafter.propose / observe
    target_time: float = 0.0  # s in the target's verification forwards (batched: each step's whole forward)
    accepted_per_step: list[int] = field(default_factory=list)
    drafted_per_step: list[int] = field(default_factory=list)
    finish_reason: str = "length"  # "length" | "stop" (EOS or stop string) | "error"
    lossless: bool = True  # False: a lossy acceptance rule decided this run (outputs may differ from the target's)

    @property
    def tau(self) -> float:
        """Mean tokens emitted per step (acceptance length, bonus included)."""
        return self.new_tokens / self.steps if self.steps else 0.0

    @property
    def acceptance_rate(self) -> float:
        """Accepted draft tokens / drafted tokens, over the whole run."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.wall_time if self.wall_time else 0.0

    @property
    def drafter_share(self) -> float:
        return self.drafter_time / self.wall_time if self.wall_time else 0.0

    def as_dict(self) -> dict:
        return {
            "new_tokens": self.new_tokens,
            "steps": self.steps,
            "tau": round(self.tau, 4),
            "drafted": self.drafted,
            "accepted": self.accepted,
            "acceptance_rate": round(self.acceptance_rate, 4),
            "wall_time_s": round(self.wall_time, 4),
            "prefill_time_s": round(self.prefill_time, 4),
            "tokens_per_s": round(self.tokens_per_second, 3),
            "drafter_time_s": round(self.drafter_time, 4),
            "drafter_share": round(self.drafter_share, 4),
            "target_time_s": round(self.target_time, 4),
            "finish_reason": self.finish_reason,
            "lossless": self.lossless,
        }


@dataclass
class GenerationResult:
    token_ids: list[int]
    text: str | None
    stats: RunStats
