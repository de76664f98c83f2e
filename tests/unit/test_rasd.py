"""RASD (drafters/rasd.py): the draft model's tree, retrieved branches pruned by its probabilities,
fused by longest prefix match within a node budget. The expected trees are computed here from
plain, uncached forwards of the tiny draft model, so a wrong tree mask, slot or position in the
drafter's cached tree forwards shows up as a different tree."""

from __future__ import annotations

import pytest
import torch

from draftsmith import CausalLM, Draft, DrafterBase, SamplingParams, VerifyResult, build_drafter
from draftsmith.drafters.base import DraftContext
from draftsmith.drafters.rasd import FusedTree
from draftsmith.errors import DraftsmithError, IncompatibleDrafterError
from tests.conftest import random_heads, tiny_model

IDS = [5, 17, 3, 42, 9, 11, 30]  # no repeated n-gram: ngram finds nothing
GREEDY = SamplingParams(max_new_tokens=32)


class Fixed(DrafterBase):
    """A retrieval member proposing a given tree (or nothing); keeps what it observes."""

    name = "fixed"

    def __init__(self, tokens: list[int], parents: list[int] | None = None, k: int = 8):
        self.tokens, self.par, self.k = tokens, parents, k
        self.seen: list[VerifyResult] = []

    def observe(self, result):
        self.seen.append(result)

    def propose(self, ctx):
        if not self.tokens:
            return Draft.empty()
        return Draft(torch.tensor([self.tokens]), parents=None if self.par is None else torch.tensor(self.par))


def paths(draft: Draft) -> set[tuple[int, ...]]:
    """Every node of a draft as its root path of tokens."""
    toks = draft.token_ids[0].tolist()
    par = draft.parents.tolist() if draft.parents is not None else list(range(-1, len(toks) - 1))
    out, full = set(), []
    for t, p in zip(toks, par):
        full.append((full[p] if p >= 0 else ()) + (t,))
        out.add(full[-1])
    return out


def logp(lm: CausalLM, ids: list[int]) -> torch.Tensor:
    """The draft model's log-probabilities after `ids`, from one uncached forward ([V])."""
    with torch.no_grad():
        return lm.model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)


def reference_tree(lm, ids, depth, topk, beam, model_nodes) -> set[tuple[int, ...]]:
    """The EAGLE-2 style selection by brute force: expand the beam's top-k per depth, keep the
    model_nodes best paths (a parent before its children)."""
    score: dict[tuple[int, ...], float] = {}
    frontier = [()]
    for d in range(depth):
        level = []
        for path in frontier:
            lp = logp(lm, ids + list(path))
            top = lp.topk(topk)
            for v, t in zip(top.values.tolist(), top.indices.tolist()):
                score[path + (t,)] = (score.get(path, 0.0)) + v
                level.append(path + (t,))
        frontier = sorted(level, key=lambda p: -score[p])[:beam]
    kept: set[tuple[int, ...]] = set()
    for p in sorted(score, key=lambda p: -score[p]):
        if len(kept) == model_nodes:
            break
        if len(p) == 1 or p[:-1] in kept:
            kept.add(p)
    return kept


def rasd(lm, retrieval, target, **options):
    options.setdefault("confidence", 0.0)  # the brute-force reference grows the whole tree
    d = build_drafter("rasd", model=build_drafter("draft_model", model=CausalLM(lm.model), k=options.pop("k", 2)),
                      retrieval=retrieval, **options)
    d.bind(target)
    row = d.fork()
    row.prefill(IDS)
    return row


def propose(row, ids=IDS, depth=8):
    return row.propose(DraftContext(list(ids), depth, GREEDY))


@pytest.fixture(scope="module")
def models():
    return tiny_model("llama"), tiny_model("llama", seed=1)


def test_retrieval_proposing_nothing_leaves_the_model_tree_alone(models):
    """Guards the model tree itself (masks, slots, positions of the tree forwards) and that an empty
    retrieval adds nothing: the tree equals the brute-force EAGLE-2 selection, for a member that
    proposes nothing and for ngram finding no match."""
    target, lm = models
    for model_nodes in (15, 7):  # every candidate (3 + 6 + 6), and the 7 best
        want = reference_tree(lm, IDS, depth=3, topk=3, beam=2, model_nodes=model_nodes)
        for retrieval in (Fixed([]), "ngram", "none"):
            row = rasd(lm, retrieval, target, k=3, topk=3, beam=2, model_nodes=model_nodes, max_nodes=20)
            assert paths(propose(row)) == want, (model_nodes, retrieval)


def test_draft_model_cache_follows_what_was_committed(models):
    """Guards observe/rollback: after a step whose accepted path went through a retrieved node, the
    next tree is the one computed from scratch on the new committed tokens."""
    target, lm = models
    lo = int(logp(lm, IDS).argmin())  # a retrieved token the model tree does not hold
    row = rasd(lm, Fixed([lo, 7, 8]), target, k=3, topk=2, beam=2, model_nodes=5, max_nodes=12, min_prob=0.0)
    first = propose(row)
    assert (lo, 7, 8) in paths(first)
    committed = IDS + [lo, 7, 8, 21]  # accepted the retrieved chain, then a bonus token
    row.retrieval.tokens = []
    assert paths(propose(row, committed)) == reference_tree(lm, committed, depth=3, topk=2, beam=2, model_nodes=5)


