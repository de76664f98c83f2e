"""The serving engine: a worker thread runs continuous batching over one BatchDecoder. Between
steps it admits queued requests (up to `max_batch` rows) and drops cancelled ones, which frees
their slots at once; each step's new text goes back to its request's asyncio queue."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..decode import BatchDecoder, Row
from ..drafters import Drafter
from ..errors import DraftsmithError
from ..target import CausalLM
from ..types import SamplingParams


@dataclass
class Job:
    prompt_ids: list[int]
    params: SamplingParams
    seed: int
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue  # ("text", str) ... then ("done", GenerationResult) or ("error", str)
    cancel: threading.Event = field(default_factory=threading.Event)


class Metrics:
    """Prometheus metrics, in a registry of the server's own (no global state)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("draftsmith_requests", "Requests finished", ["outcome"], registry=r)
        self.tokens = Counter("draftsmith_generated_tokens", "Tokens generated", registry=r)
        self.steps = Counter("draftsmith_steps", "Target forward steps", registry=r)
        self.drafted = Counter("draftsmith_drafted_tokens", "Draft tokens proposed", registry=r)
        self.accepted = Counter("draftsmith_accepted_tokens", "Draft tokens accepted", registry=r)
        self.queue_depth = Gauge("draftsmith_queue_depth", "Requests waiting", registry=r)
        self.running = Gauge("draftsmith_running", "Requests being decoded", registry=r)
        self.tokens_per_second = Gauge("draftsmith_tokens_per_second", "Tokens/s of the last finished request", registry=r)
        self.batch = Histogram("draftsmith_step_batch_size", "Rows per target step", buckets=(1, 2, 4, 8, 16, 32, 64),
                               registry=r)
        self.draft_length = Histogram("draftsmith_step_draft_length", "Draft length chosen per step (SmartSpec)",
                                      buckets=(0, 1, 2, 4, 8, 16), registry=r)
        self.tau = Gauge("draftsmith_tau", "Mean tokens per step so far (bonus included)", registry=r)
        self.acceptance = Gauge("draftsmith_acceptance_rate", "Accepted / drafted so far", registry=r)
        self.tau.set_function(lambda: self._ratio(self.tokens, self.steps))
        self.acceptance.set_function(lambda: self._ratio(self.accepted, self.drafted))

    @staticmethod
    def _ratio(a: Counter, b: Counter) -> float:
        den = b._value.get()
        return a._value.get() / den if den else 0.0


