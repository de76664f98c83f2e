"""Attention for verification forwards: scaled-dot-product attention that keeps grouped-query
attention (GQA) packed when a mask is given.

Verifying a draft runs q > 1 new tokens over a KV cache with an explicit mask (a chain over a
cache, a tree, a batch with per-row validity). For that case transformers' `sdpa` attention
copies every key/value head `num_key_value_groups` times (`repeat_kv`) in every layer and every
step: at 16 rows × 300 cached tokens that copy took more time than the matrix products. Here the
queries that share a key/value head are folded into one longer query block instead, so the cache
is read as it is:

    query [B, H, q, D] = [B, H_kv, n_rep, q, D]  ->  [B, H_kv, n_rep·q, D]
    mask  [B, 1, q, T]                           ->  [B, 1, n_rep·q, T]   (each query row repeated)
    out   [B, H_kv, n_rep·q, D]                  ->  [B, q, H, D]

Each query row sees the same keys, values and mask entries as before, so the result is the same
attention (bit-identical on this CPU in fp32 and bf16 for the same shapes). Every other case (no
mask, one query token, a per-head mask, a mask whose length is not the keys', position biases)
goes to transformers' own `sdpa`. Models are switched only where that is safe: one config (no
sub-models), attention through transformers' AttentionInterface, and modeling code that never
branches on the name "sdpa" (a few do, e.g. Falcon and Gemma 4); the others keep their attention.
"""

from __future__ import annotations

import inspect
import sys
from contextlib import contextmanager
from functools import lru_cache

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .exact import current as current_exact

NAME = "draftsmith_sdpa"


def packed_gqa_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                    is_causal=None, **kwargs):
    """An `AttentionInterface` function: query [B, H, q, D], key/value [B, H_kv, T, D],
    attention_mask [B, 1, q, T] (additive or boolean) -> ([B, q, H, D], None). In exact mode
    (exact.py) every query goes through the one-query call plain decoding makes instead."""
    exact = current_exact()
    if exact is not None:
        return exact.attention(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    n_rep = getattr(module, "num_key_value_groups", 1)
    B, H, q, D = query.shape
    T = key.shape[2]
    if (n_rep == 1 or q == 1 or attention_mask is None or attention_mask.dim() != 4
            or attention_mask.shape[1] != 1 or attention_mask.shape[2] != q or attention_mask.shape[3] != T
            or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None
            or key.shape[1] * n_rep != H):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    b = attention_mask.shape[0]  # B, or 1 (broadcast)
    mask = attention_mask[:, :, None].expand(b, 1, n_rep, q, T).reshape(b, 1, n_rep * q, T)  # [b, 1, n_rep·q, T]
    packed = query.reshape(B, H // n_rep, n_rep * q, D)                                       # [B, H_kv, n_rep·q, D]
    out = F.scaled_dot_product_attention(packed, key, value, attn_mask=mask, scale=scaling,
                                         dropout_p=dropout if module.training else 0.0)      # [B, H_kv, n_rep·q, Dv]
    return out.reshape(B, H, q, value.shape[-1]).transpose(1, 2).contiguous(), None          # [B, q, H, Dv]


AttentionInterface.register(NAME, packed_gqa_sdpa)
AttentionMaskInterface.register(NAME, sdpa_mask)  # the masks transformers builds for `sdpa` (None = causal)


@lru_cache(maxsize=None)
def _branches_on_sdpa_name(module_name: str) -> bool:
    """Does this modeling module compare the attention implementation's name to "sdpa"? (Its
    non-sdpa branch would run under ours.) Unreadable source counts as yes. Read once per module."""
    try:
        source = inspect.getsource(sys.modules[module_name])
    except (OSError, TypeError, KeyError):
        return True
    return '== "sdpa"' in source or '!= "sdpa"' in source


def _switchable(model) -> bool:
    config = model.config
    if getattr(config, "_attn_implementation", None) != "sdpa" or getattr(config, "sub_configs", None):
        return False
    can = getattr(model, "_can_set_attn_implementation", None)
    if can is None or not can():
        return False
    return not _branches_on_sdpa_name(type(model).__module__)


def use_packed_gqa(model) -> bool:
    """Switch a model that runs transformers' `sdpa` attention to the packed-GQA variant where
    that is safe (see the module docstring); True if it was switched."""
    if not _switchable(model):
        return False
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, ImportError):
        return False
    return model.config._attn_implementation == NAME


@contextmanager
def stock_attention(model):
    """Run `model` with transformers' own `sdpa` for a while (baselines measured as people run them)."""
    switched = getattr(model.config, "_attn_implementation", None) == NAME
    if switched:
        model.set_attn_implementation("sdpa")
    try:
        yield model
    finally:
        if switched:
            model.set_attn_implementation(NAME)
