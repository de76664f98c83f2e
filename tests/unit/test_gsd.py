"""GSD (graph-structured drafts): merged nodes share a distribution, the tree stays a valid draft."""

from __future__ import annotations

import pytest

from draftsmith import CausalLM, SamplingParams, SpeculativeDecoder, build_drafter
from draftsmith.errors import DraftsmithError
from tests.conftest import tiny_model


def _gsd(target, merge: int):
    draft = build_drafter("draft_model", model=CausalLM(tiny_model("llama", vocab=target.vocab_size, seed=1).model), k=4)
    return build_drafter("gsd", model=draft, merge=merge, max_nodes=12, topk=2, beam=3, confidence=0.0)


def test_merging_feeds_fewer_draft_nodes_and_keeps_the_output():
    """Guards the point of GSD: nodes whose recent tokens agree take a drafted distribution instead
    of a forward (fewer fed nodes than the plain dynamic tree on the same prompts), and the output
    is still plain decoding's (the target verifies every unrolled path)."""
    target = tiny_model("llama", vocab=16, seed=0, std=0.05)  # a small vocabulary: recent tokens recur
    params = SamplingParams(max_new_tokens=24, ignore_eos=True)
    prompt = [1, 2, 3, 1, 2, 3, 4]
    plain = SpeculativeDecoder(target, "none").generate(prompt, params).token_ids
    fed = {}
    for merge in (0, 1):
        d = _gsd(target, merge)
        assert SpeculativeDecoder(target, d).generate(prompt, params).token_ids == plain
        fed[merge] = (d.fed, d.merged)
    assert fed[0][1] == 0 and fed[1][1] > 0 and fed[1][0] < fed[0][0], fed


def test_gsd_options_are_checked():
    with pytest.raises(DraftsmithError, match="merge"):
        build_drafter("gsd", model="x", merge=-1)
    with pytest.raises(DraftsmithError, match="needs a draft model"):
        build_drafter("gsd")
