"""Verifier table tests: what one step keeps for a given draft and target logits."""

import pytest
import torch

from draftsmith import Draft, SamplingParams
from draftsmith.verify import GreedyVerifier, RejectionVerifier
from tests.conftest import argmax_logits

V = 6
GREEDY = SamplingParams(temperature=0.0)


def logits_for(argmaxes: list[int]) -> torch.Tensor:
    return argmax_logits(argmaxes, V)


@pytest.mark.parametrize(
    "draft, target_argmax, accepted, tokens",
    [
        ([1, 2, 3], [1, 2, 3, 4], 3, [1, 2, 3, 4]),  # perfect match: all accepted + bonus
        ([1, 2, 3], [5, 2, 3, 4], 0, [5]),  # mismatch at once: the target's correction only
        ([1, 2, 3], [1, 5, 3, 4], 1, [1, 5]),  # early mismatch: later matches do not count
        ([1, 2, 3], [1, 2, 0, 4], 2, [1, 2, 0]),  # last draft token wrong
        ([], [4], 0, [4]),  # empty draft: plain decoding, one bonus token
    ],
)
def test_greedy_table(draft, target_argmax, accepted, tokens):
    d = Draft(torch.tensor([draft], dtype=torch.long).reshape(1, len(draft)))
    r = GreedyVerifier().verify_row(d, logits_for(target_argmax), GREEDY)
    assert r.num_accepted == accepted
    assert r.num_drafted == len(draft)
    assert r.tokens[0].tolist() == tokens