def test_retrieval_member_observes_the_step_in_its_own_nodes(models):
    """Guards members that learn from their own draft (recycling reads the target's logits after
    its nodes): the retrieval member's view of a step names its own nodes and logits rows."""
    target, lm = models
    a = int(logp(lm, IDS).argmax())
    fixed = Fixed([a, 70, 71])
    row = rasd(lm, fixed, target, k=1, topk=2, min_prob=0.0)
    d = propose(row)
    toks = d.token_ids[0].tolist()
    par = d.parents.tolist()
    n70 = next(i for i, (t, p) in enumerate(zip(toks, par)) if t == 70)
    na = par[n70]
    logits = torch.randn(1, d.size + 1, target.vocab_size)
    row.observe(VerifyResult(torch.tensor([[a, 70, 5]]), 2, d.size, path=[na, n70], target_logits=logits))
    seen = fixed.seen[-1]
    assert seen.path == [0, 1] and seen.num_drafted == 3 and seen.tokens.tolist() == [[a, 70, 5]]
    n71 = toks.index(71)
    assert torch.equal(seen.target_logits, logits[:, [0, 1 + na, 1 + n70, 1 + n71]])


def test_pruning_drops_low_probability_retrieved_branches(models):
    """Guards RASD's pruning: a retrieved first token the draft model finds unlikely is dropped with
    its whole branch, a likely one is kept; with min_prob=0 nothing is pruned."""
    target, lm = models
    p = logp(lm, IDS).exp()
    order = p.argsort(descending=True).tolist()
    hi, lo = order[2], order[-1]  # hi: likely but outside the model's top-2; lo: the least likely token
    nxt = int(logp(lm, IDS + [hi]).argmax())  # the draft model's choice after hi
    assert p[hi] > 0.01 > p[lo]
    tree = [hi, nxt, lo, 51]
    parents = [-1, 0, -1, 2]
    kept = paths(propose(rasd(lm, Fixed(tree, parents), target, topk=2, min_prob=0.01)))
    assert (hi,) in kept and (hi, nxt) in kept
    assert (lo,) not in kept and (lo, 51) not in kept
    everything = paths(propose(rasd(lm, Fixed(tree, parents), target, topk=2, min_prob=0.0)))
    assert {(hi,), (hi, nxt), (lo,), (lo, 51)} <= everything


def test_deep_pruning_scores_retrieved_nodes_below_the_model_tree(models):
    """Guards the extra scoring forward: below the model tree's depth a retrieved token the draft
    model finds unlikely (after its retrieved prefix) is cut with its subtree (deep=true); with
    deep=false the branch stays unscored and whole."""
    target, lm = models
    a = int(logp(lm, IDS).argmax())
    b = int(logp(lm, IDS + [a]).argmax())
    c_lo = int(logp(lm, IDS + [a, b]).argmin())
    chain = [a, b, c_lo, 60]
    deep = paths(propose(rasd(lm, Fixed(chain), target, k=1, topk=1, min_prob=0.01)))
    assert (a, b) in deep and (a, b, c_lo) not in deep and (a, b, c_lo, 60) not in deep
    shallow = paths(propose(rasd(lm, Fixed(chain), target, k=1, topk=1, min_prob=0.01, deep=False)))
    assert (a, b, c_lo, 60) in shallow


def test_fusion_shares_prefixes_and_respects_the_budget(models):
    """Guards tree fusion: a retrieved path starting on the model's own first token hangs under that
    node (one node, not two); the budget caps the fused tree, the model's nodes first."""
    target, lm = models
    a = int(logp(lm, IDS).argmax())
    row = rasd(lm, Fixed([a, 70, 71, 72]), target, k=2, topk=2, beam=2, model_nodes=4, max_nodes=7, min_prob=0.0)
    d = propose(row)
    toks, par = d.token_ids[0].tolist(), d.parents.tolist()
    roots = [t for t, p in zip(toks, par) if p < 0]
    assert roots.count(a) == 1  # merged, not duplicated
    got = paths(d)
    model = reference_tree(lm, IDS, depth=2, topk=2, beam=2, model_nodes=4)
    assert model <= got and {(a, 70), (a, 70, 71), (a, 70, 71, 72)} <= got
    assert len(got) == d.size == 7
    small = propose(rasd(lm, Fixed([a, 70, 71, 72]), target, k=2, topk=2, beam=2, model_nodes=4, max_nodes=5,
                         min_prob=0.0))
    assert small.size == 5 and model <= paths(small) and (a, 70) in paths(small)  # the budget cut the retrieved tail


