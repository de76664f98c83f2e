"""The combinators: `cascade` (a draft model drafting with a cheaper level's help) and `union`
(one trie over several drafters' candidates, the node budget shared by measured acceptance).
Greedy equality with plain decoding and the distribution tests come from their recipes
(tests/recipes.py); here: what each must do beyond being lossless."""

import functools
import logging
from typing import ClassVar

import pytest
import torch

from draftsmith import CausalLM, Draft, DrafterBase, SamplingParams, SpeculativeDecoder, build_drafter
from draftsmith.decode import BatchDecoder
from draftsmith.drafters.base import DraftContext
from draftsmith.errors import DraftsmithError, IncompatibleDrafterError
from draftsmith.sampling import probs
from draftsmith.types import VerifyResult
from draftsmith.verify import GreedyVerifier, RejectionVerifier
from tests.conftest import WrongDrafter, tiny_model
from tests.integration.test_distribution import chi_square_fails

PROMPT = [5, 17, 3, 42, 5, 17, 3, 42, 5, 17]  # repeats: the n-gram level has something to propose


class Fixed(DrafterBase):
    """Proposes the same tokens whatever the context (cut to max_tokens)."""

    name: ClassVar[str] = "fixed"

    def __init__(self, tokens, k=None):
        self.tokens, self.k = list(tokens), k or len(tokens)

    def propose(self, ctx):
        n = min(len(self.tokens), ctx.max_tokens)
        return Draft(torch.tensor([self.tokens[:n]])) if n > 0 else Draft.empty()


class Raises(DrafterBase):
    name: ClassVar[str] = "raises"
    k = 4

    def propose(self, ctx):
        raise RuntimeError("broken drafter")


class Nothing(DrafterBase):
    name: ClassVar[str] = "nothing"
    k = 4

    def propose(self, ctx):
        return Draft.empty()


class AlwaysQ(DrafterBase):
    """Samples its draft and says so (q) even when asked for deterministic candidates."""

    name: ClassVar[str] = "always_q"
    k = 2

    def bind(self, target):
        self.V = target.vocab_size

    def propose(self, ctx):
        q = torch.full((1, 2, self.V), 1.0 / self.V)
        return Draft(torch.tensor([[1, 2]]), q=q)


class Recorder(GreedyVerifier):
    """Greedy verification that writes down every draft it is given."""

    def __init__(self):
        self.drafts: list[list[int]] = []

    def verify_row(self, draft, target_logits, params, generator=None):
        self.drafts.append(draft.token_ids[0].tolist())
        return super().verify_row(draft, target_logits, params, generator)


def plain(target, prompt, n):
    return SpeculativeDecoder(target, "none").generate(prompt, SamplingParams(max_new_tokens=n)).token_ids


def dm(lm, k=5, confidence=0.0):
    return build_drafter("draft_model", model=CausalLM(lm.model), k=k, adaptive=False, confidence=confidence)


def drafts_of(target, drafter, prompt=PROMPT, n=24):
    rec = Recorder()
    out = SpeculativeDecoder(target, drafter, verifier=rec).generate(prompt, SamplingParams(max_new_tokens=n))
    return out, rec.drafts


@functools.cache
def models():
    """The target, the draft model, the draft model's own drafts on PROMPT and plain decoding's output."""
    target, draft = tiny_model("llama"), tiny_model("llama", vocab=96, seed=1)
    out, drafts = drafts_of(target, dm(draft))
    assert out.token_ids == plain(target, PROMPT, 24)
    return target, draft, drafts, out.token_ids


# ----- cascade -------------------------------------------------------------------------------------
@pytest.mark.parametrize("lower", ["ngram:k=3", "hierarchy:corpus=none,k=3"])
def test_cascade_greedy_draft_is_the_draft_models_own_chain(lower):
    """Guards: the vertical cascade keeping a lower proposal the draft model would not have chosen
    (off-by-one between its logits rows and the proposal, a cache not cropped after a rejection)."""
    target, draft, want, ref = models()
    out, got = drafts_of(target, build_drafter("cascade", levels=[dm(draft), lower]))
    assert got == want and out.token_ids == ref


