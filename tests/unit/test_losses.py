"""Distillation losses against hand-computed values on tiny distributions, and their gradient
direction: a step against the gradient moves q toward p (lowers TVD(p, q))."""

import math

import pytest
import torch

from draftsmith.train.losses import LOSSES, distill_loss, per_token_loss

P, Q = [0.5, 0.5], [0.25, 0.75]
KL_PQ = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
KL_QP = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
M = [0.375, 0.625]
JSD = 0.5 * (0.5 * math.log(0.5 / 0.375) + 0.5 * math.log(0.5 / 0.625)) \
    + 0.5 * (0.25 * math.log(0.25 / 0.375) + 0.75 * math.log(0.75 / 0.625))
# TVD++ on two positions of (P, Q) with samples y = 0 and y = 1: rewards 1{p > q} = [1, 0],
# normalised to [+1/√2, -1/√2] (mean 0.5, unbiased std √½); surrogate -r̃ · log q(y)
TVDPP = 0.5 * (-(1 / math.sqrt(2)) * math.log(0.25) + (1 / math.sqrt(2)) * math.log(0.75))


def logits(dist):
    return torch.tensor(dist).log().repeat(2, 1)  # [2, V]


@pytest.mark.parametrize("name,expected", [("fkl", KL_PQ), ("rkl", KL_QP), ("jsd", JSD), ("tvd", 0.25), ("tvdpp", TVDPP)])
def test_loss_matches_hand_computed_value(name, expected):
    value = distill_loss(name, logits(P), logits(Q), tokens=torch.tensor([[0], [1]]))
    assert value.item() == pytest.approx(expected, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("name", ["fkl", "rkl", "jsd", "tvd"])
def test_distance_is_zero_when_q_equals_p(name):
    assert distill_loss(name, logits(P), logits(P)).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", LOSSES)
def test_gradient_step_moves_q_toward_p(name):
    gen = torch.Generator().manual_seed(0)
    p_logits = torch.randn(64, 6, generator=gen) * 2  # [N, V]
    q_logits = torch.randn(64, 6, generator=gen).requires_grad_(True)

    def tvd(z):
        return 0.5 * (p_logits.softmax(-1) - z.softmax(-1)).abs().sum(-1).mean()

    loss = distill_loss(name, p_logits, q_logits, generator=gen)
    loss.backward()
    stepped = (q_logits - 0.5 * q_logits.grad).detach()
    assert tvd(stepped) < tvd(q_logits.detach())
    if name != "tvdpp":  # a surrogate, not a distance: only its effect on TVD is meaningful
        assert distill_loss(name, p_logits, stepped) < loss


def test_unknown_loss_is_a_clear_error():
    from draftsmith.errors import DraftsmithError

    with pytest.raises(DraftsmithError, match="unknown loss"):
        per_token_loss("kl2", logits(P), logits(Q))


def test_masked_target_tokens_give_finite_losses():
    p = torch.tensor([[0.0, 1.0, float("-inf")]])  # a token the target can never pick
    q = torch.tensor([[0.5, 0.2, -1.0]])
    for name in ("fkl", "rkl", "jsd", "tvd"):
        value = distill_loss(name, p, q)
        assert torch.isfinite(value) or (name == "rkl" and value == float("inf")), name
