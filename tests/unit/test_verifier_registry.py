"""Verifiers are plugs: built by name or spec, registered in one line, and honest about losslessness."""

import dataclasses

import pytest

from draftsmith import DraftsmithError, SamplingParams, SpeculativeDecoder, build_verifier, register_verifier
from draftsmith.verify import VERIFIERS, GreedyVerifier, RejectionVerifier, VerifierBase
from tests.conftest import tiny_model


def test_build_by_name_spec_instance_and_auto():
    assert isinstance(build_verifier("greedy"), GreedyVerifier)
    assert isinstance(build_verifier("rejection"), RejectionVerifier)
    v = RejectionVerifier()
    assert build_verifier(v) is v
    assert build_verifier(None) is None and build_verifier("auto") is None  # per request: greedy or rejection


@pytest.mark.parametrize("spec, message", [("greedyy", "Did you mean 'greedy'"), ("greedy:depth=2", "no option 'depth'"),
                                           (object(), "is not a verifier")])
def test_bad_verifier_is_a_clear_error(spec, message):
    with pytest.raises(DraftsmithError, match=message):
        build_verifier(spec)


def test_greedy_verification_of_a_sampling_request_is_reported_lossy():
    """Guards: `--verifier greedy --temperature 0.7` is argmax decoding, not the target's samples,
    yet was reported lossless."""
    target = tiny_model("llama")
    sampled = SamplingParams(temperature=0.7, max_new_tokens=6)
    out = SpeculativeDecoder(target, "ngram", verifier="greedy").generate([5, 6, 7], sampled)
    assert out.stats.lossless is False and out.stats.as_dict()["lossless"] is False
    assert SpeculativeDecoder(target, "ngram").generate([5, 6, 7], sampled).stats.lossless is True
    assert SpeculativeDecoder(target, "ngram", verifier="greedy").generate([5, 6, 7], SamplingParams(max_new_tokens=6)
                                                                          ).stats.lossless is True


def test_a_new_rule_is_one_class_and_one_registration_line():
    class FirstOnly(VerifierBase):
        """Accepts at most the first draft token (lossy), then the target's argmax."""

        name = "first_only_test"
        lossless = False

        def verify_row(self, draft, target_logits, params, generator=None):
            first = min(1, draft.size)
            kept = GreedyVerifier().verify_row(draft.truncate(first), target_logits[:, : first + 1], params)
            return dataclasses.replace(kept, num_drafted=draft.size)

    register_verifier(FirstOnly)
    try:
        out = SpeculativeDecoder(tiny_model("llama"), "ngram", verifier="first_only_test").generate(
            [5, 6, 7, 5, 6, 7, 5, 6], SamplingParams(max_new_tokens=12))
        assert out.stats.lossless is False and max(out.stats.accepted_per_step) <= 1
    finally:
        VERIFIERS.pop("first_only_test")


def test_a_verifier_that_misreports_fails_its_row():
    """Guards: a plug-in rule's answer was trusted as it came (a wrong count or a token that was never
    drafted would be committed)."""

    class Liar(VerifierBase):
        name = "liar_test"

        def verify_row(self, draft, target_logits, params, generator=None):
            kept = GreedyVerifier().verify_row(draft, target_logits, params)
            return dataclasses.replace(kept, num_drafted=draft.size + 1)

    with pytest.raises(DraftsmithError, match="verifier liar_test: accepted"):
        SpeculativeDecoder(tiny_model("llama"), "ngram", verifier=Liar()).generate([5, 6, 7, 5, 6, 7],
                                                                                  SamplingParams(max_new_tokens=8))
