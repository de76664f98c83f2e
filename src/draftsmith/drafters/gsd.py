"""Graph-structured speculative decoding (Gong et al., ACL Findings 2024, arXiv 2407.16207).

A draft model's token tree repeats itself: different branches often reach the same recent
tokens ("of the", "\\n\\n", a name copied from the prompt), and from there the draft model
predicts the same continuations. GSD merges such nodes into one: the draft is a directed
acyclic graph whose shared sub-sequences are drafted once, and the graph is unrolled into a
tree (every path a distinct candidate) for the target's one verification forward.

Here: the draft model's dynamic tree (RASD's EAGLE-2-style search without a retrieval member:
at each depth the `beam` most likely nodes are expanded with their `topk` children, each depth
in one tree-masked forward over the draft model's own cache; the `max_nodes` most likely nodes
are proposed). Before a depth's forward, a node whose last `merge` tokens (the committed context
included) equal those of a node already expanded in this step, the root among them, takes that
node's distribution instead of being fed: its children are the merged node's, and the forward
is smaller. The merged node stays a distinct node of the unrolled tree, so the target verifies
every path; a node fed later below a merged one brings its unfed ancestors into its forward.

Lossless whatever `merge` does: the tree is deterministic (q = None at every temperature; the
default verifier is greedy at temperature 0 and recursive rejection over distinct candidates
otherwise, exact for one-hot q). `merge` only changes which candidates are proposed and what
drafting costs. Counters: `fed` (draft nodes forwarded) and `merged` (nodes that took another
node's distribution) since the drafter was built, its forks included.

    gsd:model=NAME_OR_FOLDER,k=5,merge=3,max_nodes=16,topk=3,beam=3
    gsd:model=[draft_model:model=NAME,vocab=0],merge=2
"""

from __future__ import annotations

from typing import ClassVar

from ..errors import DraftsmithError
from .base import DraftContext, register
from .rasd import RasdDrafter


@register
class GsdDrafter(RasdDrafter):
    name: ClassVar[str] = "gsd"
    trees: ClassVar[bool] = True

    def __init__(self, model=None, k: int = 5, merge: int = 3, max_nodes: int = 16, topk: int = 3, beam: int = 3,
                 confidence: float = 0.1):
        """model: a draft model (pack name or folder) or a `draft_model` spec in brackets.
        k: the tree's depth (a spec in brackets keeps its own k). merge: nodes whose last
        `merge` tokens agree share one distribution (0 = never: the plain dynamic tree)."""
        from .base import int_option

        merge = int_option("gsd", "merge", merge, 0)
        k = int_option("gsd", "k", k, 1)
        if model is None:
            raise DraftsmithError("gsd needs a draft model: gsd:model=NAME_OR_FOLDER (or model=[draft_model:...])")
        if isinstance(model, str) and ":" not in model:
            model = f"draft_model:model={model},k={k}"
        super().__init__(model=model, retrieval="none", max_nodes=max_nodes, model_nodes=max_nodes, topk=topk,
                         beam=beam, min_prob=0.0, deep=False, confidence=confidence)
        self.merge = merge
        self.counts = {"fed": 0, "merged": 0}  # shared by the forks (the loop drafts with one per row)
        self._ids: list[int] = []
        self._memo: dict[tuple[int, ...], int] = {}

    @property
    def fed(self) -> int:
        return self.counts["fed"]

    @property
    def merged(self) -> int:
        return self.counts["merged"]

    def propose(self, ctx: DraftContext):
        self._ids = ctx.ids
        self._memo = {self._key(None, -1): -1} if self.merge else {}  # the root's distribution comes from the sync
        return super().propose(ctx)

    def _key(self, tree, node: int) -> tuple[int, ...]:
        """The last `merge` tokens at `node` (-1: the root): its path below the root after the context."""
        path: list[int] = []
        while node >= 0 and len(path) < self.merge:
            path.append(tree.tokens[node])
            node = tree.parents[node]
        need = self.merge - len(path)
        tail = self._ids[len(self._ids) - need:] if need else []
        return tuple(tail) + tuple(reversed(path))

    def _feed(self, lm, tree, feed, L, slot, logp, width) -> None:
        """Merge, then one forward over the nodes left (and any unfed ancestor of theirs)."""
        if not self.merge:
            self.counts["fed"] += len(feed)
            return super()._feed(lm, tree, feed, L, slot, logp, width)
        todo = []
        for n in feed:
            key = self._key(tree, n)
            twin = self._memo.get(key)
            if twin is not None and twin in logp:
                logp[n] = logp[twin]  # the same recent tokens: the same continuations
                self.counts["merged"] += 1
            else:
                todo.append(n)
                self._memo.setdefault(key, n)
        if not todo:
            return
        need = set(todo)
        for n in todo:  # a node's forward attends to its ancestors' cache slots: feed the unfed ones too
            a = tree.parents[n]
            while a >= 0 and a not in slot:
                need.add(a)
                a = tree.parents[a]
        order = sorted(need)  # creation order is topological: parents first
        self.counts["fed"] += len(order)
        super()._feed(lm, tree, order, L, slot, logp, width)
