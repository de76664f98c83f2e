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
attention (identical in fp32; in bf16 the kernel may round differently). Every other case (no
mask, one query token, a per-head mask, position biases) goes to transformers' own `sdpa`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "draftsmith_sdpa"


def packed_gqa_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                    is_causal=None, **kwargs):
    """An `AttentionInterface` function: query [B, H, q, D], key/value [B, H_kv, T, D],
    attention_mask [B, 1, q, T] (additive or boolean) -> ([B, q, H, D], None)."""
    n_rep = getattr(module, "num_key_value_groups", 1)
    B, H, q, D = query.shape
    if (n_rep == 1 or q == 1 or attention_mask is None or attention_mask.dim() != 4
            or attention_mask.shape[1] != 1 or kwargs.get("position_bias") is not None
            or kwargs.get("softcap") is not None or key.shape[1] * n_rep != H):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    T = key.shape[2]
    mask = attention_mask[..., :T]                                                   # [B, 1, q, T]
    mask = mask[:, :, None].expand(mask.shape[0], 1, n_rep, q, T).reshape(mask.shape[0], 1, n_rep * q, T)
    packed = query.reshape(B, H // n_rep, n_rep * q, D)                               # [B, H_kv, n_rep·q, D]
    out = F.scaled_dot_product_attention(packed, key, value, attn_mask=mask, scale=scaling,
                                         dropout_p=dropout if module.training else 0.0)
    return out.reshape(B, H, q, D).transpose(1, 2).contiguous(), None                # [B, q, H, D]


AttentionInterface.register(NAME, packed_gqa_sdpa)
AttentionMaskInterface.register(NAME, sdpa_mask)  # the masks transformers builds for `sdpa` (None = causal)


def use_packed_gqa(model) -> None:
    """Switch a model that runs transformers' `sdpa` attention to the packed-GQA variant (the
    same attention; other implementations are left as they are)."""
    if getattr(model.config, "_attn_implementation", None) == "sdpa":
        model.set_attn_implementation(NAME)