def one_hot_logits(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor([rows]).log()


@pytest.mark.parametrize("q_given", [False, True])
def test_rejection_certain_tokens(q_given):
    """With p one-hot on the draft tokens, every draft token is accepted whatever q says."""
    p_rows = [[0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0]]
    draft_ids = torch.tensor([[1, 2]])
    q = torch.full((1, 2, V), 1 / V) if q_given else None
    r = RejectionVerifier().verify_row(Draft(draft_ids, q=q), one_hot_logits(p_rows), SamplingParams(temperature=1.0),
                                   torch.Generator().manual_seed(0))
    assert r.num_accepted == 2
    assert r.tokens[0].tolist() == [1, 2, 3]


def test_rejection_impossible_token_rejected_and_corrected():
    """A deterministic draft token with p = 0 is always rejected; the bonus comes from p minus it."""
    p_rows = [[0, 0, 0.5, 0.5, 0, 0], [1 / V] * V]
    r = RejectionVerifier().verify_row(Draft(torch.tensor([[1]])), one_hot_logits(p_rows), SamplingParams(temperature=1.0),
                                   torch.Generator().manual_seed(0))
    assert r.num_accepted == 0
    assert r.tokens[0].tolist()[0] in (2, 3)


def test_rejection_residual_excludes_overdrafted_mass():
    """On rejection, the bonus is drawn from norm(max(0, p - q)): tokens where q >= p never appear."""
    p = torch.tensor([0.1, 0.6, 0.3, 0.0, 0.0, 0.0])
    q = torch.tensor([0.7, 0.1, 0.2, 0.0, 0.0, 0.0])  # residual: [0, 0.5, 0.1] / 0.6
    logits = torch.stack([p, torch.full((V,), 1 / V)]).log().unsqueeze(0)  # [1, 2, V]
    g = torch.Generator().manual_seed(0)
    seen = torch.zeros(V)
    for _ in range(3000):
        r = RejectionVerifier().verify_row(Draft(torch.tensor([[0]]), q=q.view(1, 1, V)), logits,
                                       SamplingParams(temperature=1.0), g)
        if r.num_accepted == 0:
            seen[r.tokens[0, 0]] += 1
    assert seen[0] == 0 and seen[3:].sum() == 0
    share = seen[1] / seen.sum()
    assert abs(share - 5 / 6) < 0.04


def test_rejection_empty_draft_samples_bonus():
    logits = one_hot_logits([[0, 0, 0, 0, 1, 0]])
    r = RejectionVerifier().verify_row(Draft.empty(), logits, SamplingParams(temperature=0.7), torch.Generator())
    assert r.num_accepted == 0 and r.tokens[0].tolist() == [4]


def test_rejection_same_seed_same_result():
    torch.manual_seed(1)
    logits = torch.randn(1, 4, V)
    q = torch.randn(1, 3, V).softmax(-1)
    d = Draft(torch.tensor([[0, 1, 2]]), q=q)
    runs = [RejectionVerifier().verify_row(d, logits, SamplingParams(temperature=1.0), torch.Generator().manual_seed(7))
            for _ in range(2)]
    assert runs[0].tokens.tolist() == runs[1].tokens.tolist()


# ----- many rows in one call: each row's result is that row's alone ---------------------------
def _rows(seed: int, B: int = 3, N: int = 4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, N + 1, V, generator=g) * 3  # [B, N+1, V]
    q = torch.randn(B, N, V, generator=g).softmax(-1)  # [B, N, V]
    ids = torch.multinomial(q.reshape(B * N, V), 1, generator=g).reshape(B, N)  # drawn from q
    ids[1, :2] = logits[1, :2].argmax(-1)  # row 1 agrees with the target's argmax at first: ragged acceptance
    ids[2] = logits[2, :N].argmax(-1)
    return Draft(ids, q=q), logits


def _same(a, b):
    assert a.tokens.tolist() == b.tokens.tolist()
    assert (a.num_accepted, a.num_drafted, a.path) == (b.num_accepted, b.num_drafted, b.path)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_many_rows_equal_each_row_alone(seed):
    draft, logits = _rows(seed)
    results = GreedyVerifier().verify(Draft(draft.token_ids), logits, GREEDY)
    assert len(results) == 3
    for b, r in enumerate(results):
        _same(r, GreedyVerifier().verify(Draft(draft.token_ids[b:b + 1]), logits[b:b + 1], GREEDY)[0])
    assert results[1].num_accepted >= 2 and results[2].num_accepted == 4  # ragged: rows accept different counts


def test_greedy_many_rows_tree():
    """A tree draft (parents shared by the rows): each row walks its own argmax path."""
    parents = torch.tensor([-1, -1, 0, 1])
    ids = torch.tensor([[1, 2, 3, 4], [2, 1, 5, 0], [0, 3, 1, 1]])
    logits = torch.cat([argmax_logits(a, V) for a in ([1, 3, 0, 5, 0], [2, 0, 0, 5, 5], [4, 0, 0, 0, 0])])
    results = GreedyVerifier().verify(Draft(ids, parents=parents), logits, GREEDY)
    assert [r.path for r in results] == [[0, 2], [0], []]
    for b, r in enumerate(results):
        _same(r, GreedyVerifier().verify_row(Draft(ids[b:b + 1], parents=parents), logits[b:b + 1], GREEDY))


@pytest.mark.parametrize("q_given", [False, True])
@pytest.mark.parametrize("params", [SamplingParams(temperature=1.0), SamplingParams(temperature=0.8, top_k=3)])
def test_rejection_many_rows_equal_each_row_alone(q_given, params):
    """With the generator in the same state, B rows in one call draw what B calls, one row
    each, draw in turn (the rule consumes the generator row by row)."""
    draft, logits = _rows(3)
    if not q_given:
        draft = Draft(draft.token_ids)
    results = RejectionVerifier().verify(draft, logits, params, torch.Generator().manual_seed(11))
    assert len(results) == 3
    g = torch.Generator().manual_seed(11)
    for b, r in enumerate(results):
        _same(r, RejectionVerifier().verify(draft.row(b), logits[b:b + 1], params, g)[0])
        assert r.tokens.shape == (1, r.num_accepted + 1) and r.num_drafted == 4
