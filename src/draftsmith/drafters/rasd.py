"""RASD: Retrieval-Augmented Speculative Decoding (Quan et al. 2025, arXiv 2503.03434).

A model drafter and a retrieval drafter propose together, as one tree:

1. retrieval   a retrieval drafter (`retrieval=`, any drafter without hidden states: `ngram`,
               `hierarchy:corpus=none` for several continuations of the longest matching
               suffix, `suffix`, ...) proposes its candidates (a chain or a tree);
2. model tree  the model drafter (`model=`) drafts its own tree: for `draft_model`, an EAGLE-2
               style dynamic tree (at each depth the `beam` most likely nodes so far, by the
               product of the draft model's probabilities along the path, are expanded with their
               `topk` children, each depth in one tree-masked forward of the draft model over its
               own KV cache; the `model_nodes` most likely nodes are kept); for `eagle`, the head's
               own dynamic tree (its `tree_nodes`, `topk`, `beam`, `k`);
3. pruning     with `min_prob` > 0, a retrieved node the model tree does not already hold is
               dropped, with everything below it, when the draft model gives its token a
               probability below `min_prob` (RASD's tree pruning by the draft model's
               distribution). The draft model scores the retrieved nodes in the forwards that build
               its own tree: each depth's forward feeds the retrieved nodes of that depth beside the
               beam, so the distributions after them come with it; retrieved nodes deeper than the
               model tree are scored by ONE more forward over all of them with a tree mask
               (`deep=true`; `deep=false` keeps them unscored). A token the draft model cannot emit
               (outside its draft vocabulary) is not judged: kept. An `eagle` member's distribution
               is known at the root only (its features for deeper nodes stay inside its tree
               search), so with eagle only the retrieved first tokens are pruned. With min_prob = 0
               (the default) nothing is scored and no forward is spent on retrieved nodes: on the
               shipped 2-layer drafter for SmolLM2-135M, pruning lowered the acceptance length in
               every category measured (correct copied tokens often get q < 1e-3 from it; bf16,
               greedy, 5 Spec-Bench prompts, 48 tokens: mean tau 2.56 at min_prob 0, 2.50 at 1e-4,
               2.17 at 1e-3, 2.03 at 5e-3) while saving 5-35% of the nodes;
4. fusion      the retrieved tree is merged into the model tree by longest prefix match: a
               retrieved node whose parent path and token match a model node IS that node (shared),
               and the rest hangs where its prefix ends. Within `max_nodes` nodes in all: the model
               tree first (its `model_nodes` best), then the retrieved nodes in the retrieval
               drafter's own order while the budget lasts. A retrieval drafter that proposes
               nothing leaves the model tree alone.

Probabilities used for pruning and the tree search are the draft model's plain softmax
(temperature 1, no top-k/top-p), whatever the request's sampling: they only choose which tokens
to propose. The tree is deterministic (q = None) at every temperature: at T > 0 one q could not
honestly describe a tree mixing retrieved nodes and draft-model nodes, and recursive rejection
with one-hot q over distinct siblings keeps the target's distribution exactly (the retrieval
drafter's own q, if any, is dropped: its tokens are then proposals like the others, drawn
independently of the verification's random numbers).

The model member observes every step's result as it is (an eagle head gets the target's hidden
states of the accepted path, whichever member proposed it: this drafter asks for them when its
member needs them); the retrieval member observes it in terms of its own draft (its nodes along
the accepted path; the target's logits after its nodes when all of them were proposed). The draft
model's cache is rolled back to the committed tokens after each propose (the tree's nodes are
cropped away) and is fed the accepted tokens with the next bonus token in the next step's first
forward, as `draft_model` does.

Options: `model` (the model drafter's spec: `draft_model:model=NAME[,k=5,vocab=...]` or
`eagle:tree_nodes=N[,...]`; its `k` is the model tree's depth; a draft model's `adaptive`,
`confidence` and `cost_ratio` do not apply), `retrieval` (`ngram`), `max_nodes` (32),
`model_nodes` (12), `topk` (3), `beam` (3) and `confidence` (0.1: stop growing the tree once its
best path's probability is below this; saved a fifth to a third of the drafter's time at a small
cost in tau on the measured prompts) for draft_model, `min_prob`
(0 = no pruning), `deep` (true). A bracketed value is the member's spec, commas and all:
`rasd:model=[draft_model:model=smollm2-135m-instruct-drafter,k=4],retrieval=[ngram],max_nodes=32`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import ClassVar

import torch

from ..cache import sliding_window
from ..errors import DraftsmithError, IncompatibleDrafterError
from ..tree import additive_mask
from ..types import Draft, VerifyResult
from .base import DraftContext, DrafterBase, register
from .draft_model import DraftModelDrafter


def _member(spec, role: str) -> DrafterBase:
    """A member drafter from a spec string, a one-element spec list, a dict or an instance."""
    from . import build_drafter  # the registry module imports this one

    if isinstance(spec, (list, tuple)):  # a bracketed value: parse_spec keeps a member's options with it
        if len(spec) != 1:
            raise DraftsmithError(f"rasd: {role}= takes one drafter spec (NAME:key=value,...), got {list(spec)}")
        spec = str(spec[0])
    if spec is None:
        raise DraftsmithError(f"rasd needs a {role} drafter: rasd:model=[draft_model:model=NAME],retrieval=[ngram]")
    return build_drafter(spec)


class FusedTree:
    """The tree being built: nodes in creation order (a parent always before its children), one
    node per (parent, token), so inserting a path shares its longest prefix already present."""

    def __init__(self):
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.depth: list[int] = []
        self.score: list[float] = []  # model nodes: log of the draft probabilities along the path; else -inf
        self.model: list[bool] = []  # proposed by the model drafter
        self.retrieved: list[bool] = []  # on a retrieved path
        self.alive: list[bool] = []  # False: pruned (it and its subtree are never proposed)
        self.child: dict[tuple[int, int], int] = {}

    def __len__(self) -> int:
        return len(self.tokens)

    def find(self, parent: int, token: int) -> int | None:
        return self.child.get((parent, token))

    def add(self, parent: int, token: int, *, model: bool = False, score: float = -math.inf) -> int:
        """The node for `token` under `parent` (-1: the root), made if new; a model node's score
        is kept (the first one given)."""
        node = self.child.get((parent, token))
        if node is None:
            node = len(self.tokens)
            self.child[(parent, token)] = node
            self.tokens.append(token)
            self.parents.append(parent)
            self.depth.append(1 if parent < 0 else self.depth[parent] + 1)
            self.score.append(score)
            self.model.append(model)
            self.retrieved.append(False)
            self.alive.append(True)
        elif model and not self.model[node]:
            self.model[node], self.score[node] = True, score
        return node

    def select(self, model_nodes: int, max_nodes: int, retrieved_order: list[int]) -> tuple[Draft, dict[int, int]]:
        """The proposal: the `model_nodes` best model nodes (by score; a parent scores at least as
        high as its child, and comes first on ties), then retrieved nodes in `retrieved_order`
        whose parent is in, until `max_nodes` in all. Pruned nodes never. Also returns each kept
        node's index in the draft."""
        chosen: set[int] = set()
        ranked = sorted((i for i in range(len(self)) if self.model[i] and self.alive[i]),
                        key=lambda i: (-self.score[i], i))
        for i in ranked:
            if len(chosen) >= min(model_nodes, max_nodes):
                break
            if self.parents[i] < 0 or self.parents[i] in chosen:
                chosen.add(i)
        for i in retrieved_order:
            if len(chosen) >= max_nodes:
                break
            if i in chosen or not self.alive[i]:
                continue
            if self.parents[i] < 0 or self.parents[i] in chosen:
                chosen.add(i)
        kept = sorted(chosen)  # creation order is topological
        index = {old: new for new, old in enumerate(kept)}
        if not kept:
            return Draft.empty(), index
        ids = torch.tensor([[self.tokens[i] for i in kept]], dtype=torch.long)  # [1, N]
        parents = [index[self.parents[i]] if self.parents[i] >= 0 else -1 for i in kept]
        if all(p == j - 1 for j, p in enumerate(parents)):
            return Draft(ids), index  # a chain
        return Draft(ids, parents=torch.tensor(parents, dtype=torch.long)), index


