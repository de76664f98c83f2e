"""The server under faults and abuse, in process: a tiny random model (fp32, greedy), the app on
uvicorn in a thread on 127.0.0.1 (real sockets, so a killed client or a chunked upload is real),
and faults injected into the engine: a drafter that raises or returns garbage for one row, a
worker exception, a worker that keeps failing, a killed client, slow drafters for the timeouts.
After each fault the server is healthy and a greedy answer is unchanged."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import json
import socket
import struct
import threading
import time

import httpx
import pytest
import torch
import uvicorn

from draftsmith import CausalLM, Draft
from draftsmith.drafters.ngram import NgramDrafter
from draftsmith.serve import Engine, create_app
from tests.conftest import tiny_model, tiny_tokenizer

MODEL = "tiny"
PROMPT = "the quick brown fox"


class FaultyDrafter(NgramDrafter):
    """ngram, except for rows whose prompt names a fault: `boom` raises in propose, `junk`
    proposes out-of-range ids, `slow` sleeps 50 ms per step, `sleepy` sleeps 1 s in prefill."""

    name = "faulty"

    def bind(self, target):
        self.target = target

    def prefill(self, prompt_ids, features=None):
        text = self.target.tokenizer.decode(prompt_ids)
        self.mode = next((m for m in ("boom", "junk", "slow", "sleepy") if m in text), None)
        if self.mode == "sleepy":
            time.sleep(1.0)

    def propose(self, ctx):
        if self.mode == "boom":
            raise RuntimeError("boom: an injected drafter failure")
        if self.mode == "junk":
            return Draft(torch.tensor([[10**6, -3]]))
        if self.mode == "slow":
            time.sleep(0.05)
        return super().propose(ctx)


@pytest.fixture(scope="module")
def target():
    tok = tiny_tokenizer()
    return CausalLM(tiny_model("llama", vocab=len(tok), seed=5, eos=tok.eos_token_id, max_len=256).model, tok,
                    name="tiny")


class Served:
    """An engine and its app on uvicorn in a thread."""

    def __init__(self, engine: Engine, **app_options):
        self.engine = engine
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        app = create_app(engine, MODEL, "faulty", **app_options)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        self.base = f"http://127.0.0.1:{self.port}"

    def close(self):
        self.server.should_exit = True
        self.thread.join(10)
        self.engine.close()

    def post(self, body: dict, path: str = "/v1/completions", **kw) -> httpx.Response:
        return httpx.post(self.base + path, json={"model": MODEL, **body}, timeout=kw.pop("timeout", 60), **kw)

    def complete(self, prompt: str = PROMPT, **kw) -> httpx.Response:
        return self.post({"prompt": prompt, "max_tokens": 16, "temperature": 0, **kw})

    def health(self) -> httpx.Response:
        return httpx.get(self.base + "/health", timeout=10)

    def wait(self, condition, what: str, timeout: float = 20):
        deadline = time.time() + timeout
        while not condition():
            assert time.time() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)

    def metric(self, name: str) -> float:
        for line in httpx.get(self.base + "/metrics", timeout=10).text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def assert_healthy_and_unchanged(self, reference: str):
        """After a fault: /health is 200, nothing is left running, and the greedy answer is the same."""
        self.wait(lambda: self.health().status_code == 200, "/health to be 200")
        assert self.health().json()["status"] == "ok"
        self.wait(lambda: not self.engine.decoder.rows and not self.engine.active, "the rows to be freed")
        r = self.complete()
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == reference


@pytest.fixture
def serve(target):
    """serve(**engine_and_app_options) -> Served; all are closed after the test."""
    made = []
    app_keys = {"request_timeout", "first_token_timeout", "body_timeout", "max_body", "default_max_tokens",
                "max_tokens_limit"}

    def make(**options) -> Served:
        app_options = {k: options.pop(k) for k in list(options) if k in app_keys}
        engine = Engine(target, FaultyDrafter(k=4), smartspec=False, **{"max_batch": 8, **options})
        made.append(Served(engine, **app_options))
        return made[-1]

    yield make
    for s in made:
        s.close()


class Gate:
    """The worker blocks in its next admission (`entered` is set) until `set()`, so requests sent
    meanwhile queue up and are then decoded together."""

    def __init__(self, engine: Engine):
        self.entered, self.open, add = threading.Event(), threading.Event(), engine.decoder.add

        def gated(*a, **k):
            self.entered.set()
            self.open.wait(30)
            return add(*a, **k)

        engine.decoder.add = gated

    def set(self):
        self.open.set()


@pytest.fixture
def gate():
    """gate(engine) -> Gate; every gate is opened after the test."""
    gates = []

    def hold(engine: Engine) -> Gate:
        gates.append(Gate(engine))
        return gates[-1]

    yield hold
    for g in gates:
        g.set()


def batch_sizes(engine: Engine) -> list[int]:
    """Rows in each step from now on."""
    sizes, step = [], engine.decoder.step

    def counted():
        sizes.append(len(engine.decoder.rows))
        return step()

    engine.decoder.step = counted
    return sizes


def together(server: Served, gate_event: Gate, bodies: list[dict]) -> list[httpx.Response]:
    """Send `bodies` while the worker is held at admission (the first is taken, the rest queue),
    then let it go: all are decoded in the same batch."""
    with cf.ThreadPoolExecutor(len(bodies)) as pool:
        futures = [pool.submit(server.post, bodies[0])]
        server.wait(gate_event.entered.is_set, "the first's admission")
        futures += [pool.submit(server.post, b) for b in bodies[1:]]
        server.wait(lambda: len(server.engine.jobs) == len(bodies) - 1, "the rest to queue")
        gate_event.set()
        return [f.result() for f in futures]


# ----- isolation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["boom", "junk"])
def test_a_drafter_failing_for_one_row_fails_that_request_only(serve, gate, fault):
    """Bug: one bad row failed every request in flight (a draft with out-of-range ids raised from
    the batched step). A drafter that raises (boom) or proposes garbage (junk) for one row must
    fail that request alone, with an OpenAI-style 500; the rows beside it finish unchanged."""
    s = serve()
    reference = s_reference(s)
    prompts = [f"{PROMPT} {i}" for i in range(3)]
    alone = {p: s.complete(p).json()["choices"][0]["text"] for p in prompts}
    sizes = batch_sizes(s.engine)
    bodies = [{"prompt": p, "max_tokens": 16, "temperature": 0} for p in prompts]
    bodies.insert(1, {"prompt": f"{fault} {PROMPT}", "max_tokens": 16, "temperature": 0})
    out = together(s, gate(s.engine), bodies)
    assert max(sizes) == 4  # the bad row was in the batch with the others
    bad = out.pop(1)
    assert bad.status_code == 500, bad.text
    err = bad.json()["error"]
    assert err["type"] == "server_error" and ("injected" in err["message"] if fault == "boom" else "id" in err["message"])
    assert [r.status_code for r in out] == [200, 200, 200]
    assert [r.json()["choices"][0]["text"] for r in out] == [alone[p] for p in prompts]
    assert s.engine.restarts == 0  # a row's failure is not the worker's
    s.assert_healthy_and_unchanged(reference)


def s_reference(s: Served) -> str:
    return s.complete().json()["choices"][0]["text"]


@pytest.mark.parametrize("exc", [RuntimeError("injected worker failure"), SystemExit(3)], ids=["RuntimeError", "SystemExit"])
def test_a_worker_exception_fails_in_flight_requests_and_the_worker_restarts(serve, gate, exc):
    """Bug: a worker-thread failure outside a row (e.g. in cleanup after the forward) left the
    server answering /v1/models while every later request hung. Now the requests in flight get an
    error (a 500 JSON body; a started stream an SSE error event, then [DONE]), the worker restarts
    with a fresh loop, queued requests are then served, and the greedy answer is unchanged."""
    s = serve(max_batch=2)
    reference = s_reference(s)
    step, send, texted, failed = s.engine.decoder.step, s.engine._send, threading.Event(), []

    def noting_text(job, item):
        if item[0] == "text" and "streamed" in s.engine.target.tokenizer.decode(job.prompt_ids):
            texted.set()
        send(job, item)

    def failing_step():  # the first step after the stream's first text fails, after its forward and commit
        out = step()
        if texted.is_set() and not failed:
            failed.append(1)
            raise exc
        return out

    s.engine._send, s.engine.decoder.step = noting_text, failing_step
    held = gate(s.engine)
    with cf.ThreadPoolExecutor(3) as pool:
        stream = pool.submit(stream_events, s, {"prompt": f"{PROMPT} streamed", "max_tokens": 60, "temperature": 0})
        s.wait(held.entered.is_set, "the stream's admission")
        plain = pool.submit(s.post, {"prompt": f"{PROMPT} plain", "max_tokens": 60, "temperature": 0})
        s.wait(lambda: len(s.engine.jobs) == 1, "the plain request to queue")
        queued = pool.submit(s.complete)  # no row free (max_batch 2): waits in the queue through the failure
        s.wait(lambda: len(s.engine.jobs) == 2, "the third to queue")
        held.set()
        events, r_plain, r_queued = stream.result(), plain.result(), queued.result()
    assert r_plain.status_code == 500 and "engine failed" in r_plain.json()["error"]["message"], r_plain.text
    assert events[-1] == "[DONE]" and "error" in events[-2] and "engine failed" in events[-2]["error"]["message"]
    assert any("choices" in e for e in events[:-2])  # it had started streaming
    assert r_queued.status_code == 200 and r_queued.json()["choices"][0]["text"] == reference
    assert s.engine.restarts == 1 and s.metric("draftsmith_engine_restarts_total") == 1
    s.assert_healthy_and_unchanged(reference)


def test_a_worker_that_keeps_failing_makes_the_server_unhealthy(serve):
    """Bug guard: a worker failing at every step must not be restarted forever, and must not leave
    /v1/models answering 200. After max_restarts the server reports itself unhealthy: /health and
    /v1/models 503, a request in flight and every later one a clean 503, none hanging."""
    s = serve(max_restarts=1)
    assert s.health().json() == {"status": "ok", "running": 0, "queued": 0, "restarts": 0}

    def broken():
        raise RuntimeError("the target's forward failed")

    s.engine.decoder.step = broken
    first = s.complete()
    assert first.status_code == 500 and "engine failed" in first.json()["error"]["message"]
    second = s.complete()  # the second failure within the window: the engine gives up
    assert second.status_code in (500, 503), second.text
    s.wait(lambda: s.health().status_code == 503, "/health to be 503")
    health = s.health().json()
    assert health["status"] == "unhealthy" and "failed 2 times" in health["reason"]
    models = httpx.get(s.base + "/v1/models", timeout=10)
    assert models.status_code == 503 and models.json()["error"]["type"] == "server_error"
    start = time.time()
    later = s.complete()
    assert later.status_code == 503 and "unhealthy" in later.json()["error"]["message"]
    assert time.time() - start < 5
    assert s.metric("draftsmith_healthy") == 0


def stream_events(s: Served, body: dict, path: str = "/v1/completions") -> list:
    """A streamed request's events: decoded JSON, and the final "[DONE]"."""
    events = []
    with httpx.stream("POST", s.base + path, json={"model": MODEL, "stream": True, **body}, timeout=60) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = line[len("data: "):]
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_a_client_killed_mid_stream_frees_its_row(serve):
    """Bug guard: a client that dies mid-stream (the socket reset, no goodbye) must not keep its
    row decoding to max_tokens; the server stays healthy and the greedy answer unchanged."""
    s = serve()
    reference = s_reference(s)
    body = json.dumps({"model": MODEL, "prompt": f"slow {PROMPT}", "max_tokens": 200, "temperature": 0,
                       "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", s.port))
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    got = b""
    while b"data: " not in got:
        got += sock.recv(4096)
    assert b"200 OK" in got
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
    sock.close()
    # within 5 s: decoding its 200 tokens at 50 ms a step would take 10 s
    s.wait(lambda: s.metric('draftsmith_requests_total{outcome="cancelled"}') >= 1, "the row to be cancelled", 5)
    s.assert_healthy_and_unchanged(reference)


