"""The lossy rules (typical, relaxed, bild, arbitrage): exact acceptance decisions on hand-made target
distributions, chains and trees, and `lossless = False` wherever a run reports it."""

import math
import warnings

import pytest
import torch

from draftsmith import Draft, SamplingParams, SpeculativeDecoder
from draftsmith.errors import DraftsmithError
from draftsmith.verify import ArbitrageVerifier, BildVerifier, RelaxedVerifier, TypicalVerifier, build_verifier
from draftsmith.verify.lossy import LossyRuleWarning, LossyVerifier
from tests.conftest import tiny_model

V = 6
GREEDY = SamplingParams(temperature=0.0)
T1 = SamplingParams(temperature=1.0)

CONFIDENT = [0.9, 0.1, 0, 0, 0, 0]  # H ~ 0.325: typical's threshold is epsilon (0.09)
SPLIT = [0.5, 0.45, 0.05, 0, 0, 0]  # H ~ 0.856: threshold min(0.09, 0.3 e^-H = 0.128) = 0.09
FLAT = [0.2, 0.2, 0.2, 0.2, 0.2, 0]  # H = ln 5: threshold 0.3 / 5 = 0.06
GRADED = [0.5, 0.3, 0.15, 0.05, 0, 0]  # -log p: 0.69, 1.20, 1.90, 3.00, inf, inf


def logits(rows):
    """[1, len(rows), V] logits whose softmax is each row (zeros stay zeros)."""
    return torch.tensor([rows], dtype=torch.float32).log()


def chain(ids, q=None):
    return Draft(torch.tensor([ids]), q=q)


def tree(ids, parents, q=None):
    return Draft(torch.tensor([ids]), q=q, parents=torch.tensor(parents))


def run(rule, draft, rows, params=GREEDY, seed=0):
    r = rule.verify(draft, logits(rows), params, torch.Generator().manual_seed(seed))
    assert len(r) == 1
    return r[0]


# ----- typical ------------------------------------------------------------------------------
def test_typical_threshold_matches_medusa_formula():
    for row in (CONFIDENT, SPLIT, FLAT):
        p = torch.tensor(row)
        h = -(p * (p + 1e-5).log()).sum()
        threshold = min(0.09, 0.3 * math.exp(-float(h)))
        for x in range(V):
            got = run(TypicalVerifier(), chain([x]), [row, FLAT]).num_accepted
            assert got == int(row[x] > threshold or x == max(range(V), key=row.__getitem__)), (row, x)


@pytest.mark.parametrize("draft, rows, opts, accepted, tokens", [
    # 1 passes (0.1 > 0.09), 1 passes (0.45), 2 fails (0.05 < 0.09): the target's argmax (0) follows
    ([1, 1, 2], [CONFIDENT, SPLIT, SPLIT, FLAT], {}, 2, [1, 1, 0]),
    # a lower epsilon lets the 0.05 token pass: all three kept, then the bonus (argmax of FLAT: 0)
    ([1, 1, 2], [CONFIDENT, SPLIT, SPLIT, FLAT], {"epsilon": 0.01}, 3, [1, 1, 2, 0]),
    # a zero-probability token is never typical
    ([3, 1], [CONFIDENT, SPLIT, FLAT], {}, 0, [0]),
    # the first rejection ends the chain even when a later token would pass
    ([2, 0], [SPLIT, CONFIDENT, FLAT], {}, 0, [0]),
    # not the argmax, and still accepted: lossy at temperature 0
    ([4], [FLAT, FLAT], {}, 1, [4, 0]),
])
def test_typical_chain(draft, rows, opts, accepted, tokens):
    r = run(TypicalVerifier(**opts), chain(draft), rows)
    assert (r.num_accepted, r.tokens[0].tolist(), r.num_drafted) == (accepted, tokens, len(draft))


def test_typical_tree_keeps_the_longest_accepted_path():
    # nodes: 0 and 1 under the root; 2 under 0; 3 under 1; 4 under 3.  Row i+1 = after node i.
    ids, parents = [1, 0, 1, 1, 2], [-1, -1, 0, 1, 3]
    rows = [SPLIT,  # root: 1 (0.45) and 0 (0.5) both pass
            SPLIT,  # after node 0: node 2 = token 1 passes
            CONFIDENT,  # after node 1: node 3 = token 1 passes (0.1)
            FLAT,  # after node 2
            SPLIT,  # after node 3: node 4 = token 2 fails (0.05)
            FLAT]
    r = run(TypicalVerifier(), tree(ids, parents), rows)
    assert r.path == [0, 2] and r.tokens[0].tolist() == [1, 1, 0]  # depth 2 beats [1, 3] on likelihood
    rows[4] = FLAT  # now node 4 (token 2, 0.2 > 0.06) passes: [1, 3, 4] is the deepest
    r = run(TypicalVerifier(), tree(ids, parents), rows)
    assert r.path == [1, 3, 4] and r.num_accepted == 3 and r.tokens[0].tolist() == [0, 1, 2, 0]


