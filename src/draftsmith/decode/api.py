"""The two faces of the one loop (decode/loop.py).

    SpeculativeDecoder(target, drafter).generate(prompt) / .stream(prompt)   one sequence
    BatchDecoder(target, drafter).add(prompt) / .step() / .cancel(row)       many (the server)

Both bind the drafter once (its weights and tables are loaded once, whatever the number of
requests) and give each generation a fork of it and a KV cache of its own, so two generations
on one target never share state: interleaved `stream()` calls each continue their own sequence,
and threads calling one decoder take turns step by step (a lock).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch

from ..cache import check_supported
from ..drafters import Drafter, build_drafter
from ..errors import DraftsmithError
from ..exact import Exact
from ..policy import SmartSpec, StepCost, calibrate
from ..target import CausalLM
from ..types import GenerationResult, SamplingParams
from ..verify import build_verifier
from ..policy.memory import parse_size, plan
from .loop import Loop
from .rows import Row


@dataclass
class StreamChunk:
    """One step's output while streaming. The last chunk has `result` set."""

    text: str  # new text since the previous chunk ("" when held back, e.g. a partial character)
    token_ids: list[int]  # tokens committed this step
    result: GenerationResult | None = None


def _check_target(target) -> None:
    if not isinstance(target, CausalLM):
        raise DraftsmithError("target must come from draftsmith.load_target(...)")


def _exact(target: CausalLM, exact) -> Exact | None:
    if not isinstance(exact, bool):
        raise DraftsmithError(f"exact must be True or False, got {exact!r}")
    return Exact(target) if exact else None


class SpeculativeDecoder:
    """Generate with `target`, drafting with `drafter` (a name, a spec "NAME:k=v", or an instance).
    `verifier`: a registered rule's name or spec, an instance, or None for the default (greedy at
    temperature 0, lossless rejection sampling otherwise); a rule with `lossless = False` is
    reported as lossy in every output (`stats.lossless`). `exact=True`: greedy output id for id
    identical to plain decoding in bf16 too (exact.py; refused with a message where it cannot be)."""

    def __init__(self, target: CausalLM, drafter: str | Drafter = "none", *, verifier=None, exact: bool = False,
                 memory_budget=None, **drafter_options):
        _check_target(target)
        self.target = target
        self.exact = _exact(target, exact)
        self.verifier = build_verifier(verifier)
        budget = parse_size(memory_budget) if memory_budget is not None else None
        self.drafter = build_drafter(drafter, **drafter_options)
        check_supported(target.model, target.name)  # an unsupported cache is refused now, not at the first call
        self.drafter.bind(target)
        self.memory = plan(target, self.drafter, budget) if budget is not None else None  # policy/memory.py
        self._lock = threading.Lock()

    @property
    def lossless(self) -> bool:
        """False when a lossy acceptance rule was chosen: outputs may then differ from the target's."""
        return bool(self.verifier.lossless) if self.verifier is not None else True

    def generate(self, prompt, params: SamplingParams | None = None, generator: torch.Generator | None = None, *,
                 verifier=None) -> GenerationResult:
        """Generate a continuation of `prompt` (text, chat messages or token ids)."""
        for chunk in self.stream(prompt, params, generator, text=False, verifier=verifier):
            if chunk.result is not None:
                return chunk.result
        raise DraftsmithError("the decoding loop ended without a result")

    def stream(self, prompt, params: SamplingParams | None = None, generator: torch.Generator | None = None, *,
               text: bool = True, verifier=None) -> Iterator[StreamChunk]:
        """Like `generate`, yielding a chunk per step as tokens are accepted."""
        params = params or SamplingParams()
        prompt_ids = self.target.encode(prompt)
        memory = replace(self.memory) if self.memory is not None else None  # this generation's own reservations
        loop = Loop(self.target, self.drafter, verifier=self.verifier, exact=self.exact, memory=memory)  # its own cache
        with self._lock:
            row = loop.add(prompt_ids, params, generator, verifier)
        want_text = text and self.target.tokenizer is not None
        try:
            while not row.done:
                seen = len(row.ids)
                with self._lock:
                    loop.step()
                if row.error is not None:
                    raise DraftsmithError(row.error)
                if want_text:
                    yield StreamChunk(row.tracker.delta(row.tracker.text(row.new_ids), final=False), row.ids[seen:])
        finally:
            if not row.done:
                with self._lock:
                    loop.cancel(row)  # an abandoned stream frees its row and its drafter fork
        result = row.result()
        tail = row.tracker.delta(result.text, final=True) if want_text else ""
        yield StreamChunk(tail, [], result)