def test_cascade_vertical_saves_draft_model_forwards():
    """Guards: a cascade that still runs one draft-model forward per token. The lower level here
    is the draft model's twin (it proposes exactly the top level's chain): one forward checks it all."""
    target, draft = tiny_model("llama"), tiny_model("llama", vocab=96, seed=1)
    c = build_drafter("cascade", levels=[dm(draft, k=6), dm(draft, k=6)])
    c.bind(target)
    row = c.fork()
    row.prefill(PROMPT)
    calls = []
    forward = row.top.draft.forward
    row.top.draft.forward = lambda ids, **kw: calls.append(len(ids)) or forward(ids, **kw)
    d = row.propose(DraftContext(list(PROMPT), 6, SamplingParams()))
    ref = dm(draft, k=6)
    ref.bind(target)
    ref = ref.fork()
    ref.prefill(PROMPT)
    assert d.token_ids[0].tolist() == ref.propose(DraftContext(list(PROMPT), 6, SamplingParams())).token_ids[0].tolist()
    assert calls == [1, 5], calls  # the sync of the last prompt token, then one forward over the 5 proposed


def test_cascade_sampled_tokens_follow_the_draft_models_q():
    """Guards: the vertical cascade at temperature > 0 emitting the lower level's tokens too often
    (kept without rejection against q) or recording a q that is not the law of its tokens. The
    lower level always proposes the same two tokens; the first two drafted tokens must follow q."""
    V = 5
    target, draft = tiny_model("llama", vocab=V, seed=0, std=0.5), tiny_model("llama", vocab=V, seed=5, std=0.5)
    params = SamplingParams(temperature=1.0)
    c = build_drafter("cascade", levels=[dm(draft, k=2), Fixed([1, 1, 1])])
    c.bind(target)
    row = c.fork()
    prompt = [1, 2, 3, 1, 2]
    row.prefill(prompt)
    g = torch.Generator().manual_seed(0)
    counts, n = {}, 500
    q_seen = None
    for _ in range(n):
        d = row.propose(DraftContext(list(prompt), 2, params, g))
        key = tuple(d.token_ids[0].tolist())
        counts[key] = counts.get(key, 0) + 1
        q_seen = (key, d.q)
    with torch.no_grad():
        first = probs(draft.model(torch.tensor([prompt])).logits[0, -1], params)  # [V]
        seqs = torch.tensor([prompt + [a] for a in range(V)])
        second = probs(draft.model(seqs).logits[:, -1], params)  # [V, V]
    exact = {(a, b): float(first[a] * second[a, b]) for a in range(V) for b in range(V)}
    failed, stat, bound = chi_square_fails(counts, exact, n)
    assert not failed, f"chi-square {stat:.1f} > {bound:.1f}"
    (a, _), q = q_seen
    assert torch.allclose(q[0, 0], first, atol=1e-5) and torch.allclose(q[0, 1], second[a], atol=1e-5)


def test_cascade_horizontal_positions_come_from_the_lower_level():
    """Guards: `split` ignored, or the lower level's deterministic tokens given a q that is not
    one-hot (q must be the law each token was drawn from)."""
    target, draft = tiny_model("llama"), tiny_model("llama", vocab=96, seed=1)
    c = build_drafter("cascade", levels=[dm(draft, k=5), Fixed([7, 8, 9, 10, 11])], split=2)
    c.bind(target)
    row = c.fork()
    row.prefill(PROMPT)
    greedy = row.propose(DraftContext(list(PROMPT), 5, SamplingParams()))
    assert greedy.q is None and greedy.token_ids[0, 2:].tolist() == [7, 8, 9]
    d = row.propose(DraftContext(list(PROMPT), 5, SamplingParams(temperature=1.0), torch.Generator().manual_seed(0)))
    assert d.size == 5 and d.token_ids[0, 2:].tolist() == [7, 8, 9]
    assert torch.equal(d.q[0, 2:], torch.nn.functional.one_hot(torch.tensor([7, 8, 9]), 96).float())
    assert torch.allclose(d.q[0, :2].sum(-1), torch.ones(2)) and (d.q[0, :2] < 1).all()  # the draft model's q


def test_cascade_confidence_hands_over_to_the_lower_level():
    """Guards: the draft model's confidence threshold stopping the whole draft instead of handing
    the remaining positions to the cheaper level (the horizontal cascade)."""
    target, draft = tiny_model("llama"), tiny_model("llama", vocab=96, seed=1)
    c = build_drafter("cascade", levels=[dm(draft, k=5, confidence=0.999), Fixed([7, 8, 9, 10, 11])])
    c.bind(target)
    row = c.fork()
    row.prefill(PROMPT)
    d = row.propose(DraftContext(list(PROMPT), 5, SamplingParams()))
    assert d.size == 5 and d.token_ids[0, 1:].tolist() == [7, 8, 9, 10]  # one unsure token, then the lower level


