"""The one decoding loop: prefill -> propose -> verify -> commit.

    prefill(prompt)                      # the target's cache holds every token but the last
    while not done:
        draft  = drafter.propose(ctx)    # k tokens (a chain) or N nodes (a tree) continuing them
        logits = target(last + draft)    # ONE target forward: [1, N+1, V], tree-masked for trees
        result = verifier.verify(draft, logits)   # accepted prefix/path + one bonus token
        commit(result)                   # cut at EOS / stop / budget, roll back the cache
        drafter.observe(result)

Plain autoregressive decoding is this same loop with a drafter that proposes nothing
(`NoDrafter`), so the reference and every speculative method share one code path.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch

from .drafters import DraftContext, Drafter, build_drafter
from .errors import DraftsmithError
from .target import CausalLM
from .types import GenerationResult, RunStats, SamplingParams, VerifyResult
from .verify import GreedyVerifier, RejectionVerifier


@dataclass
class StreamChunk:
    """One step's output while streaming. The last chunk has `result` set."""

    text: str  # new text since the previous chunk ("" when held back, e.g. a partial character)
    token_ids: list[int]  # tokens committed this step
    result: GenerationResult | None = None


class _TextTracker:
    """Incremental detokenisation and stop strings over the generated ids."""

    def __init__(self, target: CausalLM, stop: tuple[str, ...]):
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


def commit(ids: list[int], prompt_len: int, result: VerifyResult, stats: RunStats, budget: int, eos: set[int],
           tracker: _TextTracker | None) -> tuple[list[int], bool]:
    """Append a step's accepted tokens + bonus to `ids`, cut at EOS (nothing after it counts),
    at the token budget and before a stop string (`tracker`); update `stats`. Returns the
    committed tokens and whether the sequence is done."""
    new = result.tokens[0].tolist()
    done = False
    for i, tok in enumerate(new):  # EOS inside the block: stop there, count nothing after
        if tok in eos:
            new, done = new[: i + 1], True
            break
    if len(new) >= budget:
        new, done = new[:budget], True
    if new and new[-1] in eos:
        stats.finish_reason = "stop"
    if tracker is not None and (keep := tracker.find_stop(ids[prompt_len:] + new, stats.new_tokens)) is not None:
        new, done = new[: keep - stats.new_tokens], True
        stats.finish_reason = "stop"
    ids += new
    stats.steps += 1
    stats.drafted += result.num_drafted
    stats.accepted += min(result.num_accepted, len(new))
    stats.accepted_per_step.append(min(result.num_accepted, len(new)))
    stats.drafted_per_step.append(result.num_drafted)
    stats.new_tokens += len(new)
    return new, done


def kept_hidden(hidden: torch.Tensor, result: VerifyResult, is_tree: bool) -> torch.Tensor:
    """The step's hidden states [1, N+1, H] -> those of the root and the accepted nodes [1, m, H]."""
    nodes = result.path if is_tree else list(range(result.num_accepted))
    return hidden[:, [0] + [1 + i for i in nodes]]


