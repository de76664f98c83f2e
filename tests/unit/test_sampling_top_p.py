"""top_p at the edge of float precision."""

from __future__ import annotations

import pytest
import torch

from draftsmith.sampling import probs, sample
from draftsmith.types import SamplingParams


@pytest.mark.parametrize("top_p", [1e-300, 5e-324, 1e-45, 1e-9])
def test_tiny_top_p_keeps_the_top_token(top_p):
    """Bug: top_p=1e-300 at temperature 1 compared as 0 in float32, dropped every token, and the
    NaN probabilities made the server answer 500. A top_p this small keeps exactly the most
    likely token (as every engine does)."""
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 50)  # [B, q, V]
    p = probs(logits, SamplingParams(temperature=1.0, top_p=top_p))
    assert torch.isfinite(p).all()
    assert torch.equal(p, torch.nn.functional.one_hot(logits.argmax(-1), 50).float())
    assert torch.equal(sample(p[:, 0], torch.Generator().manual_seed(1)), logits[:, 0].argmax(-1))


def test_tiny_top_p_after_top_k_and_ties():
    """The kept token is the first most likely one, also with -inf logits from top-k and ties."""
    logits = torch.tensor([[1.0, 3.0, 3.0, -2.0, 0.5]])
    p = probs(logits, SamplingParams(temperature=1.0, top_k=3, top_p=1e-300))
    assert torch.isfinite(p).all() and p.sum().item() == 1.0 and (p > 0).sum().item() == 1
    assert p[0, 1].item() == 1.0 or p[0, 2].item() == 1.0


def test_ordinary_top_p_unchanged():
    """The fix keeps ordinary nucleus sampling as it was: the smallest prefix reaching top_p."""
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    p = probs(logits, SamplingParams(temperature=1.0, top_p=0.7))
    assert torch.allclose(p, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
