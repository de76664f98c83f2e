"""The serving engine: a supervised worker thread runs continuous batching over one BatchDecoder.

Between steps the worker admits queued requests (up to `max_batch` rows) and drops cancelled ones
(the client left, or the request timed out), which frees their rows at once; each step's new text
goes back to its request's asyncio queue.

Isolation. A row fails alone (the loop's boundary checks: whatever a row's drafter or verifier
raises ends that row with an error, the others go on). Anything that escapes a step (the target's
forward raising, a failure in cleanup) ends the worker thread; its supervisor then answers every
in-flight request with an error, starts the loop afresh (no rows, an empty cache; the bound
drafter is kept) and restarts the worker: queued requests wait for it. More than `max_restarts`
restarts within `restart_window` seconds, and the engine gives up: it is unhealthy (`/health`
and `/v1/models` answer 503), queued requests get an error and new ones are refused.

Limits. The queue holds at most `max_queue` waiting requests (`submit` raises QueueFull: the
server answers 429). A worker that has run one iteration for more than `stall_timeout` seconds
with rows in flight counts as stalled (unhealthy) until it moves again."""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..decode import BatchDecoder, Row
from ..drafters import Drafter
from ..errors import DraftsmithError
from ..policy.memory import MemoryBusy
from ..target import CausalLM
from ..types import SamplingParams

log = logging.getLogger("draftsmith.serve")


class QueueFull(DraftsmithError):
    """The request queue is at its bound (the server answers 429 with Retry-After)."""


class EngineUnavailable(DraftsmithError):
    """The engine gave up (too many worker failures) or is shutting down (the server answers 503)."""


@dataclass
class Job:
    prompt_ids: list[int]
    params: SamplingParams
    seed: int
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue  # ("text", str) ... then ("done", GenerationResult) or ("error", message, HTTP status)
    cancel: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str = "cancelled"  # the metrics outcome when cancelled: "cancelled" (client left) or "timeout"

    def stop(self, reason: str = "cancelled") -> None:
        """Cancel this request (a no-op once done): the worker drops it before its next step."""
        if not self.cancel.is_set():
            self.cancel_reason = reason
            self.cancel.set()


