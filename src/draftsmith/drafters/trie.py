"""Merge candidate continuations into one draft tree (shared prefixes become shared nodes)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from ..types import Draft


def merge_paths(paths: Iterable[Sequence[int]], max_nodes: int, max_depth: int) -> Draft:
    """Candidates in priority order -> a tree of at most `max_nodes` nodes and `max_depth`
    levels: each candidate adds the nodes its prefix does not share with earlier ones, and is
    cut where the node budget runs out. One candidate gives a chain."""
    tokens: list[int] = []
    parents: list[int] = []
    child: dict[tuple[int, int], int] = {}  # (parent node, token) -> node
    for path in paths:
        node = -1
        for tok in list(path)[:max_depth]:
            key = (node, int(tok))
            if key not in child:
                if len(tokens) >= max_nodes:
                    break
                child[key] = len(tokens)
                tokens.append(int(tok))
                parents.append(node)
            node = child[key]
        if len(tokens) >= max_nodes:
            break
    if not tokens:
        return Draft.empty()
    ids = torch.tensor([tokens], dtype=torch.long)  # [1, N]
    if all(p == i - 1 for i, p in enumerate(parents)):
        return Draft(ids)  # a chain
    return Draft(ids, parents=torch.tensor(parents, dtype=torch.long))
