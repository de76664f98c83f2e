"""bucketed_steps: the steps of one epoch of `distill --features`."""

import random

import pytest

from draftsmith.train.pipeline import LENGTH_WINDOW, bucketed_steps


def _lengths(n: int, seed: int = 0) -> tuple[list[int], list[int]]:
    rng = random.Random(seed)
    lengths = [rng.randint(20, 512) for _ in range(n)]
    return lengths, [length - rng.randint(5, 15) for length in lengths]


@pytest.mark.parametrize("n,per_step", [(1, 64), (5, 10_000), (300, 2048), (1000, 512)])
def test_every_sequence_once_and_steps_full(n, per_step):
    lengths, answers = _lengths(n)
    steps = bucketed_steps(lengths, answers, per_step, seed=0, epoch=0)
    assert sorted(k for step in steps for k in step) == list(range(n))
    # a step takes sequences until it holds per_step answer tokens, and no more; only one (the
    # epoch's last before the seeded shuffle) may hold fewer
    assert all(sum(answers[k] for k in step[:-1]) < per_step for step in steps)
    assert sum(sum(answers[k] for k in step) < per_step for step in steps) <= 1


def test_batches_hold_similar_lengths():
    lengths, answers = _lengths(2 * LENGTH_WINDOW * 4)
    steps = bucketed_steps(lengths, answers, 2048, seed=0, epoch=0)
    padded = sum(len(step) * max(lengths[k] for k in step) for step in steps)
    assert padded < 1.25 * sum(lengths)  # unsorted, these batches pad to 1.74x


def test_seeded_by_seed_and_epoch():
    lengths, answers = _lengths(400)
    a = bucketed_steps(lengths, answers, 2048, seed=0, epoch=0)
    assert a == bucketed_steps(lengths, answers, 2048, seed=0, epoch=0)
    assert a != bucketed_steps(lengths, answers, 2048, seed=0, epoch=1)
    assert a != bucketed_steps(lengths, answers, 2048, seed=1, epoch=0)
