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