@pytest.mark.parametrize("lower", ["raises", "nothing", "wrong"])
def test_cascade_survives_a_bad_lower_level(lower, caplog):
    """Guards: a lower level that raises, proposes nothing or is always wrong crashing the cascade or
    bending its draft: the draft stays the draft model's own chain, the output plain decoding's."""
    target, draft, want, ref = models()
    low = {"raises": Raises(), "nothing": Nothing(), "wrong": WrongDrafter(target, k=4)}[lower]
    with caplog.at_level(logging.WARNING, logger="draftsmith.drafters.cascade"):
        out, got = drafts_of(target, build_drafter("cascade", levels=[dm(draft), low]))
    assert got == want and out.token_ids == ref
    assert ("dropped" in caplog.text) == (lower == "raises")


def test_cascade_refuses_levels_it_cannot_use(tmp_path):
    """Guards: a cascade built from levels it cannot drive failing later, or silently."""
    with pytest.raises(DraftsmithError, match="at least two"):
        build_drafter("cascade:levels=[ngram]")
    with pytest.raises(IncompatibleDrafterError, match="top level must be a draft_model"):
        build_drafter("cascade:levels=[ngram,ngram:k=2]")
    with pytest.raises(IncompatibleDrafterError, match="hidden states"):
        build_drafter("cascade", levels=[dm(tiny_model("llama")), "eagle"])


def test_cascade_fork_forks_every_level():
    """Guards: rows sharing a draft model's KV cache (one row's draft corrupting another's)."""
    target, draft = tiny_model("llama"), tiny_model("llama", vocab=96, seed=1)
    c = build_drafter("cascade", levels=[dm(draft), dm(draft, k=3), "ngram"])
    c.bind(target)
    a, b = c.fork(), c.fork()
    assert a.top.draft is not b.top.draft and a.lower.top.draft is not b.lower.top.draft
    dec = BatchDecoder(target, c, smartspec=False)
    outs = dec.generate([PROMPT, [7] * 12], [SamplingParams(max_new_tokens=16)] * 2)
    assert [o.token_ids for o in outs] == [plain(target, PROMPT, 16), plain(target, [7] * 12, 16)]


# ----- union ---------------------------------------------------------------------------------------
def bound_row(drafter, target, prompt=PROMPT):
    drafter.bind(target)
    row = drafter.fork()
    row.prefill(list(prompt))
    return row


def test_union_merges_shared_prefixes_into_one_trie():
    """Guards: candidates repeated instead of merged (a shared prefix verified twice), the budget
    overrun, or members told about nodes in the union's numbering instead of their own."""
    target = tiny_model("llama")
    u = bound_row(build_drafter("union", drafters=[Fixed([1, 2, 3]), Fixed([1, 2, 4, 5]), Fixed([6])]), target)
    d = u.propose(DraftContext(list(PROMPT), 4, SamplingParams()))
    assert d.token_ids[0].tolist() == [1, 2, 3, 4, 5, 6] and d.parents.tolist() == [-1, 0, 1, 1, 3, -1]
    seen = []
    for m in u.members:
        m.observe = seen.append
    logits = torch.randn(1, 7, 96)
    u.observe(VerifyResult(torch.tensor([[1, 2, 4, 9]]), 3, 6, path=[0, 1, 3], target_logits=logits))
    assert [v.path for v in seen] == [[0, 1], [0, 1, 2], []]
    assert [v.num_drafted for v in seen] == [3, 4, 1] and all(v.num_accepted == 3 for v in seen)
    assert torch.equal(seen[1].target_logits, logits[:, [0, 1, 2, 4, 5]])
    small = bound_row(build_drafter("union", drafters=[Fixed([1, 2, 3]), Fixed([1, 2, 4, 5])], max_nodes=4), target)
    d = small.propose(DraftContext(list(PROMPT), 4, SamplingParams()))
    assert d.token_ids[0].tolist() == [1, 2, 3, 4] and d.parents.tolist() == [-1, 0, 1, 1]
    assert small.last[1][1] == [0, 1, 3, None]  # the second member's last node was cut by the budget
    seen = []
    for m in small.members:
        m.observe = seen.append
    small.observe(VerifyResult(torch.tensor([[1, 9]]), 1, 4, path=[0], target_logits=torch.randn(1, 5, 96)))
    assert seen[1].target_logits is None and seen[0].target_logits.shape == (1, 4, 96)


