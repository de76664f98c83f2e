"""Sliding-window targets (Gemma 3: layers mixing full and windowed attention) decode
speculatively and losslessly: plain decoding through the loop equals Hugging Face's own greedy
`generate`, and every training-free drafter equals plain decoding, one row and batched, on
prompts shorter and longer than the window (tiny random Gemma 3, fp32)."""

from __future__ import annotations

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from draftsmith import BatchDecoder, CausalLM, SamplingParams, SpeculativeDecoder, build_drafter

WINDOW = 8
VOCAB = 96


def tiny_gemma3(seed: int = 0, std: float = 0.2) -> CausalLM:
    """A random Gemma 3 text model: 4 layers, sliding, full, sliding, full, window 8. A large
    init std spreads the logits, so greedy ties do not occur."""
    config = Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        sliding_window=WINDOW, max_position_embeddings=512, initializer_range=std,
        eos_token_id=None, bos_token_id=None, pad_token_id=None, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(config).to(torch.float32).eval()
    return CausalLM(model, tokenizer=None, name=f"tiny-gemma3-{seed}")


@pytest.fixture(scope="module")
def target() -> CausalLM:
    return tiny_gemma3()


@pytest.fixture(scope="module")
def other(target) -> CausalLM:
    return perturbed(target)


def perturbed(target: CausalLM, scale: float = 0.5) -> CausalLM:
    """Another tiny Gemma 3: the target's weights plus seed-1 noise, so it agrees with the
    target often but not always (ragged acceptance; a seed-1 model never agrees)."""
    other = tiny_gemma3(seed=1)
    with torch.no_grad():
        for mine, theirs in zip(target.model.parameters(), other.model.parameters()):
            theirs.mul_(scale).add_(mine)
    return CausalLM(other.model, tokenizer=None, name="tiny-gemma3-perturbed")


# shorter than the window, about one window, two and a half windows
PROMPTS = [[5, 17, 3, 42, 5], [7, 1, 7, 1, 7, 1, 7, 1, 7], list(range(10, 30)), [3], [9, 8, 7, 9, 8, 7, 9, 8, 7, 9, 8, 7]]
NEW = 40


def plain(target, prompt, n=NEW):
    return SpeculativeDecoder(target, "none").generate(prompt, SamplingParams(max_new_tokens=n)).token_ids


@pytest.fixture(scope="module")
def reference(target) -> dict[tuple[int, ...], list[int]]:
    """Plain decoding of every prompt, NEW tokens (no EOS: a shorter run is a prefix)."""
    return {tuple(p): plain(target, p) for p in PROMPTS}


def drafters(target, other):
    return {
        "ngram": lambda: build_drafter("ngram", k=4, max_ngram=2),
        "draft_model-self": lambda: build_drafter("draft_model", model=CausalLM(target.model), k=6, adaptive=False,
                                                  confidence=0),
        "draft_model-other": lambda: build_drafter("draft_model", model=CausalLM(other.model), k=3, adaptive=False,
                                                   confidence=0),
        "recycling": lambda: build_drafter("recycling", topk=4, branching="4-2-1"),
        "lookahead": lambda: build_drafter("lookahead", window=3, ngram=3, guesses=2),
        "hierarchy": lambda: build_drafter("hierarchy", corpus="none"),
    }


NAMES = ["ngram", "draft_model-self", "draft_model-other", "recycling", "lookahead", "hierarchy"]


def test_plain_decoding_equals_hugging_face_generate(target, reference):
    """Guards: the shipped gemma3-270m pack could not decode speculatively at all; sliding-window
    caches failed at different moments in the two loops. Our loop's masks (full layers, window
    applied by the mask) must give what transformers' own greedy `generate` gives, with its
    own cache and masks, on prompts longer than the window: right, not just self-consistent."""
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        ref = target.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW,
                                    min_new_tokens=NEW, pad_token_id=0)
        assert reference[tuple(prompt)] == ref[0, len(prompt):].tolist(), f"prompt of {len(prompt)} tokens diverged"


@pytest.mark.parametrize("name", NAMES)
def test_every_drafter_equals_plain_decoding_one_row(target, other, reference, name):
    """Guards: the shipped gemma3-270m pack could not decode speculatively at all; sliding-window
    caches failed at different moments in the two loops. One row: chains run on the cache-crop
    fast path, trees on the keep-path one, both under the window."""
    for prompt in PROMPTS:
        out = SpeculativeDecoder(target, drafters(target, other)[name]()).generate(
            prompt, SamplingParams(max_new_tokens=NEW))
        assert out.token_ids == reference[tuple(prompt)], f"{name} diverged on a prompt of {len(prompt)} tokens"
        assert out.stats.new_tokens == NEW
        if name == "draft_model-self":  # always right: long chains are accepted across the window's edge
            assert out.stats.acceptance_rate == 1.0


@pytest.mark.parametrize("name", NAMES)
def test_every_drafter_equals_plain_decoding_batched(target, other, reference, name):
    """Guards: the shipped gemma3-270m pack could not decode speculatively at all; sliding-window
    caches failed at different moments in the two loops. Batched rows of different lengths
    (shorter and longer than the window) hold holes in the cache, so a key's position is not its
    slot: the window must count positions."""
    lengths = [NEW, 25, 33, 12, 28]
    dec = BatchDecoder(target, drafters(target, other)[name](), k_max=4, smartspec=False)
    outs = dec.generate(PROMPTS, [SamplingParams(max_new_tokens=n) for n in lengths])
    for prompt, n, out in zip(PROMPTS, lengths, outs):
        assert out.stats.finish_reason == "length", out.stats.finish_reason
        assert out.token_ids == reference[tuple(prompt)][:n], f"{name}: row of {len(prompt)} tokens diverged"
