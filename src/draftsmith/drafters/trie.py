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


def position_tree(logq, topk: int, max_nodes: int) -> Draft:
    """logq [k, V], one distribution per draft position, each drawn without looking at the
    positions before it (Medusa's heads, PARD's masks) -> a tree of the best paths through each
    position's `topk` tokens: beam search on the summed log-probabilities, the best `max_nodes`
    nodes merged into one tree (deterministic nodes: q None)."""
    top = logq.topk(topk, dim=-1)  # [k, topk]
    beams: list[tuple[float, tuple[int, ...]]] = [(0.0, ())]
    ranked: list[tuple[float, tuple[int, ...]]] = []
    for i in range(logq.shape[0]):
        grown = [(s + v, path + (t,)) for s, path in beams
                 for v, t in zip(top.values[i].tolist(), top.indices[i].tolist())]
        beams = sorted(grown, reverse=True)[:max_nodes]
        ranked += beams
    ranked.sort(key=lambda sp: -sp[0])  # a prefix always scores at least as high as its extensions
    return merge_paths((p for _, p in ranked), max_nodes, logq.shape[0])