def test_typical_tree_tie_goes_to_the_likelier_path():
    # two children of the root, both pass, no grandchildren: token 0 (0.5) beats token 1 (0.45)
    r = run(TypicalVerifier(), tree([1, 0], [-1, -1]), [SPLIT, CONFIDENT, FLAT])
    assert r.path == [1] and r.tokens[0].tolist() == [0, 0]
    r = run(TypicalVerifier(), tree([3, 4], [-1, -1]), [SPLIT, FLAT, FLAT])  # neither passes
    assert r.path == [] and r.tokens[0].tolist() == [0]


def test_typical_sampled_bonus_comes_from_p():
    r = run(TypicalVerifier(), chain([0]), [CONFIDENT, [0, 0, 0, 0, 0, 1.0]], params=T1)
    assert r.tokens[0].tolist() == [0, 5]


# ----- bild ---------------------------------------------------------------------------------
@pytest.mark.parametrize("rollback, x, kept", [
    (2.0, 0, True), (2.0, 1, True), (2.0, 2, True), (2.0, 3, False), (2.0, 4, False),
    (1.0, 2, False), (1.0, 1, False), (1.0, 0, True),
    (0.0, 0, True),  # the target's argmax is always kept at temperature 0
])
def test_bild_rollback_threshold(rollback, x, kept):
    r = run(BildVerifier(rollback=rollback), chain([x, 0]), [GRADED, CONFIDENT, FLAT])
    assert r.num_accepted == (2 if kept else 0)
    assert r.tokens[0].tolist() == ([x, 0, 0] if kept else [0])


def test_bild_chain_rolls_back_to_the_first_far_token():
    # 2 (1.90) kept, 3 (3.00) too far: rolled back there and the target's argmax follows
    r = run(BildVerifier(), chain([2, 3, 0]), [GRADED, GRADED, GRADED, FLAT])
    assert r.num_accepted == 1 and r.tokens[0].tolist() == [2, 0]


def test_bild_fallback_and_cross_entropy_use_q():
    unsure = torch.tensor([[0.5, 0.5, 0, 0, 0, 0], [0.9, 0.1, 0, 0, 0, 0]])[None]  # [1, 2, V]
    # fallback 0.6: the drafter's first node (max q 0.5) is not kept although it is close
    r = run(BildVerifier(), chain([0, 0], q=unsure), [GRADED, GRADED, FLAT], params=T1)
    assert r.num_accepted == 0
    r = run(BildVerifier(fallback=0.0), chain([0, 0], q=unsure), [GRADED, GRADED, FLAT], params=T1)
    assert r.num_accepted == 2
    # ce: -sum q log p = -(0.5 log 0.5 + 0.5 log 0.3) = 0.95 for node 0; rollback 0.9 rejects it, nll (0.69) keeps it
    assert run(BildVerifier(rollback=0.9, fallback=0, distance="ce"), chain([0, 0], q=unsure),
               [GRADED, GRADED, FLAT], params=T1).num_accepted == 0
    assert run(BildVerifier(rollback=0.9, fallback=0), chain([0, 0], q=unsure),
               [GRADED, GRADED, FLAT], params=T1).num_accepted == 2


def test_bild_tree():
    # root children: 3 (too far) and 2 (kept); under 2: 1 (kept); under 3: 0
    r = run(BildVerifier(), tree([3, 2, 1, 0], [-1, -1, 1, 0]), [GRADED, CONFIDENT, GRADED, CONFIDENT, FLAT])
    assert r.path == [1, 2] and r.tokens[0].tolist() == [2, 1, 0]


# ----- relaxed ------------------------------------------------------------------------------
# unit vectors: 0 and 1 nearly parallel, 2 and 3 nearly parallel, 4 and 5 opposite to 0
EMB = torch.tensor([[1, 0], [0.99, 0.14], [0, 1], [0.1, 1], [-1, 0], [-1, -0.1]], dtype=torch.float32)
RANKED = [0.4, 0.3, 0.2, 0.1, 0, 0]


def test_relaxed_neighbours_by_cosine():
    rule = RelaxedVerifier(k=2, embeddings=EMB)
    nb = rule.neighbours(V)(torch.tensor([0, 2, 4]))
    assert nb.tolist() == [[1, 3], [3, 1], [5, 2]]


