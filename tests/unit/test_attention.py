"""The packed-GQA verification attention equals transformers' sdpa attention exactly, in every
case it takes, and hands every other case to it."""

from types import SimpleNamespace

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from draftsmith.attention import NAME, packed_gqa_sdpa, stock_attention
from tests.conftest import tiny_model


def qkv(B=3, H_kv=2, rep=3, q=4, T=11, D=8, Dv=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H_kv * rep, q, D, generator=g, dtype=dtype),   # [B, H, q, D]
            torch.randn(B, H_kv, T, D, generator=g, dtype=dtype),         # [B, H_kv, T, D]
            torch.randn(B, H_kv, T, Dv, generator=g, dtype=dtype))


def tree_mask(b, q, T, additive: bool, dtype=torch.float32):
    """[b, 1, q, T]: a random pattern over the cache, causal over the q new tokens."""
    g = torch.Generator().manual_seed(1)
    allow = torch.rand(b, 1, q, T, generator=g) > 0.3
    allow[..., T - q:] = torch.tril(torch.ones(q, q, dtype=torch.bool))
    return torch.zeros(b, 1, q, T, dtype=dtype).masked_fill(~allow, torch.finfo(dtype).min) if additive else allow


@pytest.mark.parametrize("additive", [True, False])
@pytest.mark.parametrize("mask_batch", [3, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_equals_sdpa(additive, mask_batch, dtype):
    module = SimpleNamespace(num_key_value_groups=3, training=False)
    query, key, value = qkv(dtype=dtype)
    mask = tree_mask(mask_batch, 4, 11, additive, dtype)
    want, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
    got, _ = packed_gqa_sdpa(module, query, key, value, mask, scaling=0.3)
    assert got.shape == want.shape == (3, 4, 6, 8)  # [B, q, H, D]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-2)


def test_value_head_size_of_its_own():
    module = SimpleNamespace(num_key_value_groups=3, training=False)
    query, key, value = qkv(Dv=5)
    mask = tree_mask(3, 4, 11, True)
    got, _ = packed_gqa_sdpa(module, query, key, value, mask)
    torch.testing.assert_close(got, sdpa_attention_forward(module, query, key, value, mask)[0])


def test_a_mask_that_does_not_fit_the_keys_is_not_sliced_silently():
    module = SimpleNamespace(num_key_value_groups=3, training=False)
    query, key, value = qkv()
    with pytest.raises(RuntimeError):  # as transformers' sdpa does
        packed_gqa_sdpa(module, query, key, value, tree_mask(3, 4, 12, True))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_whole_model_logits_and_stock_attention(arch):
    target = tiny_model(arch)
    model = target.model
    assert model.config._attn_implementation == NAME
    ids = torch.randint(0, 96, (2, 14), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 1, 4, 14, dtype=torch.bool)
    mask[..., 10:] = torch.tril(torch.ones(4, 4, dtype=torch.bool))
    mask[1, ..., :3] = False
    pos = torch.arange(10, 14).expand(2, 4)
    ids, mask, pos = ids.to(model.device), mask.to(model.device), pos.to(model.device)  # pytest --device

    def logits():
        from transformers import DynamicCache
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(input_ids=ids[:, :10], past_key_values=cache, use_cache=True)
            return model(input_ids=ids[:, 10:], attention_mask=mask, position_ids=pos, past_key_values=cache,
                         use_cache=True).logits

    ours = logits()
    with stock_attention(model):
        assert model.config._attn_implementation == "sdpa"
        stock = logits()
    assert model.config._attn_implementation == NAME
    torch.testing.assert_close(ours, stock, rtol=0, atol=1e-5)
