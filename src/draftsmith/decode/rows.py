"""A row: one sequence in the loop (a `generate` call, or one server request). Its state, the
commit rule (accepted tokens + bonus, cut at EOS, the token budget and stop strings), text
streaming and the context-length rule: each written once, here."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..drafters.base import DrafterBase
from ..errors import DraftsmithError
from ..policy import History, LengthPolicy
from ..types import GenerationResult, RunStats, SamplingParams, VerifyResult


class TextTracker:
    """Incremental detokenisation and stop strings over the generated ids."""

    def __init__(self, target, stop: tuple[str, ...]):
        self.target, self.stop = target, stop
        self.emitted = 0  # characters of text already streamed
        self.hold = max((len(s) for s in stop), default=1) - 1

    def find_stop(self, ids: list[int], prev_len: int) -> int | None:
        """If a stop string appears in the text of `ids`, return how many tokens to keep: up
        to the one that completes it (`prev_len` tokens were already checked)."""
        text = self.target.decode(ids)
        present = [s for s in self.stop if s in text]
        if not present:
            return None
        for m in range(prev_len + 1, len(ids) + 1):  # the first token that completes any of them
            prefix = self.target.decode(ids[:m])
            if any(s in prefix for s in present):
                return m
        return len(ids)

    def text(self, ids: list[int]) -> str:
        """The output text of `ids`: it ends before the earliest stop string."""
        text = self.target.decode(ids)
        cuts = [i for s in self.stop if (i := text.find(s)) >= 0]
        return text[: min(cuts)] if cuts else text

    def delta(self, text: str, final: bool) -> str:
        """New text to stream; hold back a partial character or a possible partial stop string."""
        end = len(text)
        if not final:
            if text.endswith("\ufffd"):
                end = len(text.rstrip("\ufffd"))
            end = max(self.emitted, end - self.hold)
        out = text[self.emitted : end]
        self.emitted = max(self.emitted, end)
        return out


def check_length(target, n_prompt: int, params: SamplingParams) -> None:
    """The context-length rule: prompt + max_new_tokens must fit the target's positions."""
    limit = target.max_length
    if n_prompt >= limit:
        raise DraftsmithError(f"prompt has {n_prompt} tokens; {target.name} takes at most {limit - 1} "
                              "(its context length leaves no room to generate)")
    if n_prompt + params.max_new_tokens > limit:
        raise DraftsmithError(
            f"prompt ({n_prompt} tokens) + max_new_tokens ({params.max_new_tokens}) exceeds the context length of "
            f"{target.name} ({limit}); lower max_new_tokens to at most {limit - n_prompt}")


@dataclass
class Prefill:
    """A prompt being prefilled: its one-row cache, tokens done, the target's features so far."""

    cache: object
    done: int = 0
    features: list = field(default_factory=list)  # [1, chunk, H] each, for drafters that read them


@dataclass
class Row:
    """One sequence in the batch."""

    ids: list[int]  # prompt + committed tokens
    prompt_len: int
    params: SamplingParams
    generator: torch.Generator | None
    drafter: DrafterBase  # this row's fork
    verifier: object  # the acceptance rule (verify/base.py)
    length: LengthPolicy  # this row's draft-length policy
    tracker: TextTracker
    eos: set[int]  # empty with ignore_eos
    stats: RunStats = field(default_factory=RunStats)
    done: bool = False
    cancelled: bool = False
    error: str | None = None  # set when this row failed on its own (it leaves the batch; the others go on)
    history: History = field(default_factory=History)  # its drafting steps, for SmartSpec
    start_time: float = 0.0
    prefill: Prefill | None = None  # set while its prompt is prefilled (decode/loop.py)
    reserved: int = 0  # context tokens it holds of a memory budget (policy/memory.py)

    @property
    def new_ids(self) -> list[int]:
        return self.ids[self.prompt_len:]

    @property
    def budget(self) -> int:
        """Tokens this row may still emit."""
        return self.params.max_new_tokens - self.stats.new_tokens

    def result(self) -> GenerationResult:
        text = self.tracker.text(self.new_ids) if self.tracker.target.tokenizer is not None else None
        return GenerationResult(self.new_ids, text, self.stats)

    def fail(self, message: str) -> None:
        self.error, self.done = message, True
        self.stats.finish_reason = "error"

    def commit(self, result: VerifyResult) -> list[int]:
        """Append a step's accepted tokens + bonus, cut at EOS (nothing after it counts), at the
        token budget and before a stop string; update the stats. Returns the committed tokens."""
        stats, budget = self.stats, self.budget
        new = result.tokens[0].tolist()
        for i, tok in enumerate(new):  # EOS inside the block: stop there, count nothing after
            if tok in self.eos:
                new, self.done = new[: i + 1], True
                break
        if len(new) >= budget:
            new, self.done = new[:budget], True
        if new and new[-1] in self.eos:
            stats.finish_reason = "stop"
        if self.params.stop and self.tracker.target.tokenizer is not None:
            keep = self.tracker.find_stop(self.new_ids + new, stats.new_tokens)
            if keep is not None:
                new, self.done = new[: keep - stats.new_tokens], True
                stats.finish_reason = "stop"
        self.ids += new
        accepted = min(result.num_accepted, len(new))
        stats.steps += 1
        stats.drafted += result.num_drafted
        stats.accepted += accepted
        stats.accepted_per_step.append(accepted)
        stats.drafted_per_step.append(result.num_drafted)
        stats.new_tokens += len(new)
        return new
