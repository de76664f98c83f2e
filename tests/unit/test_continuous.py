"""Continuous speculative decoding (draftsmith/continuous.py): the acceptance rule for real-valued
tokens keeps the target's distribution, and the test can tell when it does not."""

import math

import pytest
import torch

from draftsmith import continuous
from draftsmith.continuous import ContinuousStats, Gaussian, GaussianMixture, generate, ks_pvalue, overlap, verify_chain
from draftsmith.errors import DraftsmithError


def target_at(x: torch.Tensor) -> GaussianMixture:
    """The target's density of the next token given the last one: two modes either side of 0.6·x."""
    c = 0.6 * float(x[-1])
    return GaussianMixture([0.5, 0.5], [[c - 1.2], [c + 1.2]], [[0.45], [0.45]])


def target(seq: torch.Tensor):
    """One causal call: the density after each prefix (a Markov process reads the last token)."""
    return [target_at(seq[: j + 1]) for j in range(seq.shape[0])]


def drafter(seq: torch.Tensor) -> Gaussian:
    """A broad unimodal drafter centred between the target's modes: it overlaps the target but misses both modes."""
    return Gaussian([0.6 * float(seq[-1, 0])], [1.0])


def runs(use_drafter: bool, n_runs: int, seed: int, stats: ContinuousStats | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    prompt = torch.zeros(1, 1, dtype=torch.float64)
    out = [generate(target, drafter if use_drafter else None, prompt, n=4, k=3, generator=g, stats=stats)[:, 0]
           for _ in range(n_runs)]
    return torch.stack(out)  # [n_runs, 4]


def min_pvalue(spec: torch.Tensor, plain: torch.Tensor) -> float:
    """Smallest KS p-value over each position's marginal and two joint statistics."""
    stats = [(spec[:, i], plain[:, i]) for i in range(spec.shape[1])]
    stats.append((spec[:, 0] * spec[:, 1], plain[:, 0] * plain[:, 1]))
    stats.append((spec.sum(1), plain.sum(1)))
    return min(ks_pvalue(a, b) for a, b in stats)


N_RUNS = 2500


@pytest.fixture(scope="module")
def plain():
    return runs(False, N_RUNS, seed=1)


def test_speculative_sampling_of_continuous_tokens_keeps_the_target_distribution(plain):
    """Guards the residual: a rejected token must be replaced by a draw from max(0, p - q), not from p."""
    stats = ContinuousStats()
    spec = runs(True, N_RUNS, seed=2, stats=stats)
    assert stats.accepted > 0 and stats.accepted < stats.drafted  # both branches of the rule ran
    assert stats.fallbacks == 0
    assert min_pvalue(spec, plain) > 1e-3


def test_the_distribution_test_fails_when_rejections_draw_from_p(plain, monkeypatch):
    """Negative control: drawing the replacement token from p itself (the classic slip) bends the
    distribution toward where q is large, and the same test must see it."""
    def from_p(p, q, generator, **_):
        return p.sample(1, generator)[0], 1, False

    monkeypatch.setattr(continuous, "residual_sample", from_p)
    spec = runs(True, N_RUNS, seed=2)
    assert min_pvalue(spec, plain) < 1e-3  # the threshold the lossless rule must stay above


def test_first_token_acceptance_is_one_minus_total_variation():
    """P(accept x ~ q) = ∫ min(p, q) = 1 - TV(p, q), checked against a numerical integral."""
    prompt = torch.zeros(1, 1, dtype=torch.float64)
    p, q = target_at(prompt[0]), drafter(prompt)
    expected = overlap(p, q)
    g = torch.Generator().manual_seed(3)
    n, accepted = 6000, 0
    for _ in range(n):
        x = q.sample(1, g)
        accepted += verify_chain(x, [p, p], [q], g)[0]
    assert abs(accepted / n - expected) < 4 * math.sqrt(expected * (1 - expected) / n)


def test_one_target_call_per_step_and_tau_counts_the_bonus():
    """Guards the loop's shape: the draft is verified in one target call, and τ counts the bonus token."""
    calls = []

    def counting_target(seq):
        calls.append(seq.shape[0])
        return target(seq)

    stats = ContinuousStats()
    out = generate(counting_target, drafter, torch.zeros(1, 1, dtype=torch.float64), n=12, k=3,
                   generator=torch.Generator().manual_seed(0), stats=stats)
    assert out.shape == (12, 1)
    assert len(calls) == stats.steps
    assert sum(stats.per_step) >= 12 and stats.tau == sum(stats.per_step) / stats.steps
    assert stats.accepted + stats.steps == sum(stats.per_step)
    assert 0 < stats.rejections <= stats.steps and stats.residual_draws >= stats.rejections  # each residual draws p at least once


def test_the_same_drafter_as_the_target_accepts_everything():
    """p = q: the ratio is 1 and every draft token is kept (τ = k + 1 but for the end)."""
    stats = ContinuousStats()
    generate(target, lambda seq: target_at(seq), torch.zeros(1, 1, dtype=torch.float64), n=9, k=2,
             generator=torch.Generator().manual_seed(0), stats=stats)
    assert stats.accepted == stats.drafted and stats.residual_draws == 0


def test_bad_inputs_are_one_message():
    """A malformed density, a chain without its densities, a wrong prompt shape: a message, not a traceback."""
    g = torch.Generator().manual_seed(0)
    with pytest.raises(DraftsmithError, match="std must be > 0"):
        Gaussian([0.0], [0.0])
    with pytest.raises(DraftsmithError, match="sum to 1"):
        GaussianMixture([0.5, 0.6], [[0.0], [1.0]], [[1.0], [1.0]])
    with pytest.raises(DraftsmithError, match="need 2 drafter densities and 3 target"):
        verify_chain(torch.zeros(2, 1), [Gaussian([0.0], [1.0])], [Gaussian([0.0], [1.0])], g)
    with pytest.raises(DraftsmithError, match="prompt must be"):
        generate(target, drafter, torch.zeros(3), n=2, k=1, generator=g)
    with pytest.raises(DraftsmithError, match="k must be"):
        generate(target, drafter, torch.zeros(1, 1), n=2, k=-1, generator=g)


def test_the_ks_test_tells_a_shift_from_a_second_sample():
    """Guards the statistic the distribution test rests on: two samples of one law pass, a shift of 0.2 std fails."""
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(3000, generator=g), torch.randn(3000, generator=g)
    assert ks_pvalue(a, b) > 0.01
    assert ks_pvalue(a, b + 0.2) < 1e-4