def test_union_bandit_gives_the_budget_to_the_member_that_is_accepted():
    """Guards: a budget share that ignores acceptance (the always-wrong member, listed first, keeps
    the nodes) or never converges. With room for one member's draft only, the right member must get
    nearly all of it and the union nearly its acceptance."""
    target = tiny_model("llama")
    good = lambda: dm(target, k=4)  # noqa: E731 - the target itself: always accepted
    dec = BatchDecoder(target, build_drafter("union", drafters=[WrongDrafter(target, k=4), good()], max_nodes=4),
                       smartspec=False)
    row = dec.add(PROMPT, SamplingParams(max_new_tokens=120))
    while dec.rows:
        dec.step()
    wrong, right = row.drafter.given
    assert right / (wrong + right) > 0.85, row.drafter.given
    alone = SpeculativeDecoder(target, good()).generate(PROMPT, SamplingParams(max_new_tokens=120))
    assert row.new_ids == alone.token_ids
    assert row.stats.tau > 0.85 * alone.stats.tau, (row.stats.tau, alone.stats.tau)


@pytest.mark.parametrize("bad", ["raises", "nothing", "wrong"])
def test_union_survives_a_bad_member(bad, caplog):
    """Guards: one member that raises, proposes nothing or is always wrong crashing the union or
    costing the good member's acceptance."""
    target = tiny_model("llama")
    member = {"raises": Raises(), "nothing": Nothing(), "wrong": WrongDrafter(target, k=4)}[bad]
    u = build_drafter("union", drafters=[member, dm(target, k=4)], max_nodes=6)
    with caplog.at_level(logging.WARNING, logger="draftsmith.drafters.union"):
        out = SpeculativeDecoder(target, u).generate(PROMPT, SamplingParams(max_new_tokens=40))
    assert out.token_ids == plain(target, PROMPT, 40)
    assert out.stats.tau >= 4.0, out.stats.tau  # the twin's 4 tokens are accepted (almost) every step
    assert ("dropped" in caplog.text) == (bad == "raises")


def test_union_sampling_uses_deterministic_candidates_only(caplog):
    """Guards: a merged tree carrying q it cannot honestly have, or members drawing from the row's
    random stream: at temperature > 0 members draft as at temperature 0 (q None) and one that
    insists on a sampled draft is dropped."""
    target = tiny_model("llama")
    drafts = []

    class Spy(RejectionVerifier):
        def verify_row(self, draft, target_logits, params, generator=None):
            drafts.append(draft)
            return super().verify_row(draft, target_logits, params, generator)

    u = build_drafter("union", drafters=[AlwaysQ(), dm(tiny_model("llama", seed=1), k=3), "ngram:k=3"])
    with caplog.at_level(logging.WARNING, logger="draftsmith.drafters.union"):
        out = SpeculativeDecoder(target, u, verifier=Spy()).generate(
            PROMPT, SamplingParams(temperature=1.0, max_new_tokens=24), torch.Generator().manual_seed(0))
    assert out.stats.new_tokens == 24 and out.stats.finish_reason == "length"
    assert "sampled draft" in caplog.text
    assert any(d.size for d in drafts) and all(d.q is None for d in drafts)


def test_union_members_learn_from_their_own_view():
    """Guards: members that learn from the step's logits (recycling) fed the union's rows instead of
    their own nodes' (a shape error drops them, wrong rows teach them wrong successors)."""
    target = tiny_model("llama")
    u = build_drafter("union", drafters=["ngram:k=3", "recycling:topk=2,branching=2-1"], max_nodes=16)
    dec = BatchDecoder(target, u, smartspec=False)
    row = dec.add(PROMPT, SamplingParams(max_new_tokens=30))
    while dec.rows:
        dec.step()
    assert row.new_ids == plain(target, PROMPT, 30)
    assert all(row.drafter.alive) and row.drafter.given[1] > 0
    assert (row.drafter.members[1].adj >= 0).any()


