"""The one drafter interface. Every method is a drafter plugged into the same loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

import torch

from ..types import Draft, SamplingParams, VerifyResult

if TYPE_CHECKING:
    from ..target import CausalLM


@dataclass
class DraftContext:
    """What a drafter may look at when proposing."""

    ids: list[int]  # every committed token: prompt + generated so far
    max_tokens: int  # propose at most this many (budget and context left)
    params: SamplingParams
    generator: torch.Generator | None = None


@runtime_checkable
class Drafter(Protocol):
    """Optional class attribute `trimmable = True`: the drafter proposes chains that are cheap to
    make at full length and keeps no state that assumes its whole draft was verified, so the
    batched loop may ask for the longest draft and cut it to the length SmartSpec picks once it
    has seen every row's draft."""

    name: ClassVar[str]
    needs_hidden_states: ClassVar[bool]

    def bind(self, target: CausalLM) -> None:
        """Check compatibility with the target and load what is needed; raise
        IncompatibleDrafterError with a clear message otherwise. Called once."""

    def prefill(self, prompt_ids: list[int]) -> None:
        """A new sequence starts with this prompt."""

    def propose(self, ctx: DraftContext) -> Draft:
        """Propose up to ctx.max_tokens tokens continuing ctx.ids."""

    def observe(self, result: VerifyResult) -> None:
        """Learn from what the target kept (n-gram tables, draft length, caches)."""


class NoDrafter:
    """Plain autoregressive decoding: proposes nothing, so every step emits the bonus token
    only. The reference the other drafters are checked against."""

    name: ClassVar[str] = "none"
    needs_hidden_states: ClassVar[bool] = False
    trimmable: ClassVar[bool] = True

    def bind(self, target: CausalLM) -> None:
        pass

    def prefill(self, prompt_ids: list[int]) -> None:
        pass

    def propose(self, ctx: DraftContext) -> Draft:
        return Draft.empty()

    def observe(self, result: VerifyResult) -> None:
        pass
