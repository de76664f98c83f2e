"""Tree drafts: from a parent list to the attention mask, position ids and paths.

A draft tree has N nodes in topological order; `parents[i]` is the index of node i's parent,
or -1 when node i hangs off the root: the last committed token, which is fed first in the
verification forward. So the forward sees N + 1 tokens: row 0 the root, row i + 1 node i.

Each row attends to the whole cache (the committed context), to the root, to its ancestors and
to itself; its position is (cache length) + depth, the root having depth 0. A chain is the
tree with parents = [-1, 0, 1, ...], where this mask is the ordinary causal one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import torch

from .errors import DraftsmithError


def additive_mask(allow: torch.Tensor, dtype: torch.dtype, device=None) -> torch.Tensor:
    """A boolean attention mask (True = attend) -> the additive one the models take: 0 where
    allowed, the dtype's most negative value elsewhere; same shape, on `device`."""
    allow = allow.to(device) if device is not None else allow
    return torch.zeros(allow.shape, dtype=dtype, device=allow.device).masked_fill_(~allow, torch.finfo(dtype).min)


@dataclass(frozen=True)
class Tree:
    parents: tuple[int, ...]  # node -> parent node, -1 = the root

    @staticmethod
    def from_parents(parents) -> Tree:
        parents = tuple(int(p) for p in (parents.tolist() if isinstance(parents, torch.Tensor) else parents))
        for i, p in enumerate(parents):
            if not -1 <= p < i:
                raise DraftsmithError(f"draft tree: node {i} has parent {p}; parents must come first (topological order)")
        return Tree(parents)

    @staticmethod
    @lru_cache(maxsize=256)
    def chain(n: int) -> Tree:
        """The tree of a chain of n nodes (parents -1, 0, 1, ...)."""
        return Tree(tuple(range(-1, n - 1)))

    @property
    def size(self) -> int:
        return len(self.parents)

    @cached_property
    def depth(self) -> list[int]:
        """Depth of each node below the root: root children have depth 1."""
        out: list[int] = []
        for p in self.parents:
            out.append(1 if p < 0 else out[p] + 1)
        return out

    @cached_property
    def children(self) -> dict[int, list[int]]:
        """Node -> its children in order (-1: the root's children)."""
        kids: dict[int, list[int]] = {-1: []}
        for i, p in enumerate(self.parents):
            kids.setdefault(i, [])
            kids[p].append(i)
        return kids

    @cached_property
    def ancestry(self) -> torch.Tensor:
        """[N+1, N+1] bool: row attends to column (root row/column 0, node i at i + 1)."""
        n = self.size
        allow = torch.zeros(n + 1, n + 1, dtype=torch.bool)
        allow[:, 0] = True
        for i, p in enumerate(self.parents):
            if p >= 0:
                allow[i + 1] = allow[p + 1]
            allow[i + 1, 0] = True
            allow[i + 1, i + 1] = True
        allow[0, 0] = True
        return allow

    def attention_mask(self, past: int, dtype: torch.dtype, device=None) -> torch.Tensor:
        """[1, 1, N+1, past+N+1] additive mask for the verification forward."""
        allow = torch.cat([torch.ones(self.size + 1, past, dtype=torch.bool), self.ancestry], dim=1)
        return additive_mask(allow, dtype, device)[None, None]

    def position_ids(self, past: int, device=None) -> torch.Tensor:
        """[1, N+1] positions: the root at `past`, a node at past + depth."""
        return torch.tensor([[past] + [past + d for d in self.depth]], device=device)

    def path_to(self, node: int) -> list[int]:
        """Nodes from the root's child down to `node`."""
        path = []
        while node >= 0:
            path.append(node)
            node = self.parents[node]
        return path[::-1]
