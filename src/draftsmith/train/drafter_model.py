"""The drafter's architecture: a small Llama-style causal LM that shares the target's tokenizer
and vocabulary, with tied input/output embeddings.

Default size. First measured when the target took 72.6 ms a token on this CPU: a drafter of the
target's width (576) costs 0.13 / 0.17 / 0.24 of the target with 1 / 2 / 4 layers, 0.12 at width
384 with 2 layers; each layer costs about the same whatever its width (per-op overhead), and the
tied 49152-row embedding table is most of the weights (57 MB in bf16 at width 576, over what we
commit). So the default is width 384, 2 layers: 22M parameters, 44 MB in bf16. Measured again on
2026-11-23 (`benchmarks/drafter_step_cost.py`, one token over a 200-token cache, bf16):
1.96 ms against the target's 30.4 ms, 0.065 of a target step, when it drafts over its 8192-token
training vocabulary (0.145 with the whole LM head).

Initialisation from the target (`init='target'`): the embedding table is the target's, projected
onto its top principal directions when the drafter is narrower (the tokens keep their geometry);
at the target's width the final norm and spread-out layers are copied too.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

from ..errors import DraftsmithError


def _text_config(model: PreTrainedModel):
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def drafter_config(target: PreTrainedModel, *, layers: int = 2, hidden: int | None = 384,
                   intermediate: int | None = None, heads: int | None = None, kv_heads: int | None = None,
                   max_positions: int | None = None) -> LlamaConfig:
    """A Llama config for a drafter of `target`: its vocabulary, special tokens and RoPE; the
    target's width and head layout unless given."""
    t = _text_config(target)
    vocab = target.get_output_embeddings().weight.shape[0]
    hidden = min(hidden or t.hidden_size, t.hidden_size)
    heads = heads or (t.num_attention_heads if hidden == t.hidden_size else max(1, hidden // 64))
    kv_heads = kv_heads or (getattr(t, "num_key_value_heads", heads) if hidden == t.hidden_size else heads)
    if hidden % heads or heads % kv_heads:
        raise DraftsmithError(f"drafter: hidden {hidden} must divide into {heads} heads, and heads into {kv_heads} kv heads")
    if layers < 1:
        raise DraftsmithError(f"drafter: layers must be >= 1, got {layers}")
    rope = getattr(t, "rope_parameters", None) or {"rope_type": "default", "rope_theta": getattr(t, "rope_theta", 10000.0)}
    return LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
        intermediate_size=intermediate or (t.intermediate_size if hidden == t.hidden_size else hidden * 8 // 3),
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
        max_position_embeddings=max_positions or getattr(t, "max_position_embeddings", 2048),
        rms_norm_eps=getattr(t, "rms_norm_eps", 1e-5), rope_parameters=rope,
        tie_word_embeddings=True, bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id,
        pad_token_id=getattr(t, "pad_token_id", None), architectures=["LlamaForCausalLM"],
    )


def spread_layers(n: int, of: int) -> list[int]:
    """`n` layer indices spread over `of` layers, first and last included."""
    if n == 1:
        return [of - 1]
    return [round(i * (of - 1) / (n - 1)) for i in range(n)]


@torch.no_grad()
def projected_embeddings(table: torch.Tensor, width: int, std: float = 0.02) -> torch.Tensor:
    """[V, H] -> [V, width]: the rows' coordinates on the table's top `width` principal
    directions (uncentred), scaled to the entry size of a fresh init (`std`), so that the tied
    head starts with logits of the usual size."""
    table = table.float()
    _, _, vh = torch.linalg.svd(table, full_matrices=False)  # vh [H, H]
    out = table @ vh[:width].T  # [V, width]
    return out * (std / out.std())


@torch.no_grad()
def init_from_target(drafter: LlamaForCausalLM, target: PreTrainedModel, layers: list[int] | None = None) -> list[int]:
    """Copy the target's embedding table (projected when the drafter is narrower); at the
    target's width also its final norm and `layers` (default: spread from first to last).
    Returns the copied layer indices."""
    t_layers = target.model.layers
    table = target.get_input_embeddings().weight
    if drafter.config.hidden_size != table.shape[1]:
        drafter.model.embed_tokens.weight.copy_(
            projected_embeddings(table, drafter.config.hidden_size, drafter.config.initializer_range))
        return []
    layers = layers if layers is not None else spread_layers(len(drafter.model.layers), len(t_layers))
    drafter.model.embed_tokens.weight.copy_(table)
    drafter.model.norm.load_state_dict(target.model.norm.state_dict())
    for mine, theirs in zip(drafter.model.layers, layers):
        mine.load_state_dict(t_layers[theirs].state_dict())
    return layers


def new_drafter(target: PreTrainedModel, *, init: str = "target", layers: int = 2, seed: int = 0,
                **sizes) -> LlamaForCausalLM:
    """A fresh drafter for `target`, randomly initialised (`init='random'`) or copied from the
    target's layers (`init='target'`)."""
    if init not in ("target", "random"):
        raise DraftsmithError(f"drafter init must be 'target' or 'random', got {init!r}")
    config = drafter_config(target, layers=layers, **sizes)
    torch.manual_seed(seed)  # weight init goes through torch's global generator; seed it
    model = LlamaForCausalLM(config).float()
    if init == "target":
        init_from_target(model, target)
    return model