def test_union_forwards_hidden_states_to_the_members_that_need_them(tmp_path):
    """Guards: a union with a heads member not declaring needs_hidden_states (the heads then see no
    features and fail) or handing features to members that do not take them."""
    from tests.conftest import random_heads

    target = tiny_model("llama")
    random_heads(target, "eagle", tmp_path / "eagle")
    u = build_drafter("union", drafters=["ngram:k=3", {"name": "eagle", "heads": str(tmp_path / "eagle"),
                                                       "tree_nodes": 6, "topk": 2}])
    assert u.needs_hidden_states and not build_drafter("union", drafters=["ngram"]).needs_hidden_states
    dec = BatchDecoder(target, u, smartspec=False)
    row = dec.add(PROMPT, SamplingParams(max_new_tokens=24))
    while dec.rows:
        dec.step()
    assert row.error is None and all(row.drafter.alive) and row.drafter.given[1] > 0
    assert row.new_ids == plain(target, PROMPT, 24)


def test_union_refuses_bad_options():
    """Guards: options that would make an empty or unbounded tree accepted silently."""
    for spec in ("union", "union:drafters=[]", "union:drafters=[ngram],max_nodes=0", "union:drafters=[ngram],decay=0",
                 "union:drafters=[ngram],gate=maybe", "union:drafters=[ngram],probe=0"):
        with pytest.raises(DraftsmithError):
            build_drafter(spec)


class Slow(DrafterBase):
    """Another drafter that takes `seconds` longer to propose: a member whose drafting costs time."""

    name: ClassVar[str] = "slow"

    def __init__(self, inner, seconds: float):
        self.inner, self.seconds, self.k = inner, seconds, inner.k

    def bind(self, target):
        self.inner.bind(target)

    def fork(self):
        return Slow(self.inner.fork(), self.seconds)

    def prefill(self, prompt_ids, features=None):
        self.inner.prefill(prompt_ids, features)

    def propose(self, ctx):
        import time

        time.sleep(self.seconds)
        return self.inner.propose(ctx)

    def observe(self, result):
        self.inner.observe(result)


def _run_union(target, drafters, params, **options):
    dec = BatchDecoder(target, build_drafter("union", drafters=drafters, **options), smartspec=False)
    row = dec.add(PROMPT, params)
    while dec.rows:
        dec.step()
    return row


def test_union_gate_sits_out_a_costly_member_that_adds_nothing():
    """Guards: the union paying a slow member's drafting time on every step although its nodes never
    add an accepted token (an EAGLE tree beside a long suffix match). Gated, it is asked only in the
    warm-up and every `probe` steps, and the output is still the target's."""
    target = tiny_model("llama")
    params = SamplingParams(max_new_tokens=60)
    row = _run_union(target, [dm(target, k=4), Slow(WrongDrafter(target, k=4), 0.01)], params, gate="auto", probe=8,
                     warmup=4)
    steps = row.stats.steps
    asked_good, asked_slow = row.drafter.asked
    assert row.new_ids == plain(target, PROMPT, 60)
    assert asked_good == steps and asked_slow <= 4 + steps // 8 + 1, (row.drafter.asked, steps)
    assert row.stats.tau >= 4.0
    off = _run_union(target, [dm(target, k=4), Slow(WrongDrafter(target, k=4), 0.01)], params, gate=False)
    assert off.drafter.asked[1] == off.stats.steps  # gate=false asks everyone, every step


def test_union_gate_keeps_a_costly_member_that_pays():
    """Guards: a gate that judges by cost alone: the slow member here is the only one accepted, so it
    must be asked every step, and the cheap always-wrong member sits out instead."""
    target = tiny_model("llama")
    row = _run_union(target, [WrongDrafter(target, k=4), Slow(dm(target, k=4), 0.005)], SamplingParams(max_new_tokens=40),
                     gate=True)
    assert row.drafter.asked[1] == row.stats.steps
    assert row.new_ids == plain(target, PROMPT, 40)


def test_union_gate_auto_leaves_sampling_rows_alone():
    """Guards: timing-dependent trees at temperature > 0 (a seeded sample would differ between runs):
    gate=auto gates greedy rows only."""
    target = tiny_model("llama")
    row = _run_union(target, [dm(target, k=4), Slow(WrongDrafter(target, k=4), 0.005)],
                     SamplingParams(max_new_tokens=30, temperature=1.0), gate="auto")
    assert row.drafter.asked[1] == row.stats.steps