class SpeculativeDecoder:
    """Generate with `target`, drafting with `drafter`. Greedy verification at temperature 0,
    lossless rejection sampling otherwise."""

    def __init__(self, target: CausalLM, drafter: str | Drafter = "none", *, verifier=None, **drafter_options):
        """`verifier` overrides the default rule (greedy at temperature 0, rejection sampling
        otherwise); a rule with `lossless = False` is reported as lossy in the output."""
        if not isinstance(target, CausalLM):
            raise DraftsmithError("target must come from draftsmith.load_target(...)")
        self.target = target
        self.verifier = verifier
        self.drafter = build_drafter(drafter, **drafter_options)
        self.drafter.bind(target)

    @property
    def lossless(self) -> bool:
        """False when a lossy acceptance rule was chosen: outputs may then differ from the target's."""
        return getattr(self.verifier, "lossless", True) if self.verifier is not None else True

    # ----- public API ------------------------------------------------------------------
    def generate(self, prompt, params: SamplingParams | None = None,
                 generator: torch.Generator | None = None) -> GenerationResult:
        """Generate a continuation of `prompt` (text, chat messages or token ids)."""
        for chunk in self.stream(prompt, params, generator, text=False):
            if chunk.result is not None:
                return chunk.result
        raise AssertionError("the decoding loop ended without a result")

    def stream(self, prompt, params: SamplingParams | None = None,
               generator: torch.Generator | None = None, *, text: bool = True) -> Iterator[StreamChunk]:
        """Like `generate`, yielding a chunk per step as tokens are accepted."""
        params = params or SamplingParams()
        prompt_ids = self.target.encode(prompt)
        self._check_length(prompt_ids, params)
        tracker = _TextTracker(self.target, params.stop)
        want_text = text and self.target.tokenizer is not None
        steps = self._steps(prompt_ids, params, generator, tracker)
        generated: list[int] = []
        while True:
            try:
                new = next(steps)
            except StopIteration as end:
                stats = end.value
                break
            generated += new
            if want_text:
                yield StreamChunk(tracker.delta(tracker.text(generated), final=False), new)
        out_text = tracker.text(generated) if self.target.tokenizer is not None else None
        result = GenerationResult(generated, out_text, stats)
        tail = tracker.delta(out_text, final=True) if want_text else ""
        yield StreamChunk(tail, [], result)

    # ----- the loop --------------------------------------------------------------------
    def _steps(self, prompt_ids: list[int], params: SamplingParams, generator, tracker: _TextTracker):
        """Yield the tokens committed at each step; return the RunStats."""
        target, drafter = self.target, self.drafter
        verifier = self.verifier or (GreedyVerifier() if params.greedy else RejectionVerifier())
        eos = set() if params.ignore_eos else target.eos_token_ids
        stats = RunStats()
        t_start = time.perf_counter()

        ids = list(prompt_ids)
        track_stop = bool(params.stop) and target.tokenizer is not None
        hidden = drafter.needs_hidden_states  # heads: the loop hands them the target's last hidden states
        target.reset()
        prompt_hidden = torch.zeros(1, 0, target.config.hidden_size, dtype=target.dtype, device=target.device)
        if len(ids) > 1:
            out = target.forward(ids[:-1], last_only=True, hidden_states=hidden)  # the cache holds all but the last token
            if hidden:
                prompt_hidden = out.hidden_states[-1]  # [1, n-1, H]
        t0 = time.perf_counter()
        drafter.prefill(ids, hidden=prompt_hidden) if hidden else drafter.prefill(ids)
        stats.drafter_time += time.perf_counter() - t0
        stats.prefill_time = time.perf_counter() - t_start

        while True:
            budget = params.max_new_tokens - stats.new_tokens
            room = target.max_length - len(ids)
            t0 = time.perf_counter()
            draft = drafter.propose(DraftContext(ids, min(budget, room) - 1, params, generator))
            stats.drafter_time += time.perf_counter() - t0
            tree = draft.tree

            step_ids = torch.cat([torch.tensor([[ids[-1]]]), draft.token_ids.cpu()], dim=-1)  # [1, N+1]
            out = target.forward(step_ids, tree=tree, hidden_states=hidden)
            result = verifier.verify(draft, out.logits, params, generator)  # logits [1, N+1, V]
            if hidden:
                result = replace(result, hidden=kept_hidden(out.hidden_states[-1], result, tree is not None))

            # keep the accepted drafts in the cache; the bonus token is fed at the next step
            if tree is None:
                target.crop(len(ids) + result.num_accepted)
            else:
                target.keep(len(ids), result.path)  # root at len(ids) - 1, node i at len(ids) + i
            new, done = commit(ids, len(prompt_ids), result, stats, budget, eos, tracker if track_stop else None)

            t0 = time.perf_counter()
            drafter.observe(result)
            stats.drafter_time += time.perf_counter() - t0

            yield new
            if done:
                stats.wall_time = time.perf_counter() - t_start
                return stats

    # ----- helpers ---------------------------------------------------------------------
    def _check_length(self, prompt_ids: list[int], params: SamplingParams) -> None:
        limit = self.target.max_length
        if len(prompt_ids) >= limit:
            raise DraftsmithError(f"prompt has {len(prompt_ids)} tokens; {self.target.name} takes at most {limit - 1} "
                                  "(its context length leaves no room to generate)")
        if len(prompt_ids) + params.max_new_tokens > limit:
            raise DraftsmithError(
                f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({params.max_new_tokens}) exceeds the "
                f"context length of {self.target.name} ({limit}); lower max_new_tokens to at most "
                f"{limit - len(prompt_ids)}")
