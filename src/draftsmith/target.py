"""A Hugging Face causal LM with a KV cache we can extend and roll back.

`CausalLM` serves both the target and a draft model: `forward` appends tokens to the cache and
returns their logits; `crop` rolls the cache back to a length. The cache always holds exactly
the tokens in `self.length` positions, so positions never drift.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .attention import use_packed_gqa
from .cache import crop, new_cache
from .errors import DraftsmithError, ModelNotFoundError

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
