"""Batched speculative decoding: every row's greedy output equals that request run alone (fp32,
tiny models), with ragged acceptance, rows joining and leaving, cancellation and compaction;
SmartSpec's choice of draft length as a table. The drafters of the matrix are the "batch" recipes
of tests/recipes.py."""

import pytest
import torch

from draftsmith import CausalLM, DrafterBase, SamplingParams, SpeculativeDecoder, build_drafter
from draftsmith import BatchDecoder
from tests.conftest import plain_ids, tiny_model
from tests.recipes import build, recipes, verifier_of

PROMPTS = [[5, 17, 3, 42, 5, 17, 3], [7] * 12, list(range(10, 40)), [1, 2], [9, 8, 7, 9, 8, 7, 9, 8], [4]]


def alone(target, prompt, max_new):
    return SpeculativeDecoder(target, "none").generate(prompt, SamplingParams(max_new_tokens=max_new)).token_ids


@pytest.mark.parametrize("drafter", recipes("batch"))
def test_every_row_equals_its_request_alone(arch, drafter, tmp_path):
    target = tiny_model(arch)
    dec = BatchDecoder(target, build(drafter, target, arch, tmp_path), verifier=verifier_of(drafter), k_max=4,
                       smartspec=False)
    lengths = [40, 25, 33, 12, 28, 20]
    outs = dec.generate(PROMPTS, [SamplingParams(max_new_tokens=n) for n in lengths])
    for prompt, n, out in zip(PROMPTS, lengths, outs):
        assert out.token_ids == plain_ids(arch, prompt, n), f"row {prompt[:3]} diverged"
        assert out.stats.new_tokens == n


@pytest.mark.parametrize("order", [[5, 0], [0, 5], [5, 3]])
def test_one_token_prompts_join_any_batch(arch, order):
    target = tiny_model(arch)
    dec = BatchDecoder(target, build_drafter("ngram", k=3), smartspec=False)
    rows = [dec.add(PROMPTS[i], SamplingParams(max_new_tokens=12)) for i in order]
    while dec.rows:
        dec.step()
    for i, r in zip(order, rows):
        assert r.new_ids == alone(target, PROMPTS[i], 12)


def test_rows_join_and_leave_between_steps(arch):
    target = tiny_model(arch)
    dec = BatchDecoder(target, build_drafter("ngram", k=4), smartspec=False)
    first = dec.add(PROMPTS[0], SamplingParams(max_new_tokens=30))
    gone = dec.add(PROMPTS[3], SamplingParams(max_new_tokens=30))
    for _ in range(3):
        dec.step()
    dec.cancel(gone)  # leaves mid-way: the others must not notice
    late = dec.add(PROMPTS[2], SamplingParams(max_new_tokens=20))  # joins mid-way
    while dec.rows:
        dec.step()
    assert first.new_ids == alone(target, PROMPTS[0], 30)
    assert late.new_ids == alone(target, PROMPTS[2], 20)
    assert gone.cancelled and len(gone.new_ids) < 30


def test_compaction_keeps_outputs(arch):
    """A drafter that is always wrong leaves rejected slots every step; compaction clears them."""
    target = tiny_model(arch)
    from tests.conftest import WrongDrafter

    dec = BatchDecoder(target, WrongDrafter(target, k=6), k_max=6, smartspec=False)
    rows = [dec.add(p, SamplingParams(max_new_tokens=40)) for p in PROMPTS[:3]]
    compacted = False
    while dec.rows:
        before = dec.loop.cache.width
        dec.step()
        compacted |= dec.loop.cache.width < before
    assert compacted
    for p, r in zip(PROMPTS, rows):
        assert r.new_ids == alone(target, p, 40)


def test_calibrated_smartspec_rows_still_equal_their_requests_alone(arch):
    """With SmartSpec choosing each step's draft length from a timed cost model (plain steps,
    probes, drafting steps mixed), every row's greedy output is still its request's alone."""
    target = tiny_model(arch)
    dec = BatchDecoder(target, build_drafter("ngram", k=4), k_max=4, probe_every=2)
    dec.calibrate(batches=(1, 4), context=16, repeats=1)
    outs = dec.generate(PROMPTS[:4], SamplingParams(max_new_tokens=24))
    for prompt, out in zip(PROMPTS, outs):
        assert out.token_ids == alone(target, prompt, 24)
    assert sum(o.stats.drafted for o in outs) > 0  # some steps drafted (probes at the least)


def test_sampled_rows_are_reproducible_and_follow_the_batch_verifier(arch):
    target = tiny_model(arch)
    params = SamplingParams(temperature=1.0, max_new_tokens=16)
    runs = []
    for _ in range(2):
        dec = BatchDecoder(target, build_drafter("ngram", k=3), smartspec=False)
        outs = dec.generate(PROMPTS[:3], params, [torch.Generator().manual_seed(i) for i in range(3)])
        runs.append([o.token_ids for o in outs])
    assert runs[0] == runs[1] and all(len(ids) == 16 for ids in runs[0])


class FailingDrafter(DrafterBase):
    """Prompt lookup, except that the second row it is forked for raises on its second proposal."""

    name = "failing"
    k = 3

    def __init__(self):
        self.forks, self.calls, self.broken = [0], 0, False

    def fork(self):
        other = super().fork()
        other.broken = self.forks[0] == 1
        self.forks[0] += 1
        return other

    def propose(self, ctx):
        self.calls += 1
        if self.broken and self.calls == 2:
            raise RuntimeError("drafter broke")
        return build_drafter("ngram", k=3).propose(ctx)


def test_a_failing_row_leaves_alone(arch):
    """Guards: one row's drafter raising took every request in flight down with it."""
    target = tiny_model(arch)
    dec = BatchDecoder(target, FailingDrafter(), smartspec=False)
    rows = [dec.add(p, SamplingParams(max_new_tokens=20)) for p in PROMPTS[:3]]
    while dec.rows:
        dec.step()
    assert rows[1].error == "RuntimeError: drafter broke" and rows[1].stats.new_tokens < 20
    for i in (0, 2):
        assert rows[i].error is None and rows[i].new_ids == alone(target, PROMPTS[i], 20)


def test_rows_share_what_bind_built():
    """Guards: the server built (and heads drafters loaded from disk) a drafter per request."""
    target = tiny_model("llama")
    dec = BatchDecoder(target, "recycling", smartspec=False)
    a, b = (dec.add(p, SamplingParams(max_new_tokens=4)) for p in PROMPTS[:2])
    assert a.drafter is not b.drafter and a.drafter.adj is b.drafter.adj is dec.drafter.adj
    dec = BatchDecoder(target, "draft_model", model=CausalLM(tiny_model("llama", seed=1).model))
    a, b = (dec.add(p, SamplingParams(max_new_tokens=4)) for p in PROMPTS[:2])
    assert a.drafter.draft.model is b.drafter.draft.model and a.drafter.draft is not b.drafter.draft