class BatchDecoder:
    """Decode many rows together with one target forward per step (continuous batching: rows join
    with `add` and leave when done or cancelled, between steps). `k_max` caps every row's draft;
    with `smartspec` and a step-cost model (`calibrate()`, or `cost=`), SmartSpec picks each
    step's draft length for the whole batch. `exact=True`: each row's greedy output is id for id
    what plain decoding of that row alone gives, in bf16 too, whatever else is in the batch.
    `prefill_chunk`: a longer prompt is prefilled that many tokens per step, between the running
    rows' steps (None: at once, in `add`)."""

    def __init__(self, target: CausalLM, drafter: str | Drafter = "none", *, verifier=None, k_max: int = 8,
                 smartspec: bool = True, cost: Callable[[int, int], float] | None = None, probe_every: int = 16,
                 exact: bool = False, prefill_chunk: int | None = None, memory_budget=None, **drafter_options):
        _check_target(target)
        if not (isinstance(k_max, int) and not isinstance(k_max, bool) and k_max >= 0):
            raise DraftsmithError(f"k_max must be an integer >= 0, got {k_max!r}")
        self.target, self.k_max, self.smartspec, self.probe_every = target, k_max, smartspec, probe_every
        budget = parse_size(memory_budget) if memory_budget is not None else None
        self.drafter = build_drafter(drafter, **drafter_options)
        self.loop = Loop(target, self.drafter, verifier=build_verifier(verifier), k_max=k_max,
                         batch_policy=SmartSpec(k_max, cost, probe_every) if smartspec and cost else None,
                         exact=_exact(target, exact), prefill_chunk=prefill_chunk)
        self.drafter.bind(target)
        self.loop.memory = plan(target, self.drafter, budget) if budget is not None else None  # policy/memory.py
        self._lock = threading.Lock()

    @property
    def rows(self) -> list[Row]:
        """Every row in the batch: decoding, then those still prefilling (`prefill_chunk`)."""
        return self.loop.rows + self.loop.pending

    @property
    def policy(self) -> SmartSpec | None:
        return self.loop.batch_policy

    @property
    def last_k(self) -> int | None:
        return self.loop.last_k

    def add(self, prompt, params: SamplingParams | None = None, generator: torch.Generator | None = None, *,
            verifier=None) -> Row:
        with self._lock:
            return self.loop.add(self.target.encode(prompt), params or SamplingParams(), generator, verifier)

    def cancel(self, row: Row) -> None:
        with self._lock:
            self.loop.cancel(row)

    def step(self) -> list[tuple[Row, list[int]]]:
        """One target forward for all rows: each row's committed tokens. Finished rows (done,
        cancelled, or failed alone with `row.error` set) leave the batch."""
        with self._lock:
            return self.loop.step()

    def calibrate(self, batches=(1, 2, 4, 8, 16), context: int = 256, repeats: int = 3) -> StepCost:
        """Time the batched forward for these batch sizes and every width up to k_max + 1, and
        let SmartSpec choose draft lengths from it (see policy/smartspec.calibrate)."""
        cost = calibrate(self.target.model, self.target.config, batches, range(1, self.k_max + 2), context, repeats)
        self.loop.batch_policy = SmartSpec(self.k_max, cost, self.probe_every) if self.smartspec else None
        return cost

    def choose_k(self) -> int:
        """The draft length SmartSpec would give this step's rows (k_max without a cost model)."""
        return self.policy.choose_k([r.history for r in self.rows]) if self.policy else self.k_max

    def generate(self, prompts: list, params: SamplingParams | list[SamplingParams] | None = None,
                 generators: list[torch.Generator | None] | None = None) -> list[GenerationResult]:
        """All prompts at once, to completion (a convenience over add/step)."""
        plist = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        gens = generators or [None] * len(prompts)
        rows = [self.add(p, sp, g) for p, sp, g in zip(prompts, plist, gens)]
        t0 = time.perf_counter()
        while self.rows:
            self.step()
        for r in rows:
            r.stats.wall_time = time.perf_counter() - t0
        return [r.result() for r in rows]