def _fuse_retrieved(tree: "FusedTree", fused: list, r_tokens: list[int], r_parents: list[int], which, keep) -> None:
    """Retrieval nodes `which` (parents before children) into `tree` by longest prefix match, each
    recorded in `fused` (retrieval node -> tree node): a node whose parent was pruned or cut is
    skipped; a node new to the tree that `keep(parent, token)` rejects is added dead (pruned, with
    whatever would hang below it)."""
    for i in which:
        parent = -1 if r_parents[i] < 0 else fused[r_parents[i]]
        if parent is None or (parent >= 0 and not tree.alive[parent]):
            continue
        node = tree.find(parent, r_tokens[i])
        if node is None:
            node = tree.add(parent, r_tokens[i])
            if not keep(parent, r_tokens[i]):
                tree.alive[node] = False
        tree.retrieved[node] = True
        fused[i] = node


def _retrieved_tree(draft: Draft) -> tuple[list[int], list[int]]:
    """A retrieval member's draft -> (tokens, parents) in its node order (a chain: parents i - 1)."""
    tokens = draft.token_ids[0].tolist() if draft.token_ids.numel() else []
    if draft.parents is None:
        return tokens, list(range(-1, len(tokens) - 1))
    return tokens, [int(p) for p in draft.parents.tolist()]