@pytest.mark.parametrize("x, k, delta, kept", [
    (1, 1, 0.2, False),  # its neighbour 0 has 0.4 > delta: nothing lent, 0.3 < 0.4
    (1, 1, 0.5, True),  # 0 lends 0.4: 0.7 >= 0.4
    (3, 1, 0.2, False),  # 2 lends 0.2: 0.3 < 0.4
    (3, 1, 0.3, False),
    (2, 1, 0.2, True),  # (its own p below) 3 lends 0.1: 0.25 + 0.1 >= 0.3
    (0, 1, 0.0, True),  # the argmax
    (1, 1, 0.0, False),  # delta 0: greedy verification
])
def test_relaxed_greedy_decisions(x, k, delta, kept):
    p = {2: [0.3, 0.05, 0.25, 0.1, 0.3, 0]}.get(x, RANKED)  # for x=2: 0.25 + 0.1 (from 3) = 0.35 >= 0.3
    r = run(RelaxedVerifier(k=k, delta=delta, embeddings=EMB), chain([x]), [p, FLAT])
    assert r.num_accepted == int(kept)
    assert r.tokens[0].tolist() == ([x, 0] if kept else [max(range(V), key=p.__getitem__)])


def test_relaxed_lends_only_a_prefix_of_neighbours_within_delta():
    rule = RelaxedVerifier(k=2, delta=0.25, embeddings=EMB)
    # neighbours of 2: 3 then 1. p(3)=0.1 lent (0.1 <= 0.25), then p(1)=0.3 would make 0.4: not lent
    p_group, members = rule.groups(torch.tensor([2]), torch.tensor([RANKED]))
    assert members[0].tolist() == [True, False]
    assert float(p_group[0]) == pytest.approx(0.3)


def test_relaxed_sampling_group_mass_one_always_accepts_and_residual_skips_the_group():
    rule = RelaxedVerifier(k=1, delta=0.5, embeddings=EMB)
    for seed in range(20):
        r = run(rule, chain([1]), [[0.5, 0.5, 0, 0, 0, 0], FLAT], params=T1, seed=seed)
        assert r.num_accepted == 1
    # token 4 (p 0) lends from 5 (0.05): rejected w.p. 0.95; the bonus is never 4 or 5
    for seed in range(20):
        r = run(rule, chain([4]), [[0.5, 0.45, 0, 0, 0, 0.05], FLAT], params=T1, seed=seed)
        if r.num_accepted == 0:
            assert r.tokens[0].tolist()[0] in (0, 1)


def test_relaxed_tree():
    rule = RelaxedVerifier(k=1, delta=0.5, embeddings=EMB)
    # root children: 5 (neighbour 4 has nothing: 0 < 0.4) and 1 (0 lends 0.4); under 1: 3 (2 lends 0.2: 0.3 < 0.4)
    r = run(rule, tree([5, 1, 3], [-1, -1, 1]), [RANKED, FLAT, RANKED, FLAT])
    assert r.path == [1] and r.tokens[0].tolist() == [1, 0]


def test_relaxed_needs_embeddings_and_binds_to_a_target():
    with pytest.raises(DraftsmithError, match="output embeddings"):
        run(RelaxedVerifier(), chain([1]), [RANKED, FLAT])
    target = tiny_model("llama", vocab=V, seed=0)
    rule = RelaxedVerifier(k=2).bind(target)
    table = rule.neighbours(V)
    assert rule.bind(target).neighbours(V) is table  # once per model
    with pytest.raises(DraftsmithError, match="rows"):
        rule.neighbours(V + 1)


# ----- arbitrage ------------------------------------------------------------------------------
# GRADED's advantages over its argmax (token 0): token 1 0.511, token 2 1.204, token 3 2.303 nats
@pytest.mark.parametrize("draft, rows, budget, accepted", [
    ([0, 0, 0], [GRADED] * 4, 0.0, 3),  # the target's own choices cost nothing
    ([1, 0, 0], [GRADED] * 4, 0.0, 0),  # budget 0: greedy verification
    ([1, 0, 1], [GRADED] * 4, 1.0, 2),  # 0.511 + 0 + 0.511 = 1.02 > 1: the budget is spent over the step
    ([1, 0, 1], [GRADED] * 4, 1.1, 3),
    ([2, 0], [GRADED] * 3, 1.0, 0),  # one token alone past the budget
    ([1, 3], [GRADED] * 3, 3.0, 2),  # 0.511 + 2.303
    ([4], [GRADED] * 2, 50.0, 0),  # a token the target gives no mass: never kept
])
def test_arbitrage_chain_spends_the_budget_along_the_step(draft, rows, budget, accepted):
    """Guards a per-token test in place of the step's budget (the third case would keep all three)."""
    r = run(ArbitrageVerifier(budget=budget), chain(draft), rows)
    assert r.num_accepted == accepted
    assert r.tokens[0].tolist() == draft[:accepted] + [0]  # the bonus is the target's own token