class JobQueue:
    """Waiting requests, bounded; cancelled ones are dropped without waiting for a free row."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._items: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, job: Job) -> list[Job]:
        """Queue `job`; returns the cancelled jobs dropped to make room. Raises QueueFull."""
        with self._cond:
            dropped = self._drop_cancelled() if len(self._items) >= self.maxsize else []
            if len(self._items) >= self.maxsize:
                raise QueueFull(f"the server's queue is full ({self.maxsize} requests waiting); retry later")
            self._items.append(job)
            self._cond.notify()
            return dropped

    def get(self, timeout: float | None = None) -> Job | None:
        """The oldest waiting job, waiting up to `timeout` seconds for one (None: none came)."""
        with self._cond:
            if not self._items and timeout:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None

    def put_back(self, job: Job) -> None:
        """A job taken with `get` that must wait (for memory): first in line again."""
        with self._cond:
            self._items.appendleft(job)

    def drop_cancelled(self) -> list[Job]:
        with self._cond:
            return self._drop_cancelled()

    def _drop_cancelled(self) -> list[Job]:
        gone = [j for j in self._items if j.cancel.is_set()]
        if gone:
            self._items = collections.deque(j for j in self._items if not j.cancel.is_set())
        return gone

    def drain(self) -> list[Job]:
        with self._cond:
            items, self._items = list(self._items), collections.deque()
            return items

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


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
        self.restarts = Counter("draftsmith_engine_restarts", "Engine worker restarts after a failure", registry=r)
        self.queue_depth = Gauge("draftsmith_queue_depth", "Requests waiting", registry=r)
        self.running = Gauge("draftsmith_running", "Requests being decoded", registry=r)
        self.healthy = Gauge("draftsmith_healthy", "1 while the engine worker is alive and moving", registry=r)
        self.tokens_per_second = Gauge("draftsmith_tokens_per_second", "Tokens/s of the last finished request", registry=r)
        self.batch = Histogram("draftsmith_step_batch_size", "Rows per target step", buckets=(1, 2, 4, 8, 16, 32, 64),
                               registry=r)
        self.draft_length = Histogram("draftsmith_step_draft_length", "Draft length chosen per step (SmartSpec)",
                                      buckets=(0, 1, 2, 4, 8, 16), registry=r)
        self.tau = Gauge("draftsmith_tau", "Mean tokens per step so far (bonus included)", registry=r)
        self.acceptance = Gauge("draftsmith_acceptance_rate", "Accepted / drafted so far", registry=r)
        self.tau.set_function(lambda: self._ratio(self.tokens, self.steps))
        self.acceptance.set_function(lambda: self._ratio(self.accepted, self.drafted))

    def watch_drafter(self, drafter) -> None:
        """A drafter that learns while serving (`online`): its trainer's steps and the weight
        versions published to the rows, beside the acceptance counters (acceptance over time is
        their rate)."""
        learner = getattr(drafter, "learner", None)
        if learner is None:
            return
        r = self.registry
        Gauge("draftsmith_drafter_train_steps", "Optimizer steps the online drafter's trainer took",
              registry=r).set_function(lambda: learner.version)
        Gauge("draftsmith_drafter_updates", "Trained weight versions published to the drafting rows",
              registry=r).set_function(lambda: learner.published)
        Gauge("draftsmith_drafter_rows_learned", "Finished requests the online drafter trained on",
              registry=r).set_function(lambda: learner.rows_seen)

    @staticmethod
    def _ratio(a: Counter, b: Counter) -> float:
        den = b._value.get()
        return a._value.get() / den if den else 0.0


def _positive_int(name: str, value, minimum: int = 1) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
        raise DraftsmithError(f"{name} must be an integer >= {minimum}, got {value!r}")


class Engine:
    def __init__(self, target: CausalLM, drafter: str | Drafter = "none", *, verifier=None, max_batch: int = 16,
                 smartspec: bool = True, k_max: int = 8, max_queue: int = 256, max_restarts: int = 3,
                 restart_window: float = 60.0, stall_timeout: float = 300.0, exact: bool = False,
                 prefill_chunk: int | None = 256, memory_budget=None):
        """`drafter` (name, spec or instance) is bound once: every request's row gets a fork of it
        (shared weights and tables, no load per request). `verifier`: the default rule for
        requests (None: greedy at temperature 0, rejection sampling otherwise). `k_max`: the
        batch's longest draft (every row's cap; SmartSpec picks up to it; 0 = no drafting).
        `max_queue`: waiting requests at most. `max_restarts` within `restart_window` seconds:
        worker restarts before the engine gives up. `exact`: the decoder's exact mode (greedy rows
        id for id as plain decoding alone, in bf16 too). `prefill_chunk`: a longer prompt is
        prefilled that many tokens per step, so running streams wait one chunk at most (None: a
        prompt at once, while every stream waits). Bad arguments raise DraftsmithError before
        any work (the calibration takes seconds). `memory_budget` (bytes, or a size such as
        "1.5GB"; policy/memory.py): rows reserve their context and drafts get the nodes that fit;
        a request that fits only once running rows finish waits in the queue, one that can never
        fit gets a 400 with the numbers."""
        _positive_int("max_batch", max_batch)
        _positive_int("k_max", k_max, 0)
        _positive_int("max_queue", max_queue)
        _positive_int("max_restarts", max_restarts, 0)
        for name, value in (("restart_window", restart_window), ("stall_timeout", stall_timeout)):
            if not (isinstance(value, (int, float)) and value > 0):
                raise DraftsmithError(f"{name} must be a number of seconds > 0, got {value!r}")
        self.target = target
        if prefill_chunk is not None:
            _positive_int("prefill_chunk", prefill_chunk)
        self.decoder = BatchDecoder(target, drafter, verifier=verifier, k_max=k_max, smartspec=smartspec,
                                    exact=exact, prefill_chunk=prefill_chunk, memory_budget=memory_budget)
        if smartspec:  # time the batched forward at 1, 2, 4, ... rows up to max_batch
            self.decoder.calibrate(sorted({min(1 << i, max_batch) for i in range(max_batch.bit_length() + 1)}))
        self.max_batch, self.max_queue = max_batch, max_queue
        self.max_restarts, self.restart_window, self.stall_timeout = max_restarts, restart_window, stall_timeout
        self.metrics = Metrics()
        self.metrics.watch_drafter(self.decoder.drafter)
        self.jobs = JobQueue(max_queue)
        self.active: dict[int, tuple[Row, Job, float]] = {}  # id(row) -> (row, job, start time)
        self.restarts = 0
        self.failure: str | None = None  # why the engine gave up (unhealthy for good)
        self._restart_times: list[float] = []
        self._closing = threading.Event()
        self._lock = threading.Lock()  # submit vs the supervisor failing the queue
        self._worker_error: str | None = None
        self._busy_since: float | None = None  # when the running iteration began (None: idle)
        self.worker: threading.Thread | None = None
        self.metrics.healthy.set_function(lambda: 1.0 if self.healthy else 0.0)
        self._first_worker = threading.Event()  # set once the supervisor has started the first worker
        self.supervisor = threading.Thread(target=self._supervise, name="draftsmith-supervisor", daemon=True)
        self.supervisor.start()
        # a request right after start-up must not find "the engine worker is restarting" (503): the
        # supervisor thread may not have run yet on a loaded machine
        self._first_worker.wait(timeout=30)

    @property
    def verifier(self):
        """The server-wide rule (an instance), or None: per request, greedy at temperature 0 and
        rejection sampling otherwise."""
        return self.decoder.loop.verifier

    @property
    def lossless(self) -> bool:
        """False when the server-wide rule is lossy (every response then says so in its usage)."""
        return bool(self.verifier.lossless) if self.verifier is not None else True

    # ----- health --------------------------------------------------------------------------
    def health(self) -> tuple[bool, str]:
        """(healthy, why): alive and idle or moving; else the reason it is not."""
        if self.failure is not None:
            return False, self.failure
        if self._closing.is_set():
            return False, "the engine is shutting down"
        if not self.supervisor.is_alive():
            return False, "the engine's supervisor thread is gone"
        worker = self.worker
        if worker is None or not worker.is_alive():
            return False, "the engine worker is restarting"
        busy = self._busy_since
        if busy is not None and time.monotonic() - busy > self.stall_timeout:
            return False, f"the engine worker has not finished a step for {time.monotonic() - busy:.0f} s"
        return True, "ok"

    @property
    def healthy(self) -> bool:
        return self.health()[0]

    @property
    def alive(self) -> bool:
        """False once the engine can answer nothing more (gave up or shut down): requests waiting
        on it stop waiting. A worker being restarted is alive."""
        return self.failure is None and not self._closing.is_set() and self.supervisor.is_alive()

    # ----- requests in -----------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue a request. Raises QueueFull (429) or EngineUnavailable (503)."""
        with self._lock:
            if not self.alive:
                raise EngineUnavailable(self.failure or "the server is shutting down")
            try:
                dropped = self.jobs.put(job)
            except QueueFull:
                self.metrics.requests.labels("rejected").inc()
                raise
            for gone in dropped:
                self.metrics.requests.labels(gone.cancel_reason).inc()
        self.metrics.queue_depth.set(len(self.jobs))

    def close(self) -> None:
        self._closing.set()
        self.jobs.wake()

    def _send(self, job: Job, item) -> None:
        try:
            job.loop.call_soon_threadsafe(job.out.put_nowait, item)
        except RuntimeError:  # the request's event loop is closed: nobody is waiting
            pass

    def _error(self, job: Job, message: str, status: int = 500) -> None:
        self._send(job, ("error", message, status))

    # ----- the supervisor --------------------------------------------------------------------
    def _supervise(self) -> None:
        """Run the worker; when it dies, fail what was in flight, start afresh, restart it (bounded)."""
        while True:
            self._worker_error = None
            self.worker = threading.Thread(target=self._work, name="draftsmith-engine", daemon=True)
            self.worker.start()
            self._first_worker.set()
            self.worker.join()
            self._busy_since = None
            if self._closing.is_set():
                self._fail_everything("the server is shutting down", 503)
                return
            message = self._worker_error or "the engine worker stopped"
            self._fail_active(f"the engine failed while decoding this request ({message}); it restarted", 500)
            try:
                self._fresh_loop()
            except Exception as exc:  # noqa: BLE001 - cannot start afresh: give up below
                log.exception("the engine could not start afresh")
                self._give_up(f"the engine failed ({message}) and could not start afresh: {type(exc).__name__}: {exc}")
                return
            now = time.monotonic()
            self._restart_times = [t for t in self._restart_times if now - t < self.restart_window] + [now]
            if len(self._restart_times) > self.max_restarts:
                self._give_up(f"the engine failed {len(self._restart_times)} times in {self.restart_window:g} s "
                              f"(last: {message}); restart the server")
                return
            self.restarts += 1
            self.metrics.restarts.inc()
            log.warning("engine worker restarted after: %s", message)

    def _give_up(self, reason: str) -> None:
        with self._lock:
            self.failure = reason
        log.error("engine unhealthy: %s", reason)
        self._fail_everything(reason, 503)

    def _fail_active(self, message: str, status: int) -> None:
        for row, job, _ in list(self.active.values()):
            self._error(job, message, status)
            self.metrics.requests.labels("error").inc()
        self.active.clear()

    def _fail_everything(self, message: str, status: int) -> None:
        self._fail_active(message, status)
        for job in self.jobs.drain():
            self._error(job, message, status)
            self.metrics.requests.labels("error").inc()
        self.metrics.queue_depth.set(0)
        self.metrics.running.set(0)

    def _fresh_loop(self) -> None:
        """A loop with no rows and an empty cache, over the same target, bound drafter, rule and
        policy (rows of a failed step may be half-committed: none of them is kept)."""
        self.decoder.loop.reset()
        self.metrics.running.set(0)

    # ----- the worker ------------------------------------------------------------------------
    def _work(self) -> None:
        try:
            while self._iteration():
                pass
        except BaseException as exc:  # noqa: BLE001 - the supervisor restarts the worker
            self._worker_error = str(exc) if isinstance(exc, DraftsmithError) else f"{type(exc).__name__}: {exc}"
            log.exception("engine worker failed")

    def _admit(self, job: Job) -> bool:
        """Start the job's row (or fail the job alone). False: it waits, first in the queue, for
        running rows to free memory (a memory budget)."""
        if job.cancel.is_set():
            self.metrics.requests.labels(job.cancel_reason).inc()
            return True
        try:
            row = self.decoder.add(job.prompt_ids, job.params, torch.Generator().manual_seed(job.seed))
        except Exception as exc:  # this request fails; the worker goes on
            if isinstance(exc, MemoryBusy) and self.decoder.rows:  # it waits for the running rows' memory
                self.jobs.put_back(job)
                return False
            self.metrics.requests.labels("error").inc()
            self._error(job, str(exc) if isinstance(exc, DraftsmithError) else f"{type(exc).__name__}: {exc}",
                        400 if isinstance(exc, DraftsmithError) else 500)
            return True
        self.active[id(row)] = (row, job, time.perf_counter())
        return True

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

    def _iteration(self) -> bool:
        """Admit queued requests, drop cancelled rows, step once. False once the engine is closed."""
        self._busy_since = None
        if self._closing.is_set():
            return False
        for gone in self.jobs.drop_cancelled():  # timed out or left while waiting
            self.metrics.requests.labels(gone.cancel_reason).inc()
        if not self.decoder.rows:  # idle: wait for work (waking now and then to see a close)
            job = self.jobs.get(timeout=0.25)
            self.metrics.queue_depth.set(len(self.jobs))
            if job is None:
                return not self._closing.is_set()
            self._busy_since = time.monotonic()
            self._admit(job)
        self._busy_since = time.monotonic()
        while len(self.decoder.rows) < self.max_batch:
            job = self.jobs.get()
            if job is None or not self._admit(job):
                break
        self.metrics.queue_depth.set(len(self.jobs))
        for row, job, _ in list(self.active.values()):
            if job.cancel.is_set():
                self.decoder.cancel(row)
                self._finish(row, job.cancel_reason)
        self.metrics.running.set(len(self.decoder.rows))
        if not self.decoder.rows:
            return True
        self.metrics.batch.observe(len(self.decoder.rows))
        out = self.decoder.step()
        if self.decoder.last_k is not None:  # None: the step only prefilled a chunk
            self.metrics.draft_length.observe(self.decoder.last_k)
        for row, _new in out:
            _, job, _ = self.active[id(row)]
            if row.error is not None:  # this row failed alone (see BatchDecoder.step)
                self.active.pop(id(row))
                self.metrics.requests.labels("error").inc()
                self._error(job, f"this request failed: {row.error}", 500)
                continue
            if row.tracker.target.tokenizer is not None:
                delta = row.tracker.delta(row.tracker.text(row.new_ids), final=False)
                if delta:
                    self._send(job, ("text", delta))
            if row.done:
                self._finish(row, "ok")
        self.metrics.running.set(len(self.decoder.rows))
        return True
