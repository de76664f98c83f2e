"""The target over a subset of its layers (target.PartialLM), the API self-speculative drafters
(layer_skip, early_exit) draft with: fp32 tiny Llama, Qwen2 and Gemma 3 (sliding windows)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, GPT2Config, GPT2LMHeadModel

from draftsmith import CausalLM
from draftsmith.cache import crop, new_cache
from draftsmith.errors import DraftsmithError, IncompatibleDrafterError
from tests.conftest import tiny_model

IDS = [5, 17, 3, 42, 5, 9, 60, 2, 33, 71, 8, 8, 19, 4]
CHUNKS = [(0, 6), (6, 7), (7, 10), (10, 11), (11, 14)]  # a prompt, then one-token and chain steps


def steps(run, ids=IDS, chunks=CHUNKS):
    """Feed `ids` chunk by chunk through run(ids [1, q], positions [1, q], slots) -> logits."""
    t = torch.tensor([ids])
    return torch.cat([run(t[:, a:b], torch.arange(a, b)[None], torch.arange(a, b)) for a, b in chunks], dim=1)


def full_logits(target):
    cache = new_cache()
    return steps(lambda i, p, s: target.step(i, p, cache, cache_position=s).logits)


def partial_logits(part):
    cache = part.new_cache()
    return steps(lambda i, p, s: part.step(i, p, cache).logits)


def without_layers(target: CausalLM, kept: list[int]):
    """The reference by hand: a copy of the HF model whose ModuleList holds only `kept`, run by
    transformers' own forward over the whole sequence at once (no cache)."""
    model = copy.deepcopy(target.model)
    model.model.layers = torch.nn.ModuleList([model.model.layers[i] for i in kept])
    model.config.num_hidden_layers = len(kept)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in kept]
    with torch.no_grad():
        return model(input_ids=torch.tensor([IDS]), use_cache=False).logits


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_every_layer_equals_the_full_model_exactly(arch):
    """Guards: the partial forward over all layers drifting from the model's own (rotary, masks
    over a cache, final norm/head) — bit for bit in fp32, prefill, one-token and chain steps."""
    target = tiny_model(arch, layers=4)
    assert torch.equal(partial_logits(target.partial(range(4))), full_logits(target))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("kept", [[0, 2, 3], [1, 3], [2]])
def test_skipped_layers_match_the_model_without_them(arch, kept):
    """Guards: a subset cache indexed by layer_idx going wrong when layer 0 is skipped (its
    length read from an empty layer: wrong masks and positions) or layers run out of order."""
    target = tiny_model(arch, layers=4)
    got = partial_logits(target.partial(kept))
    want = without_layers(target, kept)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), float((got - want).abs().max())
    assert not torch.allclose(got, full_logits(target), atol=1e-2)  # the skip changes something


def test_shallow_exit_hidden_and_head():
    """Guards: the shallow exit returning something other than the residual stream after layer
    L-1 (the early_exit drafter's input), and head() differing from the model's norm + LM head."""
    target = tiny_model("llama", layers=4)
    ids, pos = torch.tensor([IDS]), torch.arange(len(IDS))[None]
    ref = target.step(ids, pos, None, hidden_states=True)
    for L in (1, 2, 3):
        out = target.partial(range(L)).step(ids, pos, None, head=False)
        assert out.logits is None and torch.equal(out.hidden, ref.hidden_states[L])
    full = target.partial(range(4))
    out = full.step(ids, pos, None, hidden=True)
    assert torch.equal(full.head(out.hidden), ref.logits) and torch.equal(out.logits, ref.logits)
    assert torch.allclose(full.head(out.hidden, last_only=True), ref.logits[:, -1:], atol=1e-5)  # a 1-row matmul
    resumed = target.partial([2, 3]).step(None, pos, None, hidden_in=ref.hidden_states[2]).logits
    assert torch.equal(resumed, ref.logits)  # start from the target's own hidden state entering layer 2


def test_subset_cache_rolls_back():
    """Guards: crop on a subset cache whose layer 0 is empty (DynamicCache reads its length from
    layer 0): after crop the next step must see exactly the kept prefix."""
    target = tiny_model("llama", layers=4)
    part = target.partial([1, 3])
    cache = part.new_cache()
    ids, pos = torch.tensor([IDS]), torch.arange(len(IDS))[None]
    first = part.step(ids[:, :10], pos[:, :10], cache).logits
    assert part.length(cache) == cache.get_seq_length() == 10
    part.step(ids[:, 10:13], pos[:, 10:13], cache)
    crop(cache, 8)
    assert part.length(cache) == 8
    again = part.step(ids[:, 8:10], pos[:, 8:10], cache).logits
    assert torch.allclose(again, first[:, 8:10], atol=1e-5)
    assert cache.layers[0].keys is None or cache.layers[0].keys.numel() == 0  # skipped layer stays empty


def tiny_gemma3():
    config = Gemma3TextConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        sliding_window=4, max_position_embeddings=512, initializer_range=0.2, eos_token_id=None,
        bos_token_id=None, pad_token_id=None, tie_word_embeddings=False, final_logit_softcapping=30.0)
    torch.manual_seed(0)
    return CausalLM(Gemma3ForCausalLM(config).to(torch.float32).eval(), name="tiny-gemma3")


def test_gemma3_sliding_window_and_rotary_per_kind():
    """Guards: the window ignored (a prompt of 14 tokens over a window of 4), one rotary for
    both layer kinds, the embedding scale or the final soft-capping lost."""
    target = tiny_gemma3()
    got, want = partial_logits(target.partial(range(4))), full_logits(target)
    assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())
    got = partial_logits(target.partial([0, 1, 3]))
    want = without_layers(target, [0, 1, 3])
    assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())


def test_refusals():
    """Guards: bad layer lists accepted silently; a model without the decoder structure, or whose
    forward does more than the layers (here a hook on the base model), drafted for wrongly."""
    target = tiny_model("llama", layers=3)
    for bad in ([], [0, 0], [3], [-1], "x"):
        with pytest.raises(DraftsmithError):
            target.partial(bad)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=64))
    with pytest.raises(IncompatibleDrafterError, match="rotary_emb|layers"):
        CausalLM(gpt2, name="gpt2").partial([0])
    odd = tiny_model("llama", layers=2, seed=3)
    odd.model.model.register_forward_hook(lambda m, a, out: out.__setitem__("last_hidden_state", out.last_hidden_state * 2))
    with pytest.raises(IncompatibleDrafterError, match="does not reproduce"):
        odd.partial([0, 1])