def test_arbitrage_tree_budget_is_per_root_path():
    """A node pays for its own ancestors only, not for a sibling branch's departures."""
    # nodes: 0 (token 1) and 1 (token 0) under the root; 2 (token 1) under 0; 3 (token 1) under 1
    ids, parents = [1, 0, 1, 1], [-1, -1, 0, 1]
    r = run(ArbitrageVerifier(budget=0.6), tree(ids, parents), [GRADED] * 5)
    assert r.path == [1, 3]  # [0, 2] spends 1.02; [1, 3] spends 0.511
    r = run(ArbitrageVerifier(budget=1.1), tree(ids, parents), [GRADED] * 5)
    assert r.path == [1, 3]  # both fit: the likelier (sum log p -1.90 against -2.41)


def test_arbitrage_reads_the_requests_p_when_sampling():
    """At temperature 0.5 p is sharper: token 1's advantage doubles (1.02 nats) and budget 1 refuses it."""
    assert run(ArbitrageVerifier(budget=1.0), chain([1]), [GRADED] * 2).num_accepted == 1
    half = SamplingParams(temperature=0.5)
    assert run(ArbitrageVerifier(budget=1.0), chain([1]), [GRADED] * 2, params=half).num_accepted == 0


# ----- every rule: lossy wherever it shows ------------------------------------------------------
RULES = ["typical", "relaxed", "bild", "arbitrage"]


@pytest.mark.parametrize("name", RULES)
def test_rules_are_lossy_in_every_output(name):
    from draftsmith.bench.runner import Method, MethodSpec

    rule = build_verifier(name)
    assert isinstance(rule, LossyVerifier) and rule.lossless is False
    assert not rule.lossless_for(GREEDY) and not rule.lossless_for(T1)
    target = tiny_model("llama", vocab=96, seed=0)
    if name == "relaxed":
        rule.bind(target)
    dec = SpeculativeDecoder(target, "ngram:k=4", verifier=rule)
    assert dec.lossless is False
    out = dec.generate([5, 17, 3, 42, 5, 17, 3], SamplingParams(max_new_tokens=12))
    assert out.stats.lossless is False and out.stats.as_dict()["lossless"] is False
    m = Method(MethodSpec.parse(f"ngram:k=4,verifier={name}"), target)  # bench binds relaxed to the target
    assert m.lossless is False
    assert m.run([5, 17, 3, 42, 5, 17, 3], SamplingParams(max_new_tokens=8))["lossless"] is False


@pytest.mark.parametrize("spec", ["bild:rollback=0", "relaxed:delta=0", "arbitrage:budget=0"])
def test_rules_at_zero_slack_equal_plain_decoding(spec):
    """With no slack (bild rollback 0, relaxed delta 0, arbitrage budget 0) a lossy rule keeps only the target's argmax:
    its output through the loop equals plain decoding, chains and trees."""
    target = tiny_model("llama", vocab=96, seed=0)
    for drafter in ("ngram:k=4", "recycling:topk=3,branching=3-2-1"):
        rule = build_verifier(spec)
        if isinstance(rule, RelaxedVerifier):
            rule.bind(target)
        for prompt in ([5, 17, 3, 42, 5, 17, 3], [7] * 12):
            ref = SpeculativeDecoder(target, "none").generate(prompt, SamplingParams(max_new_tokens=24))
            out = SpeculativeDecoder(target, drafter, verifier=rule).generate(prompt, SamplingParams(max_new_tokens=24))
            assert out.token_ids == ref.token_ids, (spec, drafter)
            assert out.stats.lossless is False


def test_quality_note_warns_once(monkeypatch):
    from draftsmith.verify import lossy

    monkeypatch.setattr(TypicalVerifier, "quality_note", "loses 5 points (see the report)")
    monkeypatch.setattr(lossy, "_WARNED", set())
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        TypicalVerifier()
        TypicalVerifier()
    msgs = [str(w.message) for w in seen if issubclass(w.category, LossyRuleWarning)]
    assert msgs == ["verifier 'typical' is lossy: loses 5 points (see the report)"]


@pytest.mark.parametrize("spec, message", [
    ("typical:epsilon=2", "epsilon"), ("typical:delta=-1", "delta"), ("relaxed:k=-1", "k must"),
    ("relaxed:delta=3", "delta"), ("bild:rollback=-1", "rollback"), ("bild:fallback=2", "fallback"),
    ("bild:distance=kl", "distance"), ("typical:alpha=1", "no option"), ("arbitrage:budget=-1", "budget"),
    ("arbitrage:budget=inf", "budget"), ("arbitrage:budget=x", "budget"),
])
def test_bad_options(spec, message):
    with pytest.raises(DraftsmithError, match=message):
        build_verifier(spec)