@register
class RasdDrafter(DrafterBase):
    name: ClassVar[str] = "rasd"
    trees: ClassVar[bool] = True

    def __init__(self, model=None, retrieval="ngram", max_nodes: int = 32, model_nodes: int = 12, topk: int = 3,
                 beam: int = 3, min_prob: float = 0.0, deep: bool = True, confidence: float = 0.1):
        for key, v in (("max_nodes", max_nodes), ("model_nodes", model_nodes), ("topk", topk), ("beam", beam)):
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise DraftsmithError(f"rasd: {key} must be an integer >= 1, got {v!r}")
        if not (isinstance(min_prob, (int, float)) and not isinstance(min_prob, bool) and 0.0 <= min_prob < 1.0):
            raise DraftsmithError(f"rasd: min_prob must be a number in [0, 1), got {min_prob!r}")
        if not (isinstance(confidence, (int, float)) and not isinstance(confidence, bool) and 0.0 <= confidence < 1.0):
            raise DraftsmithError(f"rasd: confidence must be a number in [0, 1), got {confidence!r}")
        if not isinstance(deep, bool):
            raise DraftsmithError(f"rasd: deep must be true or false, got {deep!r}")
        self.model, self.retrieval = _member(model, "model"), _member(retrieval, "retrieval")
        self.kind = self._kind(self.model)
        if self.retrieval.needs_hidden_states:
            raise IncompatibleDrafterError(f"rasd: the retrieval member {self.retrieval.name!r} needs the target's hidden "
                                           "states; use a retrieval drafter (ngram, hierarchy, suffix, ...)")
        self.max_nodes, self.model_nodes, self.topk, self.beam = max_nodes, model_nodes, topk, beam
        self.min_prob, self.deep, self.confidence = float(min_prob), deep, float(confidence)
        self.needs_hidden_states = bool(self.model.needs_hidden_states)  # the loop reads it per instance
        self.k = max(self.model.k or 1, self.retrieval.k)
        self.where: list[int | None] = []  # last proposal: retrieval node -> its node in the draft

    @staticmethod
    def _kind(model: DrafterBase) -> str:
        from .heads import EagleDrafter

        if type(model) is DraftModelDrafter:
            return "draft_model"
        if isinstance(model, EagleDrafter):
            if not model.tree_nodes:
                raise IncompatibleDrafterError("rasd: an eagle member must draft a tree (eagle:tree_nodes=N, N >= 1): "
                                               "RASD fuses the retrieval tree into the model's draft tree")
            return "eagle"
        raise IncompatibleDrafterError(f"rasd: the model member {model.name!r} is not supported; use draft_model "
                                       "(model=[draft_model:model=NAME]) or eagle (model=[eagle:tree_nodes=N]), whose "
                                       "probabilities prune the retrieved branches")

    # ----- lifecycle: every call goes to both members ----------------------------------------
    def bind(self, target) -> None:
        self.model.bind(target)
        self.retrieval.bind(target)
        self.feature_layers = self.model.feature_layers  # eagle3 reads its target layers, known once bound
        if self.kind == "draft_model" and sliding_window(self.model.draft.config) is not None:
            raise IncompatibleDrafterError(f"rasd: draft model {self.model.draft.name!r} has sliding-window layers; its "
                                           "tree-masked forwards support full attention only")
        self.k = max(self.model.k, self.retrieval.k)

    def fork(self) -> RasdDrafter:
        other = copy.copy(self)
        other.model, other.retrieval = self.model.fork(), self.retrieval.fork()
        return other

    def prefill(self, prompt_ids: list[int], features: torch.Tensor | None = None) -> None:
        self.model.prefill(prompt_ids, features)
        self.retrieval.prefill(prompt_ids, None)

    def observe(self, result: VerifyResult) -> None:
        """The model member sees the step as it is (an eagle head needs the hidden states of the
        accepted path, whichever member proposed it); the retrieval member sees it in terms of its
        own draft: its nodes along the accepted path, and the target's logits after its nodes
        when every one of them was proposed (as `union` does)."""
        self.model.observe(result)
        where = self.where  # retrieval node -> its node in the proposed draft (None: pruned or cut)
        mine = {t: j for j, t in reversed(list(enumerate(where))) if t is not None}
        path = list(result.path) if result.path is not None else list(range(result.num_accepted))
        own: list[int] = []
        for node in path:
            if node not in mine:
                break
            own.append(mine[node])
        logits = result.target_logits  # [1, N+1, V]
        if logits is not None:
            logits = logits[:, [0] + [1 + t for t in where]] if all(t is not None for t in where) else None
        self.retrieval.observe(replace(result, num_drafted=len(where), path=own, target_logits=logits))

    def finish(self) -> None:
        try:
            self.model.finish()
        finally:
            self.retrieval.finish()

    # ----- drafting --------------------------------------------------------------------------
    def propose(self, ctx: DraftContext) -> Draft:
        self.where = []
        if ctx.max_tokens <= 0:
            return Draft.empty()
        depth = min(self.model.k, ctx.max_tokens)  # the model tree's depth
        got = self.retrieval.propose(DraftContext(ctx.ids, min(self.retrieval.k, ctx.max_tokens), ctx.params,
                                                  ctx.generator))
        r_tokens, r_parents = _retrieved_tree(got)
        if self.kind == "draft_model":
            tree, fused = self._draft_model_tree(ctx.ids, depth, r_tokens, r_parents)
            draft, index = tree.select(self.model_nodes, self.max_nodes, [n for n in fused if n is not None])
        else:  # eagle: its own tree is already the size it was asked for
            tree, fused = self._eagle_tree(ctx, depth, r_tokens, r_parents)
            draft, index = tree.select(self.max_nodes, self.max_nodes, [n for n in fused if n is not None])
        self.where = [None if n is None else index.get(n) for n in fused]
        return draft

    def _keep(self, logp: torch.Tensor | None, token: int) -> bool:
        """Pruning: does a retrieved token pass, given the draft model's log-probabilities logp [V]
        after its parent (None: not scored)? A token the draft model cannot emit (outside its
        draft vocabulary or its logits) is not judged: kept."""
        if logp is None or self.min_prob <= 0 or token >= logp.shape[-1]:
            return True
        lp = float(logp[token])
        return lp == -math.inf or lp >= math.log(self.min_prob)

    def _draft_model_tree(self, ids: list[int], depth: int, r_tokens: list[int], r_parents: list[int]):
        """The draft model's dynamic tree with the retrieved nodes scored, pruned and fused in.
        Forwards: the usual sync (accepted tokens + bonus), one per depth below `depth` (the beam
        and the retrieved nodes of that depth, tree-masked), one more for retrieved nodes deeper
        than `depth` when `deep` (no forward is spent on retrieved nodes with min_prob = 0). Returns
        (tree, each retrieval node's node in the tree, None where pruned)."""
        m: DraftModelDrafter = self.model
        lm = m.draft
        L = len(ids)
        logits = m._sync(ids)  # [1, 1, V_draft]; the cache now holds ids
        width = min(logits.shape[-1], m.vocab)  # the target's ids the draft model scores
        logp = {-1: logits[0, -1, :width].float().log_softmax(-1)}  # node -> [V] after it; -1 = the root
        slot: dict[int, int] = {}  # fed node -> its slot in the draft cache
        tree = FusedTree()
        r_depth: list[int] = []
        for p in r_parents:
            r_depth.append(1 if p < 0 else r_depth[p] + 1)
        has_kids = {p for p in r_parents if p >= 0}  # retrieval nodes with children
        fused: list[int | None] = [None] * len(r_tokens)  # retrieval node -> fused node (None: pruned or cut)
        prune = self.min_prob > 0  # min_prob = 0: retrieved nodes are never scored (no forward spent on them)

        def insert_retrieved(d: int, scored: bool) -> None:
            """The retrieved nodes of depth d into the tree, each pruned by the distribution after its
            parent (when `scored`)."""
            _fuse_retrieved(tree, fused, r_tokens, r_parents, [i for i in range(len(r_tokens)) if r_depth[i] == d],
                            (lambda parent, tok: self._keep(logp.get(parent), tok)) if scored else (lambda parent, tok: True))

        frontier = [-1]  # the beam: model nodes to expand at this depth
        reached = depth  # the model tree's depth (less when the draft model's confidence ran out)
        for d in range(depth):  # parents at depth d, children at d + 1
            lp = torch.stack([logp[n] for n in frontier])  # [F, V]
            top = lp.topk(min(self.topk, width), dim=-1)
            for n, values, tokens in zip(frontier, top.values.tolist(), top.indices.tolist()):
                base = tree.score[n] if n >= 0 else 0.0
                for v, t in zip(values, tokens):
                    if v > -math.inf:  # a token outside the draft vocabulary is never the model's
                        tree.add(n, t, model=True, score=base + v)
            insert_retrieved(d + 1, scored=True)
            if d + 1 == depth:
                break
            level = [i for i in range(len(tree)) if tree.depth[i] == d + 1 and tree.model[i]]
            frontier = sorted(level, key=lambda i: (-tree.score[i], i))[: self.beam]
            if not frontier or math.exp(tree.score[frontier[0]]) < self.confidence:
                reached = d + 1  # the best path is already unlikely: no deeper model nodes
                break
            feed = list(frontier)
            if prune:  # the retrieved nodes of this depth that have children: their distributions judge those
                feed += [fused[i] for i in range(len(r_tokens)) if r_depth[i] == d + 1 and i in has_kids
                         and fused[i] is not None and tree.alive[fused[i]] and fused[i] not in frontier]
            self._feed(lm, tree, feed, L, slot, logp, width)
        depth = reached
        if len(r_tokens) and max(r_depth) > depth:
            if self.deep and prune:  # one forward over every retrieved node below the model tree that has children
                for d in range(depth + 1, max(r_depth) + 1):
                    insert_retrieved(d, scored=False)  # placed first, judged after the forward
                feed = [fused[i] for i in range(len(r_tokens)) if depth <= r_depth[i] and i in has_kids
                        and fused[i] is not None and tree.alive[fused[i]] and fused[i] not in slot]
                if feed:
                    self._feed(lm, tree, feed, L, slot, logp, width)
                for i in range(len(r_tokens)):  # top-down: a pruned node takes its subtree with it
                    n = fused[i]
                    if n is None or r_depth[i] <= depth:
                        continue
                    p = tree.parents[n]
                    if not tree.alive[p] or (not tree.model[n] and not self._keep(logp.get(p), tree.tokens[n])):
                        tree.alive[n] = False
            else:
                for d in range(depth + 1, max(r_depth) + 1):
                    insert_retrieved(d, scored=False)
        lm.crop(L)  # the tree's nodes leave the cache; the next sync feeds what was accepted
        m.confirmed, m.tail = L, []
        return tree, fused

    @torch.inference_mode()
    def _feed(self, lm, tree: FusedTree, feed: list[int], L: int, slot: dict[int, int], logp: dict, width: int) -> None:
        """One tree-masked forward of the draft model over `feed` (nodes whose ancestors are fed
        before them or in this forward, listed parents first): each node attends to the committed
        tokens, its fed ancestors and itself; logp[node] [V] is the distribution after it."""
        start = lm.length  # L + nodes fed so far
        dev = lm.device
        for j, n in enumerate(feed):
            slot[n] = start + j
        F = len(feed)
        allow = torch.zeros(F, start + F, dtype=torch.bool)  # [F, start + F]
        allow[:, :L] = True
        for j, n in enumerate(feed):
            a = n
            while a >= 0:
                allow[j, slot[a]] = True
                a = tree.parents[a]
        mask = additive_mask(allow, lm.dtype)
        ids = torch.tensor([[tree.tokens[n] for n in feed]], dtype=torch.long, device=dev)  # [1, F]
        pos = torch.tensor([[L - 1 + tree.depth[n] for n in feed]], device=dev)  # [1, F]: the root sits at L - 1
        slots = torch.arange(start, start + F, device=dev)
        out = lm.step(ids, pos, lm.cache, cache_position=slots, mask=mask.to(dev)[None, None])
        lp = out.logits[0, :, :width].float().log_softmax(-1)  # [F, V]
        for j, n in enumerate(feed):
            logp[n] = lp[j]

    @torch.inference_mode()
    def _eagle_tree(self, ctx: DraftContext, depth: int, r_tokens: list[int], r_parents: list[int]):
        """The eagle member's own tree, with the retrieved first tokens pruned by its root
        distribution and every retrieved path fused in."""
        m = self.model
        tree = FusedTree()
        fused: list[int | None] = [None] * len(r_tokens)
        if not m._ready(ctx):
            root = None
        else:
            f = m._sync(ctx)  # [1, 1, H]: the predicted feature of the bonus token
            own = m._tree(f, depth)
            parents = own.parents.tolist() if own.parents is not None else list(range(-1, own.size - 1))
            index: list[int] = []
            for j, (tok, p) in enumerate(zip(own.token_ids[0].tolist(), parents)):
                index.append(tree.add(-1 if p < 0 else index[p], tok, model=True, score=-float(j)))
            if self.min_prob > 0:  # [V] the head's distribution after the bonus token judges retrieved first tokens
                root = m.lm_head(f)[0, 0].float().log_softmax(-1)
            else:
                root = None
        _fuse_retrieved(tree, fused, r_tokens, r_parents, range(len(r_tokens)),
                        lambda parent, tok: parent >= 0 or self._keep(root, tok))  # first tokens judged only
        return tree, fused
