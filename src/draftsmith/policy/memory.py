"""Speculation under a memory budget (SpecMemo, 2025): the draft is sized to the memory left.

Glossary: the budget covers what decoding keeps in memory, the target's and the drafter's weights,
their KV caches, and one verification step's buffers; not the Python and torch runtime (measured
by `benchmarks/memory_budget.py` as the resident size before any model loads).

    weights    every parameter and buffer of the target and of the drafter's own modules (shared
               tensors, such as the target's LM head that draft heads read, count once)
    per token  the KV cache of one token of context: target (2 x layers x KV heads x head size x
               dtype) + the drafter's own model, when it has one
    per node   one draft node in a verification step, per row: the logits and the probabilities
               made from them (fp32, [V] each, x NODE_COPIES), the hidden states handed to a drafter
               that reads them (layers + 1 of [H]), and the node's row of the attention mask over
               the context (fp32)
    prefill    per prompt token while a prompt is prefilled (transient): the MLP's activations
               (3 x intermediate) and four hidden-size buffers, in the target's dtype; a row joins
               only when its prefill fits beside the reserved contexts

A request reserves its whole context (prompt + max_new_tokens + the widest draft) when it joins,
so a row never runs out mid-answer; each step then gets the largest draft (nodes per row) that
fits in what is left, capped by what the drafter and `k_max` allow. A request whose context does
not fit even without drafting is refused with the numbers (`MemoryBudgetError`); the server keeps
it queued while other rows hold memory that they will free.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import DraftsmithError

NODE_COPIES = 7  # fp32 [V] buffers alive per verified node: the logits (bf16, then fp32), softmax and log-softmax,
# the verifier's copies. Measured: peak RSS grew 1.46 MiB a node on SmolLM2 (V = 49152; 7 x 4V = 1.31 MiB of it),
# benchmarks/smollm2-135m-bf16-memory-budget, first run (the plan then counted 3)
UNITS = {"": 1 << 20, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10, "m": 10 ** 6, "mb": 10 ** 6, "mib": 1 << 20,
         "g": 10 ** 9, "gb": 10 ** 9, "gib": 1 << 30}


class MemoryBudgetError(DraftsmithError):
    """A request (or the model itself) does not fit in the memory budget."""


class MemoryBusy(MemoryBudgetError):
    """A request fits in the budget, but not beside the rows now running (it can wait for them)."""


def parse_size(text) -> int:
    """'1.5GB', '800MiB', '512m', '400' (a bare number in text, as on the command line: MiB) -> bytes;
    a number (the Python API) is bytes."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text <= 0:
            raise DraftsmithError(f"memory budget must be > 0 bytes, got {text!r}")
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in UNITS or float(m.group(1)) <= 0:
        raise DraftsmithError(f"memory budget {text!r}: give a size such as 1.5GB, 800MiB or 600 (MiB)")
    return int(float(m.group(1)) * UNITS[m.group(2).lower()])


def mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _tensors(module: torch.nn.Module):
    yield from module.parameters()
    yield from module.buffers()


def tensor_bytes(tensors, seen: set) -> int:
    """Bytes of these tensors, each storage (data pointer, size) in `seen` counted once."""
    total = 0
    for t in tensors:
        key = (t.data_ptr(), t.numel())
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """One token's K and V over every layer of a decoder of this config."""
    text = getattr(config, "text_config", None) or config
    heads = text.num_attention_heads
    kv = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return 2 * text.num_hidden_layers * kv * head_dim * torch.empty((), dtype=dtype).element_size()


def _drafter_models(drafter):
    """The modules a bound drafter holds (its weights) and the decoder configs whose KV it caches."""
    from ..target import CausalLM

    modules, configs, seen = [], [], set()
    for value in vars(drafter).values():
        module = value.model if isinstance(value, CausalLM) else value
        if not isinstance(module, torch.nn.Module) or id(module) in seen:
            continue
        seen.add(id(module))
        if isinstance(value, CausalLM):
            modules.append(value.model)
            configs.append((value.config, value.dtype))
        else:
            modules.append(value)
            llama = getattr(value, "llama", None)  # EAGLE-style heads: one decoder layer with its own cache
            if llama is not None:
                configs.append((llama, next(value.parameters()).dtype))
    return modules, configs