class Engine:
    def __init__(self, target: CausalLM, drafter: str | Drafter = "none", *, verifier=None, max_batch: int = 16,
                 smartspec: bool = True, k_max: int = 8):
        """`drafter` (name, spec or instance) is bound once: every request's row gets a fork of it
        (shared weights and tables, no load per request). `verifier`: the default rule for
        requests (None: greedy at temperature 0, rejection sampling otherwise). `k_max`: the
        batch's longest draft (every row's cap; SmartSpec picks up to it; 0 = no drafting).
        Bad arguments raise DraftsmithError before any work (the calibration takes seconds)."""
        if not (isinstance(max_batch, int) and not isinstance(max_batch, bool) and max_batch >= 1):
            raise DraftsmithError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        if not (isinstance(k_max, int) and not isinstance(k_max, bool) and k_max >= 0):
            raise DraftsmithError(f"k_max must be an integer >= 0, got {k_max!r}")
        self.target = target
        self.decoder = BatchDecoder(target, drafter, verifier=verifier, k_max=k_max, smartspec=smartspec)
        if smartspec:  # time the batched forward at 1, 2, 4, ... rows up to max_batch
            self.decoder.calibrate(sorted({min(1 << i, max_batch) for i in range(max_batch.bit_length() + 1)}))
        self.max_batch = max_batch
        self.metrics = Metrics()
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.active: dict[int, tuple[Row, Job, float]] = {}  # id(row) -> (row, job, start time)
        self.worker = threading.Thread(target=self._run, name="draftsmith-engine", daemon=True)
        self.worker.start()

    @property
    def verifier(self):
        """The server-wide rule (an instance), or None: per request, greedy at temperature 0 and
        rejection sampling otherwise."""
        return self.decoder.loop.verifier

    @property
    def lossless(self) -> bool:
        """False when the server-wide rule is lossy (every response then says so in its usage)."""
        return bool(self.verifier.lossless) if self.verifier is not None else True

    def submit(self, job: Job) -> None:
        self.jobs.put(job)
        self.metrics.queue_depth.set(self.jobs.qsize())

    def close(self) -> None:
        self.jobs.put(None)

    def _send(self, job: Job, item) -> None:
        job.loop.call_soon_threadsafe(job.out.put_nowait, item)

    def _admit(self, job: Job) -> None:
        if job.cancel.is_set():
            self.metrics.requests.labels("cancelled").inc()
            return
        try:
            row = self.decoder.add(job.prompt_ids, job.params, torch.Generator().manual_seed(job.seed))
        except Exception as exc:  # this request fails; the worker goes on
            self.metrics.requests.labels("error").inc()
            self._send(job, ("error", str(exc) if isinstance(exc, DraftsmithError) else f"{type(exc).__name__}: {exc}"))
            return
        self.active[id(row)] = (row, job, time.perf_counter())

    def _finish(self, row: Row, outcome: str) -> None:
        _, job, t0 = self.active.pop(id(row))
        self.metrics.requests.labels(outcome).inc()
        if outcome != "ok":
            return
        result = row.result()
        s = result.stats
        s.wall_time = time.perf_counter() - t0
        self.metrics.tokens.inc(s.new_tokens)
        self.metrics.steps.inc(s.steps)
        self.metrics.drafted.inc(s.drafted)
        self.metrics.accepted.inc(s.accepted)
        self.metrics.tokens_per_second.set(s.new_tokens / max(s.wall_time, 1e-9))
        tail = row.tracker.delta(result.text, final=True) if result.text is not None else ""
        if tail:
            self._send(job, ("text", tail))
        self._send(job, ("done", result))

    def _run(self) -> None:
        while True:
            try:
                if not self._iteration():
                    return
            except Exception as exc:  # never let the worker die: fail what is in flight, go on
                self._fail_all(f"{type(exc).__name__}: {exc}")

    def _fail_all(self, message: str) -> None:
        for row, job, _ in list(self.active.values()):
            self._send(job, ("error", message))
            if not row.done:
                self.decoder.cancel(row)
            self.active.pop(id(row), None)
            self.metrics.requests.labels("error").inc()

    def _iteration(self) -> bool:
        """Admit queued requests, drop cancelled rows, step once. False once the engine is closed."""
        if not self.decoder.rows:  # idle: wait for work
            job = self.jobs.get()
            if job is None:
                return False
            self._admit(job)
        while len(self.decoder.rows) < self.max_batch:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return False
            self._admit(job)
        self.metrics.queue_depth.set(self.jobs.qsize())
        for row, job, _ in list(self.active.values()):
            if job.cancel.is_set():
                self.decoder.cancel(row)
                self._finish(row, "cancelled")
        self.metrics.running.set(len(self.decoder.rows))
        if not self.decoder.rows:
            return True
        self.metrics.batch.observe(len(self.decoder.rows))
        out = self.decoder.step()
        self.metrics.draft_length.observe(self.decoder.last_k)
        for row, _new in out:
            _, job, _ = self.active[id(row)]
            if row.error is not None:  # this row failed alone (see BatchDecoder.step)
                self.active.pop(id(row))
                self.metrics.requests.labels("error").inc()
                self._send(job, ("error", row.error))
                continue
            if row.tracker.target.tokenizer is not None:
                delta = row.tracker.delta(row.tracker.text(row.new_ids), final=False)
                if delta:
                    self._send(job, ("text", delta))
            if row.done:
                self._finish(row, "ok")
        self.metrics.running.set(len(self.decoder.rows))
        return True
