"""The equivalence matrix: under greedy decoding every drafter's output ids equal the
autoregressive reference, token for token (tiny random models, fp32)."""

import pytest
import torch

from draftsmith import CausalLM, SamplingParams, SpeculativeDecoder, build_drafter
from tests.conftest import WrongDrafter, tiny_model

PROMPTS = [[5, 17, 3, 42, 5, 17, 3], [7] * 12, list(range(10, 40))]


def reference(target, prompt, **kw):
    return SpeculativeDecoder(target, "none").generate(prompt, SamplingParams(**kw))


def drafters(target, arch):
    """name -> drafter factory: good, bad and indifferent proposers."""
    return {
        "ngram-k1": lambda: build_drafter("ngram", k=1),
        "ngram-k4": lambda: build_drafter("ngram", k=4, max_ngram=2),
        "ngram-k8-n4": lambda: build_drafter("ngram", k=8, max_ngram=4, min_ngram=2),
        "draft_model-self": lambda: build_drafter("draft_model", model=CausalLM(target.model), k=6, adaptive=False, confidence=0),
        "draft_model-other": lambda: build_drafter("draft_model", model=tiny_model(arch, seed=1), k=4, adaptive=False, confidence=0),
        "draft_model-adaptive": lambda: build_drafter("draft_model", model=tiny_model(arch, seed=1), k=4),
        "draft_model-confidence": lambda: build_drafter("draft_model", model=tiny_model(arch, seed=1), k=6,
                                                        adaptive=False, confidence=0.3),
        "wrong": lambda: WrongDrafter(target, k=4),
        "recycling": lambda: build_drafter("recycling"),
        "recycling-narrow": lambda: build_drafter("recycling", topk=2, branching="2-1-1"),
        "lookahead": lambda: build_drafter("lookahead"),
        "lookahead-n2": lambda: build_drafter("lookahead", window=3, ngram=2, guesses=2),
        "hierarchy": lambda: build_drafter("hierarchy", corpus="none"),
        "hierarchy-narrow": lambda: build_drafter("hierarchy", k=3, max_ngram=1, max_candidates=1, corpus="none"),
    }


@pytest.mark.parametrize("name", ["ngram-k1", "ngram-k4", "ngram-k8-n4", "draft_model-self", "draft_model-other",
                                  "draft_model-adaptive", "draft_model-confidence", "wrong",
                                  "recycling", "recycling-narrow", "lookahead", "lookahead-n2", "hierarchy",
                                  "hierarchy-narrow"])
def test_greedy_equals_autoregressive(arch, name):
    target = tiny_model(arch)
    for prompt in PROMPTS:
        ref = reference(target, prompt, max_new_tokens=48)
        out = SpeculativeDecoder(target, drafters(target, arch)[name]()).generate(prompt, SamplingParams(max_new_tokens=48))
        assert out.token_ids == ref.token_ids, f"{name} diverged on prompt {prompt[:5]}..."
        assert out.stats.new_tokens == 48
        assert out.stats.steps <= ref.stats.steps
        assert sum(out.stats.accepted_per_step) + out.stats.steps == out.stats.new_tokens


def test_always_right_drafter_accepts_everything(arch):
    target = tiny_model(arch)
    out = SpeculativeDecoder(target, "draft_model", model=CausalLM(target.model), k=5, adaptive=False, confidence=0).generate(
        PROMPTS[0], SamplingParams(max_new_tokens=36))
    assert out.stats.acceptance_rate == 1.0
    assert out.stats.tau == 6.0  # 5 accepted + the bonus, every step
    assert out.stats.steps == 6


def test_always_wrong_drafter_accepts_nothing(arch):
    target = tiny_model(arch)
    out = SpeculativeDecoder(target, WrongDrafter(target, k=3)).generate(PROMPTS[1], SamplingParams(max_new_tokens=20))
    assert out.stats.accepted == 0 and out.stats.tau == 1.0
    assert out.token_ids == reference(target, PROMPTS[1], max_new_tokens=20).token_ids


@pytest.mark.parametrize("max_new", [1, 2, 3])
def test_max_new_tokens_smaller_than_draft_length(arch, max_new):
    target = tiny_model(arch)
    ref = reference(target, PROMPTS[0], max_new_tokens=max_new)
    out = SpeculativeDecoder(target, "draft_model", model=CausalLM(target.model), k=8, adaptive=False, confidence=0).generate(
        PROMPTS[0], SamplingParams(max_new_tokens=max_new))
    assert out.token_ids == ref.token_ids and len(out.token_ids) == max_new
    assert out.stats.new_tokens == max_new and out.stats.steps == 1
    assert out.stats.finish_reason == "length"


def test_eos_inside_accepted_block(arch):
    target = tiny_model(arch)
    free = reference(target, PROMPTS[2], max_new_tokens=30, ignore_eos=True).token_ids
    pos = next(i for i in range(4, 30) if free[i] not in free[:i])  # a token first seen mid-answer
    target.model.generation_config.eos_token_id = free[pos]
    ref = reference(target, PROMPTS[2], max_new_tokens=30)
    assert ref.token_ids == free[: pos + 1] and ref.stats.finish_reason == "stop"
    out = SpeculativeDecoder(target, "draft_model", model=CausalLM(target.model), k=8, adaptive=False, confidence=0).generate(
        PROMPTS[2], SamplingParams(max_new_tokens=30))
    assert out.token_ids == ref.token_ids  # stops at EOS, nothing after it
    assert out.stats.new_tokens == pos + 1  # tokens drafted past EOS are not counted
    assert out.stats.steps == 1 and out.stats.accepted == pos + 1  # EOS was a draft token: no bonus emitted
    assert out.stats.tau == pos + 1
    cut = SpeculativeDecoder(target, "draft_model", model=CausalLM(target.model), k=8, adaptive=False,
                             confidence=0).generate(PROMPTS[2], SamplingParams(max_new_tokens=pos))
    assert cut.token_ids == free[:pos] and cut.stats.finish_reason == "length"  # the budget cut the EOS off
    assert out.stats.finish_reason == "stop"


def test_same_seed_same_sample(arch):
    target = tiny_model(arch)
    dec = SpeculativeDecoder(target, "draft_model", model=tiny_model(arch, seed=1), k=4)
    params = SamplingParams(temperature=1.0, top_k=20, max_new_tokens=24)
    a = dec.generate(PROMPTS[0], params, torch.Generator().manual_seed(3)).token_ids
    b = dec.generate(PROMPTS[0], params, torch.Generator().manual_seed(3)).token_ids
    c = dec.generate(PROMPTS[0], params, torch.Generator().manual_seed(4)).token_ids
    assert a == b and a != c