# ----- limits ----------------------------------------------------------------------------------
def test_a_full_queue_answers_429_with_retry_after(serve, gate):
    """Bug: the request queue was unbounded. With one row and a queue of one, a third request is
    refused at once with 429, an OpenAI-style body and Retry-After; the other two are served."""
    s = serve(max_batch=1, max_queue=1)
    held = gate(s.engine)
    with cf.ThreadPoolExecutor(2) as pool:
        first = pool.submit(s.complete)
        s.wait(held.entered.is_set, "the first's admission")
        second = pool.submit(s.complete, f"{PROMPT} two")
        s.wait(lambda: len(s.engine.jobs) == 1, "the second to queue")
        third = s.complete(f"{PROMPT} three")
        held.set()
        assert first.result().status_code == 200 and second.result().status_code == 200
    assert third.status_code == 429, third.text
    assert third.headers["retry-after"] == "1"
    assert third.json()["error"]["code"] == "queue_full" and "queue is full" in third.json()["error"]["message"]
    assert s.metric('draftsmith_requests_total{outcome="rejected"}') == 1
    s.assert_healthy_and_unchanged(first.result().json()["choices"][0]["text"])


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_request_timeout_cancels_the_request_in_the_engine(serve, stream):
    """Bug: there was no request timeout. Past it the request gets a 504-style error (a stream, an
    SSE error event), it is cancelled in the engine (its row freed, outcome "timeout"), and the
    server goes on."""
    s = serve(request_timeout=0.6)
    reference = s_reference(s)
    body = {"prompt": f"slow {PROMPT}", "max_tokens": 200, "temperature": 0}
    start = time.time()
    if stream:
        events = stream_events(s, body)
        assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "timeout"
        assert "request timeout of 0.6 s" in events[-2]["error"]["message"]
    else:
        r = s.post(body)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout", r.text
    assert time.time() - start < 5
    # within 5 s of the start: decoding its 200 tokens at 50 ms a step would take 10 s
    s.wait(lambda: s.metric('draftsmith_requests_total{outcome="timeout"}') == 1, "the row to be dropped",
           5 - (time.time() - start))
    s.assert_healthy_and_unchanged(reference)


