"""The equivalence matrix: under greedy decoding every drafter's output ids equal the
autoregressive reference, token for token (tiny random models, fp32). The drafters are the
"greedy" recipes of tests/recipes.py."""

import pytest
import torch

from draftsmith import CausalLM, SamplingParams, SpeculativeDecoder
from tests.conftest import WrongDrafter, plain_ids, tiny_model
from tests.recipes import VERIFIER_RECIPES, build, recipes, verifier_of

PROMPTS = [[5, 17, 3, 42, 5, 17, 3], [7] * 12, list(range(10, 40))]


def reference(target, prompt, **kw):
    return SpeculativeDecoder(target, "none").generate(prompt, SamplingParams(**kw))


@pytest.mark.parametrize("name", recipes("greedy"))
def test_greedy_equals_autoregressive(arch, name, tmp_path):
    target = tiny_model(arch)
    for prompt in PROMPTS:
        out = SpeculativeDecoder(target, build(name, target, arch, tmp_path), verifier=verifier_of(name)).generate(
            prompt, SamplingParams(max_new_tokens=48))
        assert out.token_ids == plain_ids(arch, prompt, 48), f"{name} diverged on prompt {prompt[:5]}..."
        assert out.stats.new_tokens == 48
        assert out.stats.steps <= 48  # plain decoding's steps (one token each)
        assert sum(out.stats.accepted_per_step) + out.stats.steps == out.stats.new_tokens


@pytest.mark.parametrize("verifier", [n for n, v in VERIFIER_RECIPES.items() if v.greedy])
def test_every_greedy_capable_verifier_equals_autoregressive(arch, verifier):
    """Every registered rule that decides temperature-0 requests, named explicitly, keeps the
    target's own tokens (a chain drafter and a tree drafter)."""
    target = tiny_model(arch)
    for drafter in ("ngram:k=4", "recycling:topk=3,branching=3-2-1"):
        dec = SpeculativeDecoder(target, drafter, verifier=VERIFIER_RECIPES[verifier].make())
        for prompt in PROMPTS[:2]:
            out = dec.generate(prompt, SamplingParams(max_new_tokens=24))
            assert out.token_ids == reference(target, prompt, max_new_tokens=24).token_ids, (verifier, drafter)


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
