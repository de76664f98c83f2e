"""SmartSpec's draft-length policy as tables: the step-cost model, expected tokens, the choice of
k, probes and the safety net (no model needed)."""

from collections import deque

import pytest

from draftsmith.policy.smartspec import History, SmartSpec, StepCost, bucket, theil_sen


def by_tokens(curve: dict[int, float]):
    """cost(rows, width) from {tokens per forward: seconds}, linear between points."""
    pts = sorted(curve.items())

    def cost(rows: int, width: int) -> float:
        x = rows * width
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            if x <= x1:
                return y0 + (y1 - y0) * max(0, x - x0) / (x1 - x0)
        (x0, y0), (x1, y1) = pts[-2], pts[-1]
        return y1 + (y1 - y0) * (x - x1) / (x1 - x0)
    return cost


FREE = by_tokens({1: 1.0, 16: 1.05, 64: 1.1, 256: 4.0})  # verification nearly free
TEN_PERCENT = by_tokens({1: 1.0, 128: 13.7})             # each extra token costs 10% of a step
LINEAR = by_tokens({1: 1.0, 2: 2.0, 128: 128.0})          # cost proportional to tokens: nothing is free


@pytest.mark.parametrize("cost, accepted, batch, want", [
    (FREE, [8] * 8 + [0] * 2, 1, 8),           # long drafts mostly accepted, free to verify: draft the most
    (TEN_PERCENT, [2] * 10, 1, 2),             # exactly 2 accepted per step: drafting more only costs
    (TEN_PERCENT, [8] + [0] * 19, 1, 0),       # rarely accepted and not free: plain decoding
    (LINEAR, [8] * 8 + [0] * 2, 8, 0),         # a batch that saturates the machine: plain batched decoding
])
def test_draft_length_table(cost, accepted, batch, want):
    assert SmartSpec(8, cost).choose_k([History(spec=[(8, a) for a in accepted])] * batch) == want


@pytest.mark.parametrize("samples, k, want", [
    ([], 2, 1.75),                               # no history: 1 + 0.5 + 0.25
    ([(4, 0)] * 3 + [(4, 4)], 2, 1.5),           # bursts: 0, 0, 0, then all
    ([(4, 0), (4, 0)], 4, 1.0),                  # the drafter had nothing (or all was rejected): only the bonus
    ([(1, 1)], 3, 1 + 1 + 0.5 + 0.25),           # all of 1 accepted: longer drafts guessed at 0.5, 0.25
    ([(4, 2)], 6, 3.0),                          # stopped short of what was offered: no more at any k
])
def test_expected_tokens_table(samples, k, want):
    assert SmartSpec.expected_tokens(samples, k) == pytest.approx(want)


def test_new_rows_borrow_the_pool_and_plain_runs_probe():
    policy = SmartSpec(8, TEN_PERCENT, probe_every=3)
    policy.pool.extend([(8, 0)] * 20)          # the batch's history: nothing is ever accepted
    assert policy.samples([], policy.pool) is policy.pool
    assert [policy.choose_k([History()]) for _ in range(5)] == [0, 0, 0, 1, 0]
    assert policy.choose_k([History(spec=[(8, 8)] * 4)]) == 8  # its own history, once it has some, wins


def test_backs_off_when_drafting_really_was_slower():
    """The model says draft (every draft accepted, verification free), but the steps drafting got
    in this batch-size bucket committed fewer tokens per second than plain ones: plain it is. A
    long drafting run is broken by one plain step so both figures stay current."""
    policy = SmartSpec(8, FREE, probe_every=4)
    rows = [History(spec=[(8, 8)] * 8)] * 3
    assert [policy.choose_k(rows) for _ in range(6)] == [8, 8, 8, 8, 0, 8]
    policy.realized[(4, False)] = deque([(3, 0.75)] * 8)  # enough plain steps: plain every probe_every + 1
    assert [policy.choose_k(rows) for _ in range(6)] == [8, 8, 8, 0, 8, 8]
    policy.realized[(4, True)] = deque([(3, 1.0)] * 8)    # 3 tokens/s drafting
    policy.realized[(4, False)] = deque([(1, 0.25)] * 8)  # 4 tokens/s plain
    assert policy.choose_k(rows) == 0
    assert policy.choose_k(rows[:1]) == 8                # another bucket has its own figures
    policy.realized[(4, True)] = deque([(5, 1.0)] * 8)
    assert policy.choose_k(rows) == 8


@pytest.mark.parametrize("sizes, drafted, want", [
    ([0, 0, 0, 0], [(4, 4)] * 8, 0),           # nobody has a draft: plain, whatever the history
    ([4, 0, 0, 0], [(4, 4)] * 8, 4),           # one row's draft, always kept so far, verification cheap: all of it
    ([8, 0, 0, 0], [(8, 1)] * 8, 1),           # drafts of this kind keep 1 token: cut to 1
    ([3, 3, 3, 3], [(8, 8)] * 8, 3),           # the drafts are only 3 long: k goes no further
])
def test_trimmed_drafts_table(sizes, drafted, want):
    """Trimmable drafters: the drafts are made first, and k is chosen knowing each row's size."""
    cost = by_tokens({1: 1.0, 4: 1.0, 40: 1.5})
    histories = [History(drafted=list(drafted)) for _ in sizes]
    assert SmartSpec(8, cost).choose_k(histories, sizes) == want