def test_first_token_timeout(serve):
    """Bug: a request could wait forever for its first token. With a 0.3 s first-token timeout, a
    row whose prefill takes 1 s gets a 504 at 0.3 s, and is dropped once its prefill ends."""
    s = serve(first_token_timeout=0.3)
    reference = s_reference(s)
    start = time.time()
    r = s.complete(f"sleepy {PROMPT}")
    assert r.status_code == 504 and "first-token timeout of 0.3 s" in r.json()["error"]["message"], r.text
    assert time.time() - start < 0.9
    s.wait(lambda: s.metric('draftsmith_requests_total{outcome="timeout"}') == 1, "the row to be dropped")
    s.assert_healthy_and_unchanged(reference)


def raw_request(port: int, head: bytes, body_parts: list[bytes], wait: float = 10) -> bytes:
    """Send a request by hand (headers, then body parts) and read the answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(head)
        for part in body_parts:
            sock.sendall(part)
        got = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := sock.recv(65536):
                got += chunk
                if b"\r\n\r\n" in got and b"}" in got.split(b"\r\n\r\n", 1)[1]:
                    break
        return got


def test_body_read_timeout(serve):
    """Bug: there was no body-read timeout: a client that declares 100 bytes and sends 10 held the
    request open for ever. It now gets 408 after the body timeout."""
    s = serve(body_timeout=0.5)
    start = time.time()
    got = raw_request(s.port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               b"Content-Length: 100\r\n\r\n", [b'{"model": "'])
    assert got.startswith(b"HTTP/1.1 408"), got[:200]
    assert b"not received within 0.5 s" in got and time.time() - start < 5


def test_chunked_upload_over_the_limit_is_413_without_reading_it_all(serve):
    """Bug: a chunked upload (no Content-Length) was buffered whole before its 413. Over a real
    socket, chunks just past the limit get a 413 while the client could still be sending."""
    s = serve(max_body=1000)
    chunk = b"x" * 400
    parts = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 3  # 1200 bytes, no terminating chunk: more could come
    got = raw_request(s.port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\n", parts)
    assert got.startswith(b"HTTP/1.1 413"), got[:200]
    assert b"over the limit of 1000 bytes" in got


def test_a_200_mib_upload_is_refused_after_the_limit_not_buffered(target):
    """Bug: 200 MiB sent chunked were buffered before the 413 (server memory 891 -> 1248 MiB). At
    the ASGI level, count what the app reads of a 200 MiB body: at most the limit plus one chunk."""
    engine = Engine(target, "none", smartspec=False, max_batch=1)
    try:
        app = create_app(engine, MODEL, "none", max_body=1 << 20)
        piece, total = b"x" * (64 << 10), 200 << 20
        read = {"bytes": 0}
        sent = []

        async def receive():
            read["bytes"] += len(piece)
            return {"type": "http.request", "body": piece, "more_body": read["bytes"] < total}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": "/v1/completions", "raw_path": b"/v1/completions",
                 "query_string": b"", "root_path": "", "headers": [(b"content-type", b"application/json"),
                                                                   (b"transfer-encoding", b"chunked")],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
        asyncio.run(app(scope, receive, send))
        assert sent[0]["status"] == 413
        assert read["bytes"] <= (1 << 20) + len(piece)
        assert b"over the limit" in b"".join(m.get("body", b"") for m in sent)
    finally:
        engine.close()


def test_default_and_limit_of_max_tokens(serve):
    """Bug: a chat request without max_tokens ran to the end of the context (8192 tokens for the
    packaged models). The server's default caps it, and asking over the server's limit is a 400."""
    s = serve(default_max_tokens=5, max_tokens_limit=12)
    chat = s.post({"messages": [{"role": "user", "content": PROMPT}], "temperature": 0}, "/v1/chat/completions")
    assert chat.status_code == 200 and chat.json()["usage"]["completion_tokens"] <= 5, chat.text
    plain = s.post({"prompt": PROMPT, "temperature": 0})
    assert plain.status_code == 200 and plain.json()["usage"]["completion_tokens"] <= 5
    assert s.complete(max_tokens=12).json()["usage"]["completion_tokens"] <= 12
    over = s.complete(max_tokens=13)
    assert over.status_code == 400 and "over this server's limit of 12" in over.json()["error"]["message"]
    assert over.json()["error"]["param"] == "max_tokens"


def test_a_stalled_worker_is_unhealthy_until_it_moves(serve):
    """Bug: /v1/models answered 200 whatever the worker did. A worker stuck in one iteration longer
    than the stall timeout (here a 1 s prefill against 0.3 s) makes /health 503; it is 200 again
    once the worker moves, and the request is answered."""
    s = serve(stall_timeout=0.3)
    with cf.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(s.complete, f"sleepy {PROMPT}")
        s.wait(lambda: s.health().status_code == 503, "/health to be 503", timeout=5)
        assert "has not finished a step" in s.health().json()["reason"]
        assert httpx.get(s.base + "/v1/models", timeout=10).status_code == 503
        assert slow.result().status_code == 200
    s.wait(lambda: s.health().status_code == 200, "/health to be 200 again")


def test_a_request_timing_out_in_the_queue_leaves_it(serve):
    """A request that waits in the queue past its first-token timeout gets its 504 and leaves the
    queue at once (outcome "timeout"), without waiting for a row or ever being prefilled."""
    s = serve(max_batch=1, first_token_timeout=0.5)
    with cf.ThreadPoolExecutor(1) as pool:
        running = pool.submit(s.complete, f"slow {PROMPT}", max_tokens=40)  # about 2 s, in the only row
        s.wait(lambda: len(s.engine.active) == 1, "the first to run")
        start = time.time()
        waiting = s.complete(f"{PROMPT} queued")
        assert waiting.status_code == 504 and "first-token timeout" in waiting.json()["error"]["message"]
        assert time.time() - start < 1.5
        s.wait(lambda: s.metric('draftsmith_requests_total{outcome="timeout"}') == 1 and len(s.engine.jobs) == 0,
               "the queue to drop it", timeout=1)
        assert not running.done()  # it left the queue while the row was still busy
        assert running.result().status_code == 200


# ----- online speculative decoding -------------------------------------------------------------
def test_an_online_drafter_learns_from_served_requests_and_answers_stay_plain(target):
    """Online SD in the server: every finished request is trained on in the background and the
    new weights reach the rows (the metrics count both), while each greedy answer stays the
    plain one. Guards a drafter whose `finish` the engine never calls (nothing learned) and a
    weight swap that changes output."""
    from draftsmith import build_drafter

    lm = tiny_model("llama", vocab=target.vocab_size, seed=1, max_len=256)
    dm = build_drafter("draft_model", model=CausalLM(lm.model), k=4, adaptive=False, confidence=0.0)
    online = Served(Engine(target, build_drafter("online", drafter=dm, lr=1e-2, batch=2, steps_per_row=4),
                           smartspec=False, max_batch=4))
    plain = Served(Engine(target, "none", smartspec=False, max_batch=4))
    try:
        prompts = [PROMPT, "hello world", "a b c d", PROMPT]
        want = [plain.complete(p).json()["choices"][0]["text"] for p in prompts]
        with cf.ThreadPoolExecutor(2) as pool:  # two at a time: rows share steps
            got = list(pool.map(lambda p: online.complete(p).json()["choices"][0]["text"], prompts))
        assert got == want
        online.wait(lambda: online.metric("draftsmith_drafter_rows_learned") == 4, "4 rows learned")
        online.wait(lambda: online.metric("draftsmith_drafter_train_steps") >= 1, "a training step")
        assert online.complete(PROMPT).json()["choices"][0]["text"] == want[0]  # drafted with published weights
        assert online.metric("draftsmith_drafter_updates") >= 1
        assert online.health().status_code == 200
    finally:
        online.close()
        plain.close()


def test_the_engine_is_healthy_as_soon_as_it_is_built_on_a_slow_machine(target, monkeypatch):
    """Bug: /v1/models answered 503 ("the engine worker is restarting") to a request sent right after
    start-up when the supervisor thread had not yet started the first worker (seen once in CI on a
    loaded machine). Delay the supervisor: the built engine must be healthy all the same."""
    real = Engine._supervise

    def slow_supervise(self):
        time.sleep(0.5)
        real(self)

    monkeypatch.setattr(Engine, "_supervise", slow_supervise)
    engine = Engine(target, "none", smartspec=False, max_batch=1)
    try:
        assert engine.health() == (True, "ok")
    finally:
        engine.close()


def test_under_a_memory_budget_a_request_waits_for_memory_and_one_that_never_fits_is_refused(serve, gate, target):
    """SpecMemo's budget in the server (policy/memory.py): with room for one row's context, a
    second request stays queued until the first finishes (both answered, each its own answer);
    a request whose context can never fit gets a 400 naming the numbers, and the server goes on."""
    from draftsmith.policy.memory import plan

    probe = FaultyDrafter(k=4)
    probe.bind(target)
    p = plan(target, probe, 1 << 40)
    tokens = len(target.encode(PROMPT)) + 16  # a request's context
    budget = p.weights + (5 * tokens // 4) * p.per_token + 3 * p.per_node  # one row (+ 2 draft nodes), not two
    s = serve(memory_budget=budget)
    reference = s_reference(s)
    held, sizes = gate(s.engine), batch_sizes(s.engine)
    answers = together(s, held, [{"prompt": PROMPT, "max_tokens": 16, "temperature": 0}] * 2)
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert [a.json()["choices"][0]["text"] for a in answers] == [reference] * 2
    assert set(sizes) == {1}  # queued together, yet never in the batch together (without a budget: 2)
    big = s.complete(max_tokens=200)
    assert big.status_code == 400 and "memory budget leaves room for" in big.text, big.text
    s.assert_healthy_and_unchanged(reference)
