"""A Hugging Face causal LM with a KV cache we can extend and roll back.

`CausalLM` serves both the target and a draft model: `forward` appends tokens to the cache and
returns their logits; `crop` rolls the cache back to a length. The cache always holds exactly
the tokens in `self.length` positions, so positions never drift.

The target over a subset of its layers (self-speculation: layer skipping, early exit)::

    part = target.partial([0, 1, 2, 5, 7])      # PartialLM: these decoder layers, in this order
    cache = part.new_cache()                    # its own KV cache rows (cache.SubsetCache)
    out = part.step(ids, positions, cache)      # ids [1, q], positions [1, q] -> out.logits [1, q, V]
    shallow = target.partial(range(L))          # a shallow exit after the first L layers:
    h = shallow.step(ids, positions, c, head=False).hidden   # the residual stream after layer L-1, [1, q, H]
    logits = shallow.head(h)                    # the target's own final norm + LM head (for an adapter's output)

`PartialLM.step` runs embeddings -> the chosen layers -> (final norm + LM head with `head`), the
same modules and weights as the target (nothing copied): it is built from the model's public
structure (`base_model.layers`, `.rotary_emb`, `.norm`, the input and output embeddings), which
Llama, Qwen2, Mistral, Gemma and most decoder-only HF models share. Each layer writes its keys at
its own `layer_idx`, as in the full model, so a `SubsetCache` holds only the kept layers' rows and
`cache.crop`/`keep_path` roll it back like any cache. `partial` refuses, with
IncompatibleDrafterError, a model without that structure, and one for which the partial forward
over every layer does not reproduce the model's own logits (checked once per CausalLM on a short
probe: a model whose forward does more than this, say a per-layer input, is refused rather than
drafted for wrongly).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .attention import use_packed_gqa
from .cache import SUPPORTED_LAYERS, SubsetCache, crop, layer_types, new_cache, sliding_window
from .errors import DraftsmithError, IncompatibleDrafterError, ModelNotFoundError

DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise DraftsmithError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}") from None


@dataclass
class ForwardOut:
    logits: torch.Tensor  # [B, n, V]
    hidden_states: tuple[torch.Tensor, ...] | None = None  # each [B, n, H]


class CausalLM:
    """A causal LM plus its KV cache (batch 1). Its `sdpa` attention is switched to the
    packed-GQA variant (the same attention, without copying the KV cache; see attention.py)."""

    def __init__(self, model: PreTrainedModel, tokenizer=None, name: str | None = None):
        self.model = model.eval()
        use_packed_gqa(self.model)
        self.tokenizer = tokenizer
        self.name = name or getattr(model.config, "_name_or_path", None) or type(model).__name__
        self.cache = None  # this object's own cache (forward/crop); the loop's rows have theirs

    # ----- facts about the model -------------------------------------------------------
    @property
    def config(self):
        return self.model.config

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def vocab_size(self) -> int:
        """Width of the logits (a head over a draft vocabulary still gives the whole vocabulary's)."""
        head = self.model.get_output_embeddings()
        return getattr(head, "vocab_size", None) or head.weight.shape[0]

    @property
    def max_length(self) -> int:
        """Longest sequence (prompt + generated) the model's positions allow."""
        cfg = self.config.get_text_config() if hasattr(self.config, "get_text_config") else self.config
        return int(getattr(cfg, "max_position_embeddings", None) or 2048)

    @property
    def eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        for src in (getattr(self.model, "generation_config", None), self.config, self.tokenizer):
            value = getattr(src, "eos_token_id", None) if src is not None else None
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return ids

    @property
    def has_chat_template(self) -> bool:
        return self.tokenizer is not None and bool(getattr(self.tokenizer, "chat_template", None))

    # ----- text <-> ids ----------------------------------------------------------------
    def encode(self, prompt, *, chat: bool | None = None) -> list[int]:
        """Text (wrapped in the chat template when the model has one), a list of chat
        messages, or token ids -> token ids."""
        if isinstance(prompt, torch.Tensor):
            prompt = prompt.flatten().tolist()
        if isinstance(prompt, (list, tuple)) and all(isinstance(t, int) for t in prompt):
            ids = [int(t) for t in prompt]
            vocab = self.vocab_size
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise DraftsmithError(f"prompt token ids out of range [0, {vocab}): {bad[:5]}")
        else:
            if self.tokenizer is None:
                raise DraftsmithError(f"{self.name} has no tokenizer: pass the prompt as token ids")
            messages = prompt if isinstance(prompt, (list, tuple)) else None
            if messages is None and not isinstance(prompt, str):
                raise DraftsmithError(f"prompt must be text, chat messages or token ids, got {type(prompt).__name__}")
            use_chat = self.has_chat_template if chat is None else chat
            if messages is not None or use_chat:
                if not self.has_chat_template:
                    raise DraftsmithError(f"{self.name} has no chat template: pass plain text")
                messages = messages or [{"role": "user", "content": prompt}]
                ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
                if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                    ids = ids["input_ids"]
                ids = list(ids)
            else:
                ids = self.tokenizer.encode(prompt)
            if isinstance(prompt, str) and not prompt.strip():
                raise DraftsmithError("prompt is empty")
        if not ids:
            raise DraftsmithError("prompt is empty")
        return ids

    def decode(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ----- forwards ----------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, ids: torch.Tensor, positions: torch.Tensor, cache, *, cache_position: torch.Tensor | None = None,
             mask=None, hidden_states: bool = False, last_only: bool = False) -> ForwardOut:
        """The one forward: append ids [B, q] at `positions` [B, q] to `cache` (cache.py) under
        `mask` (None = causal; see RowsCache.step_inputs); logits [B, q, V] (or [B, 1, V] with
        `last_only`) and, with `hidden_states`, every layer's [B, q, H]."""
        out = self.model(input_ids=ids, past_key_values=cache, use_cache=True, attention_mask=mask,
                         position_ids=positions, cache_position=cache_position,
                         logits_to_keep=1 if last_only else 0, output_hidden_states=hidden_states)
        return ForwardOut(out.logits, out.hidden_states if hidden_states else None)

    # ----- a cache of its own (a draft model's: one row, see drafters/draft_model.py) ----------
    @property
    def length(self) -> int:
        return self.cache.get_seq_length() if self.cache is not None else 0

    def reset(self) -> None:
        self.cache = new_cache()

    def forward(self, ids: torch.Tensor | list[int], *, last_only: bool = False,
                hidden_states: bool = False) -> ForwardOut:
        """Append `ids` ([1, n] or a list) to this object's own cache; return their logits ([1, n, V],
        or [1, 1, V] for the last token with `last_only`). The decoding loop never uses this
        cache: each generation owns its own (decode/loop.py)."""
        if self.cache is None:
            self.reset()
        if not isinstance(ids, torch.Tensor):
            ids = torch.tensor([ids], dtype=torch.long)
        ids = ids.to(self.device)  # [1, n]
        start = self.length
        slots = torch.arange(start, start + ids.shape[1], device=self.device)
        return self.step(ids, slots[None], self.cache, cache_position=slots, hidden_states=hidden_states,
                         last_only=last_only)

    def crop(self, length: int) -> None:
        """Roll this object's cache back so that it holds the first `length` tokens."""
        crop(self.cache, length)

    # ----- a subset of the layers (self-speculation) -----------------------------------------
    @property
    def num_layers(self) -> int:
        return len(_decoder_parts(self)[1])

    def partial(self, layers, *, check: bool = True) -> "PartialLM":
        """The target over `layers` (decoder layer indices, each once, run in the given order):
        see the module docstring and PartialLM. `check`: compare, once per CausalLM, the partial
        forward over every layer with the model's own on a short probe (refuse on a mismatch)."""
        part = PartialLM(self, layers)
        if check and not getattr(self, "_partial_checked", False):
            _check_partial(self)
            self._partial_checked = True
        return part


@dataclass
class PartialOut:
    logits: torch.Tensor | None  # [B, q, V] ([B, 1, V] with last_only); None with head=False
    hidden: torch.Tensor | None  # [B, q, H] the residual stream after the last chosen layer (before the final norm)


def _decoder_parts(lm: CausalLM):
    """(base model, its decoder layers, rotary embedding, final norm) from the public structure, or
    IncompatibleDrafterError."""
    base = getattr(lm.model, "base_model", None)
    layers = getattr(base, "layers", None)
    rotary, norm = getattr(base, "rotary_emb", None), getattr(base, "norm", None)
    missing = [n for n, v in (("layers", layers), ("rotary_emb", rotary), ("norm", norm)) if v is None]
    if missing or not isinstance(layers, torch.nn.ModuleList) or lm.model.get_output_embeddings() is None:
        raise IncompatibleDrafterError(
            f"{lm.name}: running a subset of its layers needs a decoder-only model whose base model has "
            f"`layers` (a ModuleList), `rotary_emb` and `norm` and an LM head (Llama, Qwen2, Mistral, Gemma "
            f"style); this one lacks {', '.join(missing) or 'an LM head'}")
    return base, layers, rotary, norm


class PartialLM:
    """The target over a subset of its decoder layers, with its own cache rows (module docstring).
    Holds no state of its own besides the layer list: one object serves every row, each row with
    its own `new_cache()`."""

    def __init__(self, lm: CausalLM, layers):
        self.lm = lm
        self.base, all_layers, self.rotary, self.norm = _decoder_parts(lm)
        try:
            chosen = [int(i) for i in layers]
        except (TypeError, ValueError):
            raise DraftsmithError(f"layers must be a list of decoder layer indices, got {layers!r}") from None
        n = len(all_layers)
        if not chosen:
            raise DraftsmithError("a partial forward needs at least one decoder layer")
        bad = [i for i in chosen if not 0 <= i < n]
        if bad or len(set(chosen)) != len(chosen):
            raise DraftsmithError(f"layers must be distinct indices in [0, {n}) ({lm.name} has {n} decoder layers), "
                                  f"got {chosen}")
        self.layers = tuple(chosen)
        self.modules = [all_layers[i] for i in chosen]
        kinds = layer_types(lm.config)
        self.kinds = [kinds[i] if i < len(kinds) else "full_attention" for i in chosen]
        odd = sorted(set(self.kinds) - SUPPORTED_LAYERS)
        if odd:
            raise IncompatibleDrafterError(f"{lm.name}: layers of kind {', '.join(odd)} cannot run in a partial forward "
                                           "(supported: full and sliding-window attention)")
        self.window = sliding_window(lm.config)
        params = inspect.signature(self.modules[0].forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"  # transformers >= 5.24 renamed it
        self._rope_by_kind = "layer_type" in inspect.signature(self.rotary.forward).parameters  # Gemma 3
        cfg = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
        self.softcap = getattr(cfg, "final_logit_softcapping", None)

    @property
    def lm_head(self) -> torch.nn.Module:
        return self.lm.model.get_output_embeddings()

    def rope(self, h: torch.Tensor, positions: torch.Tensor):
        """The target's rotary embedding (cos, sin) at `positions` [B, q] for the first chosen layer."""
        return self.rotary(h, positions, self.kinds[0]) if self._rope_by_kind else self.rotary(h, positions)

    def new_cache(self) -> SubsetCache:
        return SubsetCache(list(self.layers))

    def length(self, cache) -> int:
        """Tokens in `cache` (read from a kept layer)."""
        return 0 if cache is None else cache.get_seq_length(self.layers[0])

    def head(self, hidden: torch.Tensor, *, last_only: bool = False) -> torch.Tensor:
        """The target's final norm + LM head (+ its final logit soft-capping, where the config has
        one): hidden [B, q, H] -> logits [B, q, V] ([B, 1, V] with last_only). It runs under the
        caller's grad mode, so an adapter before it can be trained through it."""
        h = self.norm(hidden[:, -1:] if last_only else hidden)
        logits = self.lm_head(h)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def _masks(self, positions: torch.Tensor, past: int, dtype: torch.dtype):
        """Attention masks for queries at `positions` [B, q] over `past` cached tokens (hole-free:
        slot = position) and themselves: None where plain causal attention is right, else an
        additive [B, 1, q, past+q] mask, per layer kind."""
        B, q = positions.shape
        dev = positions.device
        need_sliding = self.window is not None and "sliding_attention" in self.kinds and past + q > self.window
        if (q == 1 or past == 0) and not need_sliding:
            return {"full_attention": None, "sliding_attention": None}
        key_pos = torch.cat([torch.arange(past, device=dev)[None].expand(B, -1), positions], dim=1)  # [B, past+q]
        allow = key_pos[:, None, :] <= positions[:, :, None]  # [B, q, past+q]
        additive = lambda a: torch.zeros(a.shape, dtype=dtype, device=dev).masked_fill_(  # noqa: E731
            ~a, torch.finfo(dtype).min)[:, None]
        masks = {"full_attention": None if (q == 1 or past == 0) else additive(allow)}
        if self.window is not None:
            near = (positions[:, :, None] - key_pos[:, None, :]) < self.window
            masks["sliding_attention"] = additive(allow & near) if need_sliding else masks["full_attention"]
        return masks

    @torch.inference_mode()
    def step(self, ids: torch.Tensor | None, positions: torch.Tensor, cache=None, *, head: bool = True,
             last_only: bool = False, hidden: bool = False, mask=None, hidden_in: torch.Tensor | None = None
             ) -> PartialOut:
        """Append ids [B, q] at `positions` [B, q] to `cache` (this object's `new_cache()`, or None
        for a forward that keeps nothing) through the chosen layers. `head`: apply the final norm
        and LM head (logits [B, q, V], or [B, 1, V] with `last_only`); `hidden` (implied when not
        `head`): also return the residual stream after the last chosen layer [B, q, H].
        `mask`: None = causal over a hole-free cache (built here, windows included), else the
        caller's (a tensor, or a dict {layer kind: mask} as RowsCache.step_inputs gives).
        `hidden_in` [B, q, H]: start from this residual stream instead of the embeddings of `ids`
        (for instance the target's own hidden state entering the first chosen layer)."""
        h = hidden_in if hidden_in is not None else self.lm.model.get_input_embeddings()(ids)  # [B, q, H]
        if mask is None:
            masks = self._masks(positions, self.length(cache), h.dtype)
        elif isinstance(mask, dict):
            masks = mask
        else:
            masks = {"full_attention": mask, "sliding_attention": mask}
        if self._rope_by_kind:
            rope = {k: self.rotary(h, positions, k) for k in set(self.kinds)}
        else:
            shared = self.rotary(h, positions)
            rope = {k: shared for k in set(self.kinds)}
        for layer, kind in zip(self.modules, self.kinds):
            out = layer(h, attention_mask=masks.get(kind), position_ids=positions, position_embeddings=rope[kind],
                        use_cache=cache is not None, **{self._cache_kw: cache})
            h = out[0] if isinstance(out, tuple) else out
        logits = self.head(h, last_only=last_only) if head else None
        return PartialOut(logits, h if (hidden or not head) else None)


def _check_partial(lm: CausalLM) -> None:
    """The partial forward over every layer must give the model's own logits (a prompt, then two
    more tokens over the cache), else IncompatibleDrafterError."""
    part = PartialLM(lm, range(len(_decoder_parts(lm)[1])))
    V, dev = lm.vocab_size, lm.device
    ids = (torch.arange(8, device=dev)[None] * 7 + 3) % V  # [1, 8]
    pos = torch.arange(8, device=dev)[None]
    mine, ref = part.new_cache(), new_cache()
    got, want = [], []
    for a, b in ((0, 6), (6, 8)):
        slots = torch.arange(a, b, device=dev)
        got.append(part.step(ids[:, a:b], pos[:, a:b], mine).logits.float())
        want.append(lm.step(ids[:, a:b], pos[:, a:b], ref, cache_position=slots).logits.float())
    got, want = torch.cat(got, 1), torch.cat(want, 1)  # [1, 8, V]
    tol = (1e-4 if lm.dtype == torch.float32 else 3e-2) * (1.0 + float(want.abs().max()))
    err = float((got - want).abs().max())
    if not err <= tol:
        raise IncompatibleDrafterError(
            f"{lm.name}: its forward over its decoder layers, run one by one from the public structure, does not "
            f"reproduce the model's own logits (max difference {err:.3g} > {tol:.3g}): this model's forward does "
            "something more, so self-speculation over a subset of its layers is not supported for it")


def resolve_device(device: str | torch.device) -> torch.device:
    """"cpu", "cuda", "cuda:1", "mps" -> a device this machine has, or a clear error."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DraftsmithError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DraftsmithError(f"device {device!r} asked for, but torch {torch.__version__} sees no CUDA device here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DraftsmithError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise DraftsmithError("device 'mps' asked for, but MPS is not available here")
    return dev


def load_causal_lm(name_or_path: str, dtype: str | torch.dtype = "bfloat16", device: str = "cpu",
                   progress: bool = True) -> CausalLM:
    """Load a pack name, a local Hugging Face folder or a hub id."""
    from .models import resolve_model

    from transformers.utils import logging as hf_logging

    torch_dtype = parse_dtype(dtype)
    device = resolve_device(device)
    path = resolve_model(name_or_path, progress=progress)
    hf_logging.disable_progress_bar()  # loading a cached folder takes seconds; no bar needed
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"could not load model {name_or_path!r}: {str(exc).splitlines()[0]}\n"
            "Give a pack name (`draftsmith models list`), a local Hugging Face folder, or a hub id "
            "reachable from this machine."
        ) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        tokenizer = None
    return CausalLM(model, tokenizer, name=name_or_path)


def load_target(name_or_path: str, dtype: str | torch.dtype = "bfloat16", device: str = "cpu",
                progress: bool = True) -> CausalLM:
    """The target: a pack name (fetched on first use), a local folder or a hub id."""
    return load_causal_lm(name_or_path, dtype=dtype, device=device, progress=progress)