def test_record_keeps_both_histories():
    policy, h = SmartSpec(8, FREE), History()
    policy.record(h, offered=8, size=0, accepted=0)  # nothing drafted: counts against k, not against drafts
    policy.record(h, offered=8, size=5, accepted=2)
    assert h.spec == [(8, 0), (8, 2)] and h.drafted == [(5, 2)]
    assert list(policy.pool) == h.spec and list(policy.pool_drafted) == h.drafted


def test_observed_steps_scale_their_kind():
    policy = SmartSpec(4, lambda rows, width: 0.1 * rows * width)
    for _ in range(50):
        policy.observe_step(seconds=0.4, rows=2, width=1, tokens=2)  # plain steps take twice the forward
    assert policy.step_cost(2, 1) == pytest.approx(0.4, rel=0.01)
    assert policy.step_cost(2, 3) == pytest.approx(0.6)           # drafting steps: not seen yet, unscaled
    assert policy.realized[(2, False)][-1] == (1.0, 2.0)  # tokens per row, seconds per plain forward


def test_tree_drafts_are_costed_at_their_real_width():
    """A tree drafter asked for depth k proposes many more than k nodes: once steps have shown
    it, k is chosen for the width the batch really gets."""
    cost = by_tokens({1: 1.0, 4: 1.0, 64: 3.0})
    policy = SmartSpec(4, cost)
    rows = [History(spec=[(4, 1)] * 8)] * 4           # one token accepted per drafting step
    assert policy.choose_k(rows) == 1                  # as chains: 4 rows × 2 tokens is nearly free
    for _ in range(30):
        policy.observe_step(seconds=cost(4, 9), rows=4, width=9, tokens=8, k=1)  # 8 nodes at depth 1
    assert policy.nodes_per_k == pytest.approx(8.0, rel=0.01)
    assert policy.choose_k(rows) == 0                  # 4 rows × 9 tokens for one more token each: no


def test_the_net_compares_batch_sizes_in_a_bucket_fairly():
    """Plain steps at 16 rows commit more tokens per second than drafting steps at 9 rows only
    because they have more rows: per row and per plain forward of its own size, drafting (τ 2 at
    a 1.33x step) wins, so the net must not switch drafting off."""
    cost = lambda rows, width: 1.0 + 0.01 * rows * width  # noqa: E731
    policy = SmartSpec(4, cost)
    for _ in range(8):
        policy.observe_step(seconds=cost(16, 1), rows=16, width=1, tokens=16)
        policy.observe_step(seconds=cost(9, 5), rows=9, width=5, tokens=18)
    assert 16 / cost(16, 1) > 18 / cost(9, 5)  # the raw rates would say drafting is worse
    assert not policy.realized_worse(9) and not policy.realized_worse(16)
    for _ in range(16):
        policy.observe_step(seconds=cost(9, 5), rows=9, width=5, tokens=9)  # now τ 1 at a wider step
    assert policy.realized_worse(12)


def test_a_probe_after_the_net_drafts_the_models_k():
    policy = SmartSpec(8, FREE, probe_every=2)
    policy.realized[(1, True)] = deque([(1.0, 2.0)] * 8)   # drafting: half the plain rate
    policy.realized[(1, False)] = deque([(1.0, 1.0)] * 8)
    rows = [History(spec=[(8, 8)] * 8)]                  # the model says: draft all 8
    assert [policy.choose_k(rows) for _ in range(4)] == [0, 0, 8, 0]


def test_trimmed_rows_without_history_borrow_the_pooled_drafts():
    cost = by_tokens({1: 1.0, 4: 1.0, 40: 1.5})
    policy = SmartSpec(8, cost)
    policy.pool_drafted.extend([(6, 6)] * 10)            # drafts of this kind have been kept whole
    assert policy.choose_k([History(), History()], [6, 2]) == 6
    policy.pool_drafted.clear()
    policy.pool_drafted.extend([(6, 0)] * 10)            # ... and now they never are
    assert policy.choose_k([History(), History()], [6, 2]) == 0


@pytest.mark.parametrize("rows, want", [(1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (16, 16), (17, 32)])
def test_bucket_table(rows, want):
    assert bucket(rows) == want


@pytest.mark.parametrize("xs, ys, want", [
    ([0, 1, 2, 3], [1, 3, 5, 7], (1.0, 2.0)),         # exactly a line
    ([0, 1, 2, 3, 4], [1, 2, 30, 4, 5], (1.0, 1.0)),  # one wild timing barely moves it
    ([0], [2.0], (2.0, 0.0)),                         # one point: flat
])
def test_theil_sen_table(xs, ys, want):
    assert theil_sen(xs, ys) == pytest.approx(want)


def test_step_cost_interpolates_between_batch_sizes():
    points = [(1, w, 1.0 + 0.1 * (w - 1)) for w in (1, 2, 3)] + [(4, w, 2.0 + 0.5 * (w - 1)) for w in (1, 2, 3)]
    points.append((4, 2, 40.0))  # a wild timing
    cost = StepCost(points + [(4, 4, 3.5)])
    assert cost(1, 3) == pytest.approx(1.2)
    assert cost(4, 3) == pytest.approx(3.0)
    assert cost(2, 1) == pytest.approx(1.0 + (2.0 - 1.0) / 3)  # a third of the way from 1 row to 4
    assert cost(8, 1) == pytest.approx(2.0 + 4 / 3 * 1.0)      # beyond: extrapolated, never down
    assert StepCost([(2, 1, 1.2), (2, 3, 1.0)])(2, 9) == pytest.approx(1.2)  # a slope < 0 is 0
