"""Text in, text out: chat template, streaming and stop strings (tiny model + tiny tokenizer)."""

import pytest

from draftsmith import CausalLM, SamplingParams, SpeculativeDecoder, build_drafter
from tests.conftest import tiny_model


@pytest.fixture(scope="module")
def target(tokenizer):
    t = tiny_model("llama", vocab=len(tokenizer), seed=3)
    return CausalLM(t.model, tokenizer, name="tiny-text")


def test_text_prompt_gets_chat_template(target, tokenizer):
    ids = target.encode("hello world")
    expected = tokenizer.apply_chat_template([{"role": "user", "content": "hello world"}], add_generation_prompt=True,
                                             tokenize=True)
    expected = expected["input_ids"] if hasattr(expected, "keys") else expected
    assert ids == list(expected)
    assert target.encode("hello world", chat=False) == tokenizer.encode("hello world")


@pytest.mark.parametrize("drafter", ["none", "ngram"])
def test_stream_concatenates_to_text(target, drafter):
    dec = SpeculativeDecoder(target, build_drafter(drafter))
    chunks = list(dec.stream("the quick brown fox", SamplingParams(max_new_tokens=40, ignore_eos=True)))
    result = chunks[-1].result
    assert result is not None and len(chunks) == result.stats.steps + 1
    assert "".join(c.text for c in chunks) == result.text
    assert sum((c.token_ids for c in chunks), []) == result.token_ids


@pytest.mark.parametrize("drafter", ["none", "ngram", "self"])
def test_stop_string_ends_output_before_it(target, drafter):
    params = SamplingParams(max_new_tokens=60, ignore_eos=True)
    ref = SpeculativeDecoder(target, "none").generate("hello world", params)
    stop = ref.text[20:24]
    assert stop.strip() and ref.text.find(stop) >= 4
    d = build_drafter("draft_model", model=CausalLM(target.model, target.tokenizer), k=6, adaptive=False, confidence=0) \
        if drafter == "self" else build_drafter(drafter)
    dec = SpeculativeDecoder(target, d)
    out = dec.generate("hello world", SamplingParams(max_new_tokens=60, ignore_eos=True, stop=(stop,)))
    assert out.text == ref.text[: ref.text.find(stop)]
    assert out.token_ids == ref.token_ids[: len(out.token_ids)]  # cut at the token completing the stop string
    assert stop in target.decode(out.token_ids) and stop not in target.decode(out.token_ids[:-1])
    assert out.stats.finish_reason == "stop" and out.stats.new_tokens == len(out.token_ids)
    streamed = "".join(c.text for c in dec.stream("hello world", SamplingParams(max_new_tokens=60, ignore_eos=True,
                                                                              stop=(stop,))))
    assert streamed == out.text  # a stop string is never streamed, even in part


@pytest.mark.parametrize("drafter", ["ngram", "self"])
def test_overlapping_stop_strings_match_plain_decoding(target, drafter):
    """The stop string that completes first wins, however many tokens a step commits."""
    free = SpeculativeDecoder(target, "none").generate("hello world", SamplingParams(max_new_tokens=60, ignore_eos=True))
    early_start, late_inner = free.text[20:28], free.text[24:25]  # the second completes before the first
    assert late_inner.strip() and free.text.find(late_inner) >= 24
    params = SamplingParams(max_new_tokens=60, ignore_eos=True, stop=(early_start, late_inner))
    ref = SpeculativeDecoder(target, "none").generate("hello world", params)
    d = build_drafter("draft_model", model=CausalLM(target.model, target.tokenizer), k=8, adaptive=False,
                      confidence=0) if drafter == "self" else build_drafter(drafter)
    out = SpeculativeDecoder(target, d).generate("hello world", params)
    assert out.token_ids == ref.token_ids and out.text == ref.text
