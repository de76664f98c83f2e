"""The serving engine: requests queue up and a worker thread runs them through one
SpeculativeDecoder, one at a time (batch 1; batched decoding is not built yet). Each request
streams its chunks back to the asyncio side and can be cancelled between steps, which frees the
worker for the next request."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge

from ..decoding import SpeculativeDecoder
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
        self.tau = Gauge("draftsmith_tau", "Mean tokens per step so far (bonus included)", registry=r)
        self.acceptance = Gauge("draftsmith_acceptance_rate", "Accepted / drafted so far", registry=r)
        self.tau.set_function(lambda: self._ratio(self.tokens, self.steps))
        self.acceptance.set_function(lambda: self._ratio(self.accepted, self.drafted))

    @staticmethod
    def _ratio(a: Counter, b: Counter) -> float:
        den = b._value.get()
        return a._value.get() / den if den else 0.0


class Engine:
    def __init__(self, decoder: SpeculativeDecoder):
        self.decoder = decoder
        self.metrics = Metrics()
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.worker = threading.Thread(target=self._run, name="draftsmith-engine", daemon=True)
        self.worker.start()

    def submit(self, job: Job) -> None:
        self.metrics.queue_depth.inc()
        self.jobs.put(job)

    def close(self) -> None:
        self.jobs.put(None)

    def _send(self, job: Job, item) -> None:
        job.loop.call_soon_threadsafe(job.out.put_nowait, item)

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            self.metrics.queue_depth.dec()
            if job.cancel.is_set():
                self.metrics.requests.labels("cancelled").inc()
                continue
            self.metrics.running.inc()
            t0, outcome = time.perf_counter(), "ok"
            try:
                generator = torch.Generator().manual_seed(job.seed)
                for chunk in self.decoder.stream(job.prompt_ids, job.params, generator):
                    if job.cancel.is_set():
                        outcome = "cancelled"
                        break
                    if chunk.result is not None:
                        s = chunk.result.stats
                        self.metrics.tokens.inc(s.new_tokens)
                        self.metrics.steps.inc(s.steps)
                        self.metrics.drafted.inc(s.drafted)
                        self.metrics.accepted.inc(s.accepted)
                        self.metrics.tokens_per_second.set(s.new_tokens / max(time.perf_counter() - t0, 1e-9))
                        if chunk.text:
                            self._send(job, ("text", chunk.text))
                        self._send(job, ("done", chunk.result))
                    elif chunk.text:
                        self._send(job, ("text", chunk.text))
            except Exception as exc:  # a request's failure must not kill the worker
                outcome = "error"
                self._send(job, ("error", f"{type(exc).__name__}: {exc}"))
            finally:
                self.metrics.running.dec()
                self.metrics.requests.labels(outcome).inc()
