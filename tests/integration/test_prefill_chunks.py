"""Chunked prefill (`BatchDecoder(prefill_chunk=N)`, `serve --prefill-chunk`): a long prompt is
prefilled N tokens per step, between the running rows' steps.

The bug it guards (issue 21): prefill ran whole inside `add`, in the engine thread, so a
1,535-token prompt froze every running stream for 6.2 s. Tiny random models (fp32, a large init
std so chunked and whole prefills agree on every greedy token).
"""

from __future__ import annotations

import pytest
import torch

from draftsmith import BatchDecoder, Draft, DrafterBase, SamplingParams, SpeculativeDecoder, build_drafter
from draftsmith.errors import DraftsmithError
from tests.conftest import random_heads, tiny_model

PARAMS = SamplingParams(max_new_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def target():
    return tiny_model("llama", vocab=96, max_len=512)


def prompts(n: int = 6) -> list[list[int]]:
    g = torch.Generator().manual_seed(3)
    return [torch.randint(0, 96, (int(m),), generator=g).tolist() for m in torch.randint(2, 60, (n,), generator=g)]


@pytest.mark.parametrize("drafter", ["none", "ngram:k=3", "eagle"])
def test_chunked_prefill_gives_the_same_outputs(target, tmp_path, drafter):
    """Every row, prefilled 7 tokens per step (heads read the target's features chunk by chunk),
    decodes what plain decoding of it alone gives."""
    make = (lambda: build_drafter("eagle", heads=random_heads(target, "eagle", tmp_path / "h"))) if drafter == "eagle" \
        else (lambda: drafter)
    ps = prompts()
    plain = [SpeculativeDecoder(target, "none").generate(p, PARAMS).token_ids for p in ps]
    dec = BatchDecoder(target, make(), k_max=3, smartspec=False, prefill_chunk=7)
    assert [r.token_ids for r in dec.generate(ps, PARAMS)] == plain


def test_a_running_row_keeps_decoding_while_a_long_prompt_prefills(target):
    """A 300-token prompt arriving mid-stream is prefilled 16 tokens per step: the running row
    commits a token on each of those steps instead of waiting for the whole prompt."""
    dec = BatchDecoder(target, "none", smartspec=False, prefill_chunk=16)
    running = dec.add([1, 2, 3], SamplingParams(max_new_tokens=100, ignore_eos=True))
    dec.step()
    prompt = torch.randint(0, 96, (300,), generator=torch.Generator().manual_seed(0)).tolist()
    long = dec.add(prompt, SamplingParams(max_new_tokens=4, ignore_eos=True))
    assert long in dec.rows and long.prefill is not None  # in the batch, still prefilling
    steps = 0
    while long.prefill is not None:
        out = dict((id(r), new) for r, new in dec.step())
        assert len(out[id(running)]) == 1  # the stream moved on this step
        steps += 1
    assert steps == -(-299 // 16)
    while dec.rows:
        dec.step()
    assert long.result().token_ids == SpeculativeDecoder(target, "none").generate(prompt, long.params).token_ids


class FailingPrefill(DrafterBase):
    """Raises in prefill for prompts starting with token 0."""

    name = "failing-prefill"

    def prefill(self, prompt_ids, features=None):
        if prompt_ids[0] == 0:
            raise RuntimeError("injected prefill failure")

    def propose(self, ctx):
        return Draft.empty()


def test_a_pending_row_fails_or_is_cancelled_alone(target):
    """A prompt whose (chunked) prefill fails leaves the batch with its error, and a cancelled
    pending prompt leaves at once; the other row decodes on, as alone."""
    dec = BatchDecoder(target, FailingPrefill(), smartspec=False, prefill_chunk=8)
    ok = dec.add([5, 6, 7], PARAMS)
    bad = dec.add([0] + list(range(1, 40)), PARAMS)
    gone = dec.add(list(range(1, 50)), PARAMS)
    dec.cancel(gone)
    assert gone not in dec.rows and gone.cancelled
    while dec.rows:
        dec.step()
    assert bad.error and "injected prefill failure" in bad.error
    assert ok.error is None
    assert ok.result().token_ids == SpeculativeDecoder(target, "none").generate([5, 6, 7], PARAMS).token_ids


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_prefill_chunk_must_be_a_positive_integer(target, bad):
    with pytest.raises(DraftsmithError, match="prefill_chunk"):
        BatchDecoder(target, "none", prefill_chunk=bad)
