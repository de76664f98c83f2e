"""Batched speculative decoding with continuous batching.

Several sequences (rows) share one target forward per step. Each row drafts on its own (its own
drafter instance), and accepts its own number of tokens (ragged). The target's KV cache is one
padded tensor per layer ([B, H, T, D]) plus a validity mask `valid` [B, T]: a row's committed
tokens are its valid slots, wherever they sit. Positions are given explicitly per row (RoPE is
applied when a key is written), and each query attends only to its row's valid slots and its own
ancestors in this step's draft, so padding never shifts a row's positions ("padding drift").
Rejected draft slots are marked invalid, and the cache is compacted when they pile up. Rows join
(prefilled alone, then padded into the batch) and leave between steps.

    while rows:
        drafts = [row.drafter.propose(...) for row in rows]  # k per step from SmartSpec
        logits = target(last + draft for every row)           # ONE forward, [B, 1+N_max, V]
        for row: verify -> commit -> observe                  # exactly the single-row rules

Goodput-aware speculation: each step's draft length comes from a `SmartSpec` policy
(smartspec.py) once it has a step-cost model (`calibrate()`, or `cost=` given); without one, rows
draft up to `k_max`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from transformers import DynamicCache

from .decoding import _TextTracker, commit, kept_hidden
from .drafters import DraftContext, Drafter
from .errors import DraftsmithError
from .smartspec import History, SmartSpec, StepCost, calibrate
from .target import CausalLM
from .tree import Tree
from .types import Draft, GenerationResult, RunStats, SamplingParams
from .verify import GreedyVerifier, RejectionVerifier


@dataclass
class Row:
    """One sequence in the batch."""

    ids: list[int]
    prompt_len: int
    params: SamplingParams
    generator: torch.Generator | None
    drafter: Drafter
    tracker: _TextTracker
    eos: set[int]  # empty with ignore_eos
    verifier: object  # greedy or rejection sampling, chosen once from params
    stats: RunStats = field(default_factory=RunStats)
    done: bool = False
    cancelled: bool = False
    error: str | None = None  # set when this row failed on its own (it leaves the batch)
    history: History = field(default_factory=History)  # its drafting steps, for SmartSpec

    @property
    def new_ids(self) -> list[int]:
        return self.ids[self.prompt_len:]

    def result(self) -> GenerationResult:
        text = self.tracker.text(self.new_ids) if self.tracker.target.tokenizer is not None else None
        return GenerationResult(self.new_ids, text, self.stats)


def _pad_seq(t: torch.Tensor, width: int) -> torch.Tensor:
    """[B, H, T, D] -> [B, H, width, D], zeros appended along the sequence."""
    pad = width - t.shape[-2]
    return torch.cat([t, t.new_zeros(*t.shape[:-2], pad, t.shape[-1])], dim=-2) if pad > 0 else t


class BatchCache:
    """Per-layer keys/values [B, H, T, D] with a validity mask [B, T]."""

    def __init__(self):
        self.cache: DynamicCache | None = None
        self.valid = torch.zeros(0, 0, dtype=torch.bool)  # [B, T]

    @property
    def width(self) -> int:
        return self.valid.shape[1]

    @staticmethod
    def _layers(cache: DynamicCache):
        return [layer for layer in cache.layers if getattr(layer, "keys", None) is not None]

    def add_row(self, cache: DynamicCache, length: int) -> None:
        """Append a batch-1 cache holding `length` tokens (0 for a one-token prompt) as a new last row."""
        if self.cache is None or self.valid.shape[0] == 0:
            self.cache, self.valid = cache, torch.ones(1, length, dtype=torch.bool)
            return
        width = max(self.width, length)
        self._pad_to(width)
        mine, theirs = self._layers(self.cache), self._layers(cache)
        if not mine and theirs:  # every row so far had a one-token prompt: their slots are all padding
            for layer, r in zip(self.cache.layers, theirs):
                layer.keys = r.keys.new_zeros(self.valid.shape[0], *r.keys.shape[1:-2], width, r.keys.shape[-1])
                layer.values = r.values.new_zeros(self.valid.shape[0], *r.values.shape[1:-2], width, r.values.shape[-1])
                layer.dtype, layer.device, layer.is_initialized = r.keys.dtype, r.keys.device, True
            mine = self._layers(self.cache)
        for i, m in enumerate(mine):  # a one-token prompt brings an empty [1, H, 0, D] row
            k = theirs[i].keys if theirs else m.keys[:1, :, :0]
            v = theirs[i].values if theirs else m.values[:1, :, :0]
            m.keys, m.values = torch.cat([m.keys, _pad_seq(k, width)]), torch.cat([m.values, _pad_seq(v, width)])
        row = torch.zeros(1, width, dtype=torch.bool)
        row[0, :length] = True
        self.valid = torch.cat([self.valid, row])

    def _pad_to(self, width: int) -> None:
        if width <= self.width:
            return
        for layer in self._layers(self.cache):
            layer.keys, layer.values = _pad_seq(layer.keys, width), _pad_seq(layer.values, width)
        self.valid = torch.cat([self.valid, torch.zeros(self.valid.shape[0], width - self.width, dtype=torch.bool)], dim=1)

    def keep_rows(self, rows: list[int]) -> None:
        index = torch.tensor(rows, dtype=torch.long)
        for layer in self._layers(self.cache):
            i = index.to(layer.keys.device)
            layer.keys, layer.values = layer.keys.index_select(0, i), layer.values.index_select(0, i)
        self.valid = self.valid.index_select(0, index)

    def compact(self) -> None:
        """Move each row's valid slots to the front; drop the columns no row needs."""
        counts = self.valid.sum(1)
        width = int(counts.max()) if counts.numel() else 0
        order = torch.argsort((~self.valid).to(torch.int8), dim=1, stable=True)[:, :width]  # [B, width] valid first
        for layer in self._layers(self.cache):
            idx = order.to(layer.keys.device)[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
            layer.keys, layer.values = layer.keys.gather(2, idx), layer.values.gather(2, idx)
        self.valid = torch.arange(width)[None, :] < counts[:, None]


class BatchDecoder:
    """Decode many rows together. `make_drafter()` returns a fresh drafter for a new row."""

    def __init__(self, target: CausalLM, make_drafter: Callable[[], Drafter], *, k_max: int = 8,
                 smartspec: bool = True, cost: Callable[[int, int], float] | None = None, probe_every: int = 16):
        self.target, self.make_drafter, self.k_max, self.smartspec = target, make_drafter, k_max, smartspec
        if any(getattr(layer, "is_sliding", False) for layer in DynamicCache(config=target.config).layers):
            raise DraftsmithError(f"{target.name}: batched decoding needs a plain (non-sliding-window) KV cache")
        self.device = target.device
        self.rows: list[Row] = []
        self.kv = BatchCache()
        self.probe_every = probe_every
        self.policy: SmartSpec | None = SmartSpec(k_max, cost, probe_every) if smartspec and cost else None
        self.last_k: int | None = None

    # ----- rows join and leave -----------------------------------------------------------
    @torch.inference_mode()
    def add(self, prompt, params: SamplingParams | None = None, generator: torch.Generator | None = None) -> Row:
        params = params or SamplingParams()
        ids = self.target.encode(prompt)
        if len(ids) + params.max_new_tokens > self.target.max_length:
            raise DraftsmithError(f"prompt ({len(ids)} tokens) + max_new_tokens ({params.max_new_tokens}) exceeds the "
                                  f"context length of {self.target.name} ({self.target.max_length})")
        drafter = self.make_drafter()
        drafter.bind(self.target)
        row = Row(list(ids), len(ids), params, generator, drafter, _TextTracker(self.target, params.stop),
                  set() if params.ignore_eos else self.target.eos_token_ids,
                  GreedyVerifier() if params.greedy else RejectionVerifier())
        t0 = time.perf_counter()
        cache = DynamicCache(config=self.target.config)
        hidden = torch.zeros(1, 0, self.target.config.hidden_size, dtype=self.target.dtype, device=self.device)
        if len(ids) > 1:  # the cache holds all but the last token, as in the single-row loop
            out = self.target.model(input_ids=torch.tensor([ids[:-1]], device=self.device), past_key_values=cache,
                                    use_cache=True, logits_to_keep=1, output_hidden_states=drafter.needs_hidden_states)
            hidden = out.hidden_states[-1] if drafter.needs_hidden_states else None  # [1, n-1, H]
        if drafter.needs_hidden_states:
            drafter.prefill(list(ids), hidden=hidden)
        else:
            drafter.prefill(list(ids))
        row.stats.prefill_time = time.perf_counter() - t0
        self.kv.add_row(cache, len(ids) - 1)
        self.rows.append(row)
        return row

    def cancel(self, row: Row) -> None:
        row.cancelled = row.done = True
        self._drop_finished()

    def _drop_finished(self) -> None:
        keep = [i for i, r in enumerate(self.rows) if not r.done]
        if len(keep) != len(self.rows):
            self.kv.keep_rows(keep)
            self.rows = [self.rows[i] for i in keep]

    # ----- SmartSpec ---------------------------------------------------------------------
    def calibrate(self, batches=(1, 2, 4, 8, 16), context: int = 256, repeats: int = 3) -> StepCost:
        """Time the batched forward for these batch sizes and every width up to k_max + 1, and
        let SmartSpec choose draft lengths from it (see smartspec.calibrate)."""
        cost = calibrate(self.target.model, self.target.config, batches, range(1, self.k_max + 2), context, repeats)
        self.policy = SmartSpec(self.k_max, cost, self.probe_every) if self.smartspec else None
        return cost

    def choose_k(self) -> int:
        """The draft length for this step (the upper bound each row drafts to)."""
        return self.policy.choose_k([r.history for r in self.rows]) if self.policy else self.k_max

    # ----- one step for every row ------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[tuple[Row, list[int]]]:
        """One target forward for all rows. Returns each row's committed tokens; finished rows
        (done, or cancelled) leave the batch."""
        if not self.rows:
            return []
        target, dtype = self.target, self.target.dtype
        step_start = time.perf_counter()
        trim = self.policy is not None and all(getattr(r.drafter, "trimmable", False) for r in self.rows)
        k = self.k_max if trim else self.choose_k()  # trimmable drafters: the longest drafts, cut below
        drafts, offered = [], []
        for r in self.rows:
            budget = r.params.max_new_tokens - r.stats.new_tokens
            room = target.max_length - len(r.ids)
            offered.append(max(0, min(k, budget - 1, room - 1)))
            t0 = time.perf_counter()
            try:
                d = r.drafter.propose(DraftContext(r.ids, offered[-1], r.params, r.generator))
            except Exception as exc:  # one row's drafter failing: that row drafts nothing and fails below
                r.error, d = f"{type(exc).__name__}: {exc}", Draft.empty()
            r.stats.drafter_time += time.perf_counter() - t0
            drafts.append(d)
        if trim:  # SmartSpec picks k with every row's draft in hand, and the drafts are cut to it
            for r, i in ((r, i) for i, r in enumerate(self.rows) if drafts[i].parents is not None):
                r.error, drafts[i] = f"{type(r.drafter).__name__} is trimmable but proposed a tree", Draft.empty()
            k = self.policy.choose_k([r.history for r in self.rows], [d.size for d in drafts])
            drafts = [d.truncate(k) for d in drafts]
            offered = [min(o, k) for o in offered]
        self.last_k = k
        trees = [d.tree or Tree.from_parents(list(range(-1, d.size - 1))) for d in drafts]
        B, q, T = len(self.rows), 1 + max(d.size for d in drafts), self.kv.width
        ids = torch.zeros(B, q, dtype=torch.long)  # [B, q]: last committed token + draft, padded
        pos = torch.zeros(B, q, dtype=torch.long)
        allow = torch.zeros(B, q, T + q, dtype=torch.bool)
        allow[:, :, :T] = self.kv.valid[:, None, :]
        for b, (r, d, tree) in enumerate(zip(self.rows, drafts, trees)):
            n = d.size
            ids[b, 0] = r.ids[-1]
            ids[b, 1:n + 1] = d.token_ids[0]
            pos[b, :n + 1] = tree.position_ids(len(r.ids) - 1)[0]
            allow[b, :n + 1, T:T + n + 1] = tree.ancestry
            allow[b, n + 1:, :] = False
            allow[b, torch.arange(n + 1, q), T + torch.arange(n + 1, q)] = True  # padding sees itself only
        mask = torch.zeros(B, 1, q, T + q, dtype=dtype).masked_fill_(~allow[:, None], torch.finfo(dtype).min)
        dev = self.device
        need_hidden = any(r.drafter.needs_hidden_states for r in self.rows)
        fwd = target.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                           past_key_values=self.kv.cache, use_cache=True, output_hidden_states=need_hidden,
                           cache_position=torch.arange(T, T + q, device=dev))
        logits = fwd.logits.cpu()  # [B, q, V]
        hidden = fwd.hidden_states[-1] if need_hidden else None  # [B, q, H]
        new_valid = torch.zeros(B, q, dtype=torch.bool)
        out = []
        for b, (r, d, k_row) in enumerate(zip(self.rows, drafts, offered)):
            if r.error is not None:
                r.done = True
                out.append((r, []))
                continue
            try:
                new = self._commit_row(r, d, logits[b:b + 1, :d.size + 1], new_valid[b],
                                       hidden[b:b + 1] if r.drafter.needs_hidden_states else None)
            except Exception as exc:  # this row fails alone; the others go on
                r.error, r.done, new = f"{type(exc).__name__}: {exc}", True, []
            if k_row > 0 and r.error is None and self.policy:
                self.policy.record(r.history, k_row, d.size, r.stats.accepted_per_step[-1])
            out.append((r, new))
        self.kv.valid = torch.cat([self.kv.valid, new_valid], dim=1)
        if self.policy:
            self.policy.observe_step(time.perf_counter() - step_start, B, q, sum(len(new) for _, new in out), k)
        self._drop_finished()
        if self.rows and self.kv.width > 2 * int(self.kv.valid.sum(1).max()) + 32:
            self.kv.compact()
        return out

    def _commit_row(self, r: Row, d: Draft, logits: torch.Tensor, valid: torch.Tensor,
                    hidden: torch.Tensor | None) -> list[int]:
        """Verify one row's draft ([1, n+1, V] logits), mark its kept slots, commit, observe."""
        result = r.verifier.verify(d, logits, r.params, r.generator)
        if hidden is not None:  # [1, q, H]
            result = replace(result, hidden=kept_hidden(hidden, result, d.parents is not None))
        path = result.path if d.parents is not None else list(range(result.num_accepted))
        valid[0] = True  # the root: the last committed token, fed this step
        valid[[1 + i for i in path]] = True
        budget = r.params.max_new_tokens - r.stats.new_tokens
        new, r.done = commit(r.ids, r.prompt_len, result, r.stats, budget, r.eos,
                             r.tracker if r.params.stop and self.target.tokenizer is not None else None)
        r.drafter.observe(result)
        return new

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
