import pytest
import torch

from draftsmith import DraftsmithError, SamplingParams
from draftsmith.sampling import greedy, probs


def test_greedy_is_one_hot_argmax():
    p = probs(torch.tensor([[0.1, 3.0, 2.0]]), SamplingParams(temperature=0))
    assert p.tolist() == [[0.0, 1.0, 0.0]]


def test_temperature_top_k_top_p():
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0]).log_softmax(-1)
    base = logits.softmax(-1)
    assert torch.allclose(probs(logits, SamplingParams(temperature=1.0)), base)
    top2 = probs(logits, SamplingParams(temperature=1.0, top_k=2))
    assert top2[2:].sum() == 0 and torch.allclose(top2[:2], base[:2] / base[:2].sum())
    # top_p keeps the smallest prefix reaching the mass: base[0] < 0.7 <= base[0] + base[1]
    assert base[0] < 0.7 <= base[0] + base[1]
    nucleus = probs(logits, SamplingParams(temperature=1.0, top_p=0.7))
    assert (nucleus > 0).tolist() == [True, True, False, False]
    hot = probs(logits, SamplingParams(temperature=0.5))
    assert hot[0] > base[0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": -1},
        {"temperature": float("nan")},
        {"temperature": 1e9},
        {"top_p": 0},
        {"top_p": 1.5},
        {"top_k": -3},
        {"max_new_tokens": 0},
        {"max_new_tokens": -5},
        {"stop": [""]},
    ],
)
def test_bad_sampling_values_are_clear_errors(kwargs):
    with pytest.raises(DraftsmithError) as err:
        SamplingParams(**kwargs)
    assert next(iter(kwargs)) in str(err.value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("row,want", [([0.0, 3.0, 1.0], 1), ([2.0, 2.0, 1.0], 0), ([-1.0, -1.0, -1.0], 0),
                                      ([1.0, 1.5, 1.5], 1), ([float("-inf"), -5.0, float("-inf")], 1)])
def test_greedy_picks_the_first_maximum_in_every_precision(dtype, row, want):
    assert greedy(torch.tensor([row, row]).to(dtype)).tolist() == [want, want]
    big = torch.randn(3, 5, 4096, generator=torch.Generator().manual_seed(0)).to(dtype)
    assert torch.equal(greedy(big), big.float().argmax(-1))


def test_inverse_cdf_sampling_follows_p_and_skips_zero_mass():
    """Guards: a CPU generator driving sampling of GPU logits (torch.multinomial refuses a generator
    on another device) must still draw from p; this is the path sample() takes then."""
    from draftsmith.sampling import inverse_cdf

    p = torch.tensor([[0.2, 0.0, 0.5, 0.0, 0.3]])
    u = torch.rand(20000, 1, generator=torch.Generator().manual_seed(0))
    ids = inverse_cdf(p.expand(20000, -1), u)
    freq = torch.bincount(ids, minlength=5).float() / 20000
    assert freq[1] == 0 and freq[3] == 0
    assert torch.allclose(freq, p[0], atol=0.015)
    assert inverse_cdf(p, torch.zeros(1, 1)).tolist() == [0] and inverse_cdf(p, torch.full((1, 1), 0.999999)).tolist() == [4]