@dataclass
class MemoryPlan:
    budget: int
    weights: int  # target + drafter
    per_token: int  # KV of one context token (target + drafter)
    per_node: int  # one verified draft node of one row (at the longest context)
    per_prefill: int = 0  # transient bytes per prompt token prefilled at once
    reserved: int = 0  # context tokens reserved by the rows now running

    def free(self) -> int:
        return self.budget - self.weights - self.reserved * self.per_token

    def fits(self, tokens: int, prompt: int = 0) -> bool:
        """Can a row of `tokens` context (prompt + new tokens) join without drafting, its `prompt`
        tokens prefilled at once?"""
        return self.free() - tokens * self.per_token - max(self.per_node, prompt * self.per_prefill) >= 0

    def nodes(self, rows: int) -> int:
        """Draft nodes per row the current rows may verify this step (each step also verifies
        the bonus token of every row, one node each)."""
        rows = max(rows, 1)
        return max(0, self.free() // (self.per_node * rows) - 1)

    def describe(self) -> str:
        return (f"budget {mib(self.budget)}: weights {mib(self.weights)}, KV {self.per_token / 1024:.1f} KiB a token, "
                f"{self.per_node / 1024:.0f} KiB a draft node")


def plan(target, drafter, budget: int) -> MemoryPlan:
    """The memory plan of `target` with a bound `drafter` under `budget` bytes. Raises
    MemoryBudgetError when the weights alone do not fit."""
    seen: set = set()
    weights = tensor_bytes(_tensors(target.model), seen)
    modules, configs = _drafter_models(drafter)
    weights += sum(tensor_bytes(_tensors(m), seen) for m in modules)
    per_token = kv_bytes_per_token(target.config, target.dtype)
    per_token += sum(kv_bytes_per_token(c, d) for c, d in configs)
    text = getattr(target.config, "text_config", None) or target.config
    elt = torch.empty((), dtype=target.dtype).element_size()
    per_node = NODE_COPIES * 4 * target.vocab_size + (text.num_hidden_layers + 1) * text.hidden_size * elt
    per_node += 4 * target.max_length + per_token  # its row of the attention mask, its KV until the step is cropped
    inter = getattr(text, "intermediate_size", 4 * text.hidden_size)
    p = MemoryPlan(budget, weights, per_token, per_node, per_prefill=(3 * inter + 4 * text.hidden_size) * elt)
    if p.free() < per_node + per_token:
        raise MemoryBudgetError(f"memory budget {mib(budget)} is below the weights of the target and the drafter "
                                f"({mib(weights)}) plus one step; give at least {mib(weights + per_node + 64 * per_token)}")
    return p


def check_row(p: MemoryPlan, tokens: int, prompt: int = 0) -> None:
    """Refuse a row whose context (and prefill of `prompt` tokens at once) cannot fit in the budget
    even with no other row running."""
    alone = p.budget - p.weights - tokens * p.per_token - max(p.per_node, prompt * p.per_prefill)
    if alone < 0:
        transient = max(p.per_node, prompt * p.per_prefill)
        most = (p.budget - p.weights - transient) // p.per_token
        raise MemoryBudgetError(f"a context of {tokens} tokens (prompt + max_new_tokens) needs "
                                f"{mib(tokens * p.per_token)} of KV cache and {mib(transient)} to prefill its prompt; "
                                f"the memory budget leaves room for {max(most, 0)} tokens ({p.describe()}); ask for fewer "
                                "new tokens, a shorter prompt (or a smaller prefill chunk), or a larger --memory-budget")
