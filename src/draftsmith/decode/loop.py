"""THE decoding loop, over rows: prefill -> propose -> verify -> commit -> observe.

    add(prompt)                               # prefill: the row's cache holds all but its last token
    step():
        k     = policy(row)                   # draft length: drafter's k, row policy, batch policy, room
        draft = row.drafter.propose(ctx)      # a chain of k tokens, or a tree k deep; checked at the boundary
        logits = target(root + draft, every row)   # ONE forward: [B, 1 + N_max, V], tree- and row-masked
        result = row.verifier.verify(draft, logits[row])   # accepted prefix/path + one bonus token
        row.commit(result)                    # cut at EOS / stop / budget; the cache keeps the path
        row.drafter.observe(result)

One sequence is a batch of one (`SpeculativeDecoder`), many are a batch (`BatchDecoder`, the
server): the same code, with a fast path for one row (its cache is cut in place and chains run
without a mask unless the target has a sliding window; cache.py). Plain autoregressive
decoding is this loop with a drafter that proposes nothing (`NoDrafter`), so the reference and
every method share one code path.

A row fails alone: whatever its drafter or verifier raises, or a draft the boundary checks
refuse (decode/checks.py), ends that row with `row.error` set while the others go on.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import replace

import torch

from ..cache import RowsCache, check_supported, new_cache
from ..drafters.base import DraftContext, DrafterBase
from ..errors import DraftsmithError
from ..exact import Exact
from ..policy import SmartSpec, row_policy
from ..policy.memory import MemoryBusy, MemoryPlan, check_row
from ..policy.smartspec import synchronize
from ..types import Draft, RunStats, SamplingParams, VerifyResult
from ..verify import VerifierBase, bind_verifier, build_verifier, default_verifier
from .checks import check_draft, check_result
from .rows import Prefill, Row, TextTracker, check_length

log = logging.getLogger(__name__)


def drafter_features(hidden_states: tuple[torch.Tensor, ...], layers: tuple[int, ...] | None) -> torch.Tensor:
    """What a drafter with needs_hidden_states reads of a forward's hidden states (each [B, q, H]):
    the last (after the final norm) when its `feature_layers` is None, else the inputs of those
    layers (hidden_states[i]) concatenated, [B, q, len(layers) * H] (EAGLE-3's low/mid/high)."""
    if layers is None:
        return hidden_states[-1]
    return torch.cat([hidden_states[i] for i in layers], dim=-1)


def kept_hidden(hidden: torch.Tensor, path: list[int]) -> torch.Tensor:
    """The step's hidden states [1, q, H] -> those of the root and the accepted nodes [1, m, H]."""
    return hidden[:, [0] + [1 + i for i in path]]


def _message(exc: Exception) -> str:
    return str(exc) if isinstance(exc, DraftsmithError) else f"{type(exc).__name__}: {exc}"


class Loop:
    """Rows decoding together over one target. `drafter` is bound (its shared state built once);
    each row gets `drafter.fork()`. `verifier` None: per request, greedy at temperature 0 and
    rejection sampling otherwise. `batch_policy` (SmartSpec) and `k_max` bound every row's draft.
    `exact` (exact.py): every step's forward gives each token the bits a one-token forward would.
    `prefill_chunk`: prompts longer than this are prefilled that many tokens per step, between the
    other rows' steps (chunked prefill: no running row waits for a whole long prompt)."""

    def __init__(self, target, drafter: DrafterBase, *, verifier=None, batch_policy: SmartSpec | None = None,
                 k_max: int | None = None, exact: Exact | None = None, prefill_chunk: int | None = None,
                 memory: MemoryPlan | None = None):
        check_supported(target.model, target.name)
        if prefill_chunk is not None and not (isinstance(prefill_chunk, int) and not isinstance(prefill_chunk, bool)
                                              and prefill_chunk >= 1):
            raise DraftsmithError(f"prefill_chunk must be an integer >= 1 or None, got {prefill_chunk!r}")
        self.target, self.drafter, self.verifier, self.exact = target, drafter, bind_verifier(verifier, target), exact
        self.prefill_chunk = prefill_chunk
        self.memory = memory  # policy/memory.py: rows reserve their context; drafts get what is left
        self.pending: list[Row] = []  # rows whose prompt is being prefilled a chunk per step
        self.batch_policy, self.k_max = batch_policy, k_max
        self.cache = RowsCache(target.config, target.device, target.dtype)
        self.rows: list[Row] = []
        self.last_k: int | None = None
        self.vocab = target.vocab_size

    # ----- rows join and leave -----------------------------------------------------------
    @torch.inference_mode()
    def add(self, prompt_ids: list[int], params: SamplingParams, generator: torch.Generator | None = None,
            verifier=None) -> Row:
        """Prefill a new row and let it join the batch (errors here are the request's alone). With
        `prefill_chunk`, a longer prompt is prefilled a chunk per step instead (`pending` until then)."""
        target = self.target
        check_length(target, len(prompt_ids), params)
        rule = bind_verifier(build_verifier(verifier), target) if verifier is not None else self.verifier
        rule = rule or default_verifier(params)
        drafter = self.drafter.fork()
        row = Row(list(prompt_ids), len(prompt_ids), params, generator, drafter, rule, row_policy(drafter),
                  TextTracker(target, params.stop), set() if params.ignore_eos else target.eos_token_ids,
                  stats=RunStats(lossless=rule.lossless_for(params) if isinstance(rule, VerifierBase) else bool(rule.lossless)),
                  start_time=time.perf_counter())
        try:
            row.reserved = self._reserve(len(prompt_ids), params)  # once the row is built: a bad request holds nothing
        except BaseException:
            drafter.finish()
            raise
        row.prefill = Prefill(new_cache())
        if self.prefill_chunk is not None and len(row.ids) - 1 > self.prefill_chunk:
            self.pending.append(row)
            return row
        try:
            self._prefill(row, len(row.ids) - 1)
        except BaseException:
            self._release(row)
            drafter.finish()
            raise
        return row

    def _reserve(self, prompt_tokens: int, params: SamplingParams) -> int:
        """A memory budget: reserve the row's whole context, or refuse it (MemoryBudgetError)."""
        if self.memory is None:
            return 0
        tokens = min(prompt_tokens + params.max_new_tokens, self.target.max_length)
        at_once = min(prompt_tokens, self.prefill_chunk or prompt_tokens)  # prefilled in one forward
        check_row(self.memory, tokens, at_once)  # never fits: the request's own error
        if not self.memory.fits(tokens, at_once):
            raise MemoryBusy(f"the memory budget is held by the {len(self.rows) + len(self.pending)} rows "
                                    f"running ({self.memory.reserved} tokens reserved); this request's {tokens} tokens "
                                    "fit once some of them finish")
        self.memory.reserved += tokens
        return tokens

    def _release(self, row: Row) -> None:
        if self.memory is not None and row.reserved:
            self.memory.reserved -= row.reserved
            row.reserved = 0

    def _prefill(self, row: Row, upto: int) -> None:
        """Prefill the row's prompt up to token `upto` (all but its last token: it joins the batch)."""
        target, p, dev = self.target, row.prefill, self.target.device
        need = row.drafter.needs_hidden_states
        layers = row.drafter.feature_layers
        t0 = time.perf_counter()
        if upto > p.done:
            slots = torch.arange(p.done, upto, device=dev)
            out = target.step(torch.tensor([row.ids[p.done:upto]], device=dev), slots[None], p.cache,
                              cache_position=slots, hidden_states=need, last_only=True)
            if need:
                p.features.append(drafter_features(out.hidden_states, layers))  # [1, chunk, H']
            p.done = upto
        row.stats.prefill_time += time.perf_counter() - t0
        if p.done < len(row.ids) - 1:
            return
        features = None
        if need:
            width = target.config.hidden_size * (1 if layers is None else len(layers))
            features = torch.cat(p.features, dim=1) if p.features else torch.zeros(
                1, 0, width, dtype=target.dtype, device=dev)  # [1, n-1, H']
        t0 = time.perf_counter()
        row.drafter.prefill(list(row.ids), features)
        row.stats.drafter_time += time.perf_counter() - t0
        self.cache.add_row(p.cache, len(row.ids) - 1)
        row.prefill = None
        self.rows.append(row)

    def _prefill_chunk(self) -> list[Row]:
        """One chunk of the oldest pending prompt; a row whose prefill fails leaves, failed."""
        r = self.pending[0]
        try:
            self._prefill(r, min(len(r.ids) - 1, r.prefill.done + self.prefill_chunk))
        except Exception as exc:  # this request fails alone
            r.fail(_message(exc))
            r.stats.wall_time = time.perf_counter() - r.start_time
            self._finish_drafter(r)
            self.pending.pop(0)
            return [r]
        if r.prefill is None:
            self.pending.pop(0)
        return []

    def _finish_drafter(self, r: Row) -> None:
        self._release(r)
        try:
            r.drafter.finish()
        except Exception as exc:  # noqa: BLE001 - a drafter's cleanup fails neither the others nor this row
            log.warning("%s: finish() failed after the row ended: %s", r.drafter.name, _message(exc))

    def reset(self) -> None:
        """Drop every row (their drafters finish) and start from an empty cache: after a failure
        outside any one row, when rows may be half-committed."""
        for r in self.rows + self.pending:
            self._finish_drafter(r)
        self.rows, self.pending = [], []
        self.cache = RowsCache(self.target.config, self.target.device, self.target.dtype)
        self.last_k = None

    def cancel(self, row: Row) -> None:
        if row in self.pending:
            row.cancelled = row.done = True
            self.pending.remove(row)
            self._finish_drafter(row)
        if row in self.rows:
            row.cancelled = row.done = True
            self._drop_finished()

    def _drop_finished(self) -> None:
        keep = [i for i, r in enumerate(self.rows) if not r.done]
        if len(keep) == len(self.rows):
            return
        now = time.perf_counter()
        for r in self.rows:
            if r.done:
                r.stats.wall_time = now - r.start_time
                self._finish_drafter(r)
        self.cache.keep_rows(keep)
        self.rows = [self.rows[i] for i in keep]

    # ----- one step for every row ------------------------------------------------------------
    def _caps(self) -> list[int]:
        room = self.target.max_length
        k_max = self.k_max if self.k_max is not None else 1 << 30
        if self.memory is not None:  # the draft nodes per row that fit in what the rows' contexts leave
            k_max = min(k_max, self.memory.nodes(len(self.rows)))
        return [max(0, min(r.drafter.k, k_max, r.budget - 1, room - len(r.ids) - 1)) for r in self.rows]

    def _propose(self, r: Row, k: int) -> Draft:
        t0 = time.perf_counter()
        try:
            d = r.drafter.propose(DraftContext(r.ids, k, r.params, r.generator))
            d = check_draft(d, vocab=self.vocab, cap=k, device=self.target.device, trees=r.verifier.trees,
                            who=r.drafter.name or type(r.drafter).__name__)
            if self.memory is not None:  # a tree within its depth cap may still be wider than memory allows
                d = d.first(k)
        except Exception as exc:  # this row drafts nothing and fails after the forward
            r.fail(_message(exc))
            d = Draft.empty(device=self.target.device)
        r.stats.drafter_time += time.perf_counter() - t0
        return d

    @torch.inference_mode()
    def step(self) -> list[tuple[Row, list[int]]]:
        """One target forward for every row. Returns each row's committed tokens; finished rows
        (done, cancelled or failed) leave the batch."""
        failed = self._prefill_chunk() if self.pending else []  # a waiting stream waits one chunk at most
        if not self.rows:
            return [(r, []) for r in failed]
        rows, policy, step_start = self.rows, self.batch_policy, time.perf_counter()
        caps = self._caps()
        trim = policy is not None and all(r.drafter.trimmable for r in rows)
        batch_k = policy.choose_k([r.history for r in rows]) if policy is not None and not trim else None
        # in exact mode a sampled row keeps its own draft length: the batch's would change which
        # random numbers it draws, so the same seed would sample differently beside other rows
        own = [self.exact is not None and not r.params.greedy for r in rows]
        offered = [r.length.choose(cap if batch_k is None or mine else min(cap, batch_k))
                   for r, cap, mine in zip(rows, caps, own)]
        drafts = [self._propose(r, k) for r, k in zip(rows, offered)]
        if trim:  # SmartSpec picks k with every row's (longest) draft in hand; the drafts are cut to it
            for i, r in enumerate(rows):
                if drafts[i].parents is not None and r.error is None:
                    r.fail(f"{r.drafter.name} is trimmable but proposed a tree")
                    drafts[i] = Draft.empty(device=self.target.device)
            batch_k = policy.choose_k([r.history for r in rows], [d.size for d in drafts])
            drafts = [d if mine else d.truncate(batch_k) for d, mine in zip(drafts, own)]
            offered = [o if mine else min(o, batch_k) for o, mine in zip(offered, own)]
        self.last_k = batch_k if batch_k is not None else max(offered)

        judged = [bool(getattr(r.verifier, "needs_hidden_states", False)) for r in rows]  # rules that read states
        need_hidden = any(r.drafter.needs_hidden_states for r in rows) or any(judged)
        trees = [d.tree for d in drafts]
        ids, pos, cache_position, mask = self.cache.step_inputs(
            [r.ids[-1] for r in rows], [d.token_ids[0] for d in drafts], trees, [len(r.ids) for r in rows])
        t_forward = time.perf_counter()
        with self.exact.active(self.cache.valid) if self.exact is not None else nullcontext():
            out = self.target.step(ids, pos, self.cache.cache, cache_position=cache_position, mask=mask,
                                   hidden_states=need_hidden)
        logits = out.logits  # [B, q, V]
        synchronize(logits.device)  # a GPU runs asynchronously: time the forward, not its launch
        forward = time.perf_counter() - t_forward
        for r in rows:  # every row of the batch waited for the whole forward
            r.stats.target_time += forward
        hidden = {layers: drafter_features(out.hidden_states, layers)  # feature_layers -> [B, q, H'], once per kind
                  for layers in {r.drafter.feature_layers for r in rows if r.drafter.needs_hidden_states}}
        last = out.hidden_states[-1] if any(judged) else None  # [B, q, H] what a verifier reads

        committed, kept = [], []
        for b, (r, d, k_row) in enumerate(zip(rows, drafts, offered)):
            path, new = [], []
            if r.error is None:
                try:
                    path, new = self._verify_commit(r, d, logits[b:b + 1, :d.size + 1],
                                                    hidden[r.drafter.feature_layers][b:b + 1]
                                                    if r.drafter.needs_hidden_states else None,
                                                    last[b:b + 1, :d.size + 1] if judged[b] else None)
                except Exception as exc:  # this row fails alone; the others go on
                    r.fail(_message(exc))
                    path, new = [], []
            kept.append([0] + [1 + i for i in path])
            if policy is not None and k_row > 0 and r.error is None:
                policy.record(r.history, k_row, d.size, r.stats.accepted_per_step[-1])
            committed.append((r, new))
        self.cache.commit(kept, ids.shape[1])
        if policy is not None:
            policy.observe_step(time.perf_counter() - step_start, len(rows), ids.shape[1],
                                sum(len(n) for _, n in committed), self.last_k)
        self._drop_finished()
        return committed + [(r, []) for r in failed]

    def _verify_commit(self, r: Row, d: Draft, logits: torch.Tensor, hidden: torch.Tensor | None,
                       states: torch.Tensor | None = None):
        """Verify one row's draft ([1, n+1, V] logits; `states` [1, n+1, H] the target's last hidden
        states for a rule with needs_hidden_states), commit, observe. Returns (path, new tokens)."""
        if states is None:
            results = r.verifier.verify(d, logits, r.params, r.generator)
        else:
            results = r.verifier.verify(d, logits, r.params, r.generator, hidden=states)
        result: VerifyResult = results[0] if isinstance(results, (list, tuple)) else results
        path = check_result(result, d, self.vocab, r.verifier.name or type(r.verifier).__name__)
        if hidden is not None:  # [1, q, H]
            result = replace(result, hidden=kept_hidden(hidden, path))
        new = r.commit(result)
        r.length.update(result.num_drafted, result.num_accepted)
        t0 = time.perf_counter()
        r.drafter.observe(result)
        r.stats.drafter_time += time.perf_counter() - t0
        return path, new
