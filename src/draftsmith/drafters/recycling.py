"""Token Recycling (Luo et al. 2024): recycle the candidates the target already computed.

Every verification forward yields the target's logits after each token it saw; their top-k
are good guesses for "what follows token t" the next time t appears. An adjacency matrix
`adj[t] = top-k successors of t` ([V, k] int32: under 2 MB for a 50k vocabulary with k = 8)
is overwritten with them after each step. To draft, a static tree template is expanded
breadth-first from the last committed token: a template node of rank r under a node with
token t takes token adj[t, r]. Training-free; the draft is deterministic (q = None).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import DraftsmithError
from ..types import Draft, VerifyResult
from .base import DraftContext, DrafterBase, register

# children per node by depth: a node of sibling rank r at depth d has max(0, B[d] - r) children
DEFAULT_BRANCHING = (6, 2, 2, 1, 1, 1)  # 23 nodes, depth 6: on this CPU a 59-node tree cost more than it gained


def template_from_branching(branching) -> list[tuple[int, int]]:
    """Breadth-first (parent template index, rank) pairs; -1 is the root."""
    nodes: list[tuple[int, int]] = []
    frontier = [(-1, 0)]  # (template index, own rank)
    for width in branching:
        nxt = []
        for index, rank in frontier:
            for r in range(max(0, width - rank) if index >= 0 else width):
                nodes.append((index, r))
                nxt.append((len(nodes) - 1, r))
        frontier = nxt
    return nodes


@register
class RecyclingDrafter(DrafterBase):
    name: ClassVar[str] = "recycling"
    trees: ClassVar[bool] = True

    def __init__(self, topk: int = 8, branching: tuple[int, ...] | str = DEFAULT_BRANCHING):
        if isinstance(branching, str):  # from the command line: "8-4-3-2"
            branching = tuple(int(b) for b in branching.replace("-", " ").split())
        if not (isinstance(topk, int) and topk >= 1) or not branching or any(b < 1 for b in branching):
            raise DraftsmithError("recycling: topk must be >= 1 and branching a non-empty list of counts >= 1")
        if max(branching) > topk:
            raise DraftsmithError(f"recycling: branching {branching} asks for more children than topk={topk}")
        self.topk = topk
        self.template = template_from_branching(branching)
        depth: list[int] = []
        for parent, _ in self.template:
            depth.append(1 if parent < 0 else depth[parent] + 1)
        self.depth = depth
        self.k = max(depth)
        self.adj: torch.Tensor | None = None
        self.last_step: list[int] = []

    def bind(self, target) -> None:
        if self.adj is None or self.adj.shape[0] != target.vocab_size:
            self.adj = torch.full((target.vocab_size, self.topk), -1, dtype=torch.int32)  # [V, k], -1 = unknown

    def fork(self) -> "RecyclingDrafter":
        """A drafter for another row sharing this one's adjacency matrix: what the target said
        before is still true, across prompts and rows."""
        other = super().fork()
        other.last_step = []
        return other

    def propose(self, ctx: DraftContext) -> Draft:
        root = ctx.ids[-1]
        self.last_step = [root]
        if ctx.max_tokens <= 0:
            return Draft.empty()
        rows: dict[int, list[int]] = {}
        node_of: dict[int, int] = {-1: -1}  # template index -> draft node index
        token_of: dict[int, int] = {-1: root}
        tokens, parents = [], []
        for t, (parent, rank) in enumerate(self.template):
            if parent not in node_of or self.depth[t] > ctx.max_tokens:
                continue  # the parent was pruned, or the budget is shorter than the tree
            ptok = token_of[parent]
            if ptok not in rows:
                rows[ptok] = self.adj[ptok].tolist()
            tok = rows[ptok][rank]
            if tok < 0:
                continue
            node_of[t], token_of[t] = len(tokens), tok
            tokens.append(tok)
            parents.append(node_of[parent])
        if not tokens:
            return Draft.empty()
        self.last_step += tokens
        return Draft(torch.tensor([tokens], dtype=torch.long), parents=torch.tensor(parents, dtype=torch.long))

    def observe(self, result: VerifyResult) -> None:
        if result.target_logits is None:
            return
        successors = result.target_logits[0].topk(self.topk, dim=-1).indices  # [N+1, k]
        self.adj[torch.tensor(self.last_step)] = successors.to(torch.int32)