def test_draft_vocabulary_limits_the_model_tree_not_retrieval(models, tmp_path):
    """Guards a draft model with a stored draft vocabulary: its tree holds only those tokens (the
    others have logit -inf, never a top-k child), and a retrieved token outside it, which it cannot
    score, is kept rather than pruned."""
    from tests.recipes import folder_with_vocab

    target, lm = models
    folder = folder_with_vocab(lm, tmp_path / "dm", [1, 3, 5])
    d = build_drafter("rasd", model=build_drafter("draft_model", model=str(folder), k=2, dtype="float32"),
                      retrieval=Fixed([40, 41]), topk=4, beam=2, min_prob=0.5)
    d.bind(target)
    row = d.fork()
    row.prefill(IDS)
    got = paths(propose(row))
    assert {(40,), (40, 41)} <= got
    assert {t for p in got - {(40,), (40, 41)} for t in p} <= {1, 3, 5}


def test_low_confidence_stops_the_model_tree_not_retrieval(models):
    """Guards `confidence`: when the draft model's best path is unlikely the model tree stops
    growing (its root children only), and the retrieved chain is still proposed whole."""
    target, lm = models
    top = logp(lm, IDS).exp().max()
    assert top < 0.99
    got = paths(propose(rasd(lm, Fixed([80, 81, 82]), target, k=3, topk=2, confidence=0.99)))
    assert got == {p for p in reference_tree(lm, IDS, depth=1, topk=2, beam=2, model_nodes=2)} | {
        (80,), (80, 81), (80, 81, 82)}
    assert max(len(p) for p in paths(propose(rasd(lm, Fixed([]), target, k=3, topk=2)))) == 3


def test_fused_tree_select_orders_parents_first():
    """Guards the proposal's shape: topological order, budget, pruned nodes left out."""
    t = FusedTree()
    r0 = t.add(-1, 4, model=True, score=-0.1)
    t.add(r0, 5, model=True, score=-0.5)
    x = t.add(-1, 9)
    y = t.add(x, 8)
    z = t.add(-1, 3)
    t.alive[z] = False
    d, index = t.select(model_nodes=2, max_nodes=3, retrieved_order=[x, y, z])
    assert d.token_ids[0].tolist() == [4, 5, 9] and d.parents.tolist() == [-1, 0, -1]
    assert index == {r0: 0, 1: 1, x: 2}
    assert t.select(model_nodes=1, max_nodes=1, retrieved_order=[x])[0].token_ids[0].tolist() == [4]


def test_members_are_checked_when_built():
    """Guards clear errors for members RASD cannot use."""
    with pytest.raises(IncompatibleDrafterError, match="model member"):
        build_drafter("rasd", model="ngram")
    with pytest.raises(IncompatibleDrafterError, match="tree_nodes"):
        build_drafter("rasd", model="eagle")
    with pytest.raises(IncompatibleDrafterError, match="hidden"):
        build_drafter("rasd", model="draft_model:model=x", retrieval="eagle:tree_nodes=4")
    with pytest.raises(DraftsmithError, match="one drafter spec"):
        build_drafter("rasd:model=[draft_model:model=x,ngram]")
    with pytest.raises(DraftsmithError, match="min_prob"):
        build_drafter("rasd", model="draft_model:model=x", min_prob=1.5)
    d = build_drafter("rasd:model=[draft_model:model=x,k=3],retrieval=[hierarchy:corpus=none,k=6],max_nodes=16")
    assert (d.kind, d.max_nodes, d.k) == ("draft_model", 16, 6)


def test_eagle_member_prunes_first_tokens_by_its_root_distribution(tmp_path):
    """Guards the eagle path: with nothing retrieved the proposal is the head's own tree; a
    retrieved branch on one of its root children is fused under it, a retrieved first token the
    head finds unlikely is dropped with its branch."""
    target = tiny_model("llama")
    heads = random_heads(target, "eagle", tmp_path / "eagle", seed=2, scale=0.5)
    feats = torch.randn(1, len(IDS) - 1, target.config.hidden_size)
    ctx = DraftContext(list(IDS), 3, GREEDY)

    def row(drafter):
        drafter.bind(target)
        r = drafter.fork()
        r.prefill(IDS, feats)
        return r

    eagle = lambda: build_drafter("eagle", heads=heads, tree_nodes=5, topk=2)  # noqa: E731
    probe = row(eagle())
    with torch.no_grad():
        lp = probe.lm_head(probe._sync(ctx))[0, 0].float().log_softmax(-1)  # [V] the head's root distribution
    alone = paths(row(eagle()).propose(ctx))
    assert paths(row(build_drafter("rasd", model=eagle(), retrieval=Fixed([]))).propose(ctx)) == alone
    a, lo = next(iter(sorted(alone)))[0], int(lp.argmin())
    assert float(lp[lo].exp()) < 0.01
    fixed = Fixed([a, 70, lo, 71], [-1, 0, -1, 2])
    got = paths(row(build_drafter("rasd", model=eagle(), retrieval=fixed, min_prob=0.01)).propose(ctx))
    assert got == alone | {(a, 70)}
