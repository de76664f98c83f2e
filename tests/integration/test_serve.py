"""The OpenAI-compatible server, as a real process on 127.0.0.1 serving a tiny random model
(fp32, greedy unless said): the official `openai` client for the API, raw HTTP for malformed
requests, cancellation, metrics and a bounded load test."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import tiny_model, tiny_tokenizer

MODEL = "tiny"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve") / "target"
    tok = tiny_tokenizer()
    lm = tiny_model("llama", vocab=len(tok), seed=5, eos=tok.eos_token_id)
    lm.model.save_pretrained(folder)
    tok.save_pretrained(folder)
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "draftsmith.cli", "serve", "--model", str(folder), "--served-name", MODEL,
                             "--dtype", "fp32", "--drafter", "ngram:k=4", "--port", str(port), "--threads", "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            if httpx.get(f"{base}/v1/models", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"server did not start: {proc.stdout.read()[-2000:]}")
        time.sleep(0.3)
    yield base
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)


PROMPTS = ["the quick brown fox", "hello world, this is", "speculative decoding drafts", "the lazy dog jumps"]


def complete(client, prompt, **kw):
    kw = {"max_tokens": 24, "temperature": 0, **kw}
    return client.completions.create(model=MODEL, prompt=prompt, **kw)


def stream_text(client, prompt, **kw):
    kw = {"max_tokens": 24, "temperature": 0, **kw}
    return "".join(c.choices[0].text for c in client.completions.create(model=MODEL, prompt=prompt, stream=True, **kw))


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_completion_stream_equals_non_stream(client):
    full = complete(client, PROMPTS[0])
    assert full.choices[0].text and full.usage.completion_tokens == 24
    spec = full.usage.model_extra["speculative"]
    assert spec["steps"] <= 24 and spec["accepted_tokens"] + spec["steps"] == 24
    assert stream_text(client, PROMPTS[0]) == full.choices[0].text


def test_chat_stream_equals_non_stream(client):
    messages = [{"role": "user", "content": "the quick brown fox"}]
    full = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0)
    chunks = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content and full.choices[0].finish_reason in ("stop", "length")


def test_vanishing_temperature_is_greedy(client):
    assert complete(client, PROMPTS[0], temperature=1e-40).choices[0].text == complete(client, PROMPTS[0]).choices[0].text


def test_seed_reproduces_sampling(client):
    a = complete(client, PROMPTS[1], temperature=1.0, seed=7).choices[0].text
    b = complete(client, PROMPTS[1], temperature=1.0, seed=7).choices[0].text
    assert a == b


def test_sixteen_concurrent_streams_each_equal_their_single_output(server, client):
    prompts = [f"{PROMPTS[i % 4]} {i}" for i in range(16)]
    alone = {p: complete(client, p, max_tokens=16).choices[0].text for p in prompts}
    single_steps = metric(server, "draftsmith_step_batch_size_count")
    with cf.ThreadPoolExecutor(16) as pool:
        together = dict(zip(prompts, pool.map(lambda p: stream_text(client, p, max_tokens=16), prompts)))
    assert together == alone
    # they were decoded together: fewer target steps than running them one by one would take
    batched_steps = metric(server, "draftsmith_step_batch_size_count") - single_steps
    assert metric(server, 'draftsmith_step_batch_size_bucket{le="1.0"}') < metric(server, "draftsmith_step_batch_size_count")
    assert batched_steps < 16 * 16


def metric(server, name) -> float:
    for line in httpx.get(f"{server}/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_cancelled_stream_frees_the_worker(server, client):
    body = {"model": MODEL, "prompt": PROMPTS[2], "max_tokens": 400, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server}/v1/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break  # one chunk, then hang up
    deadline = time.time() + 30
    while metric(server, 'draftsmith_requests_total{outcome="cancelled"}') < 1:
        assert time.time() < deadline, "the cancelled request was not released"
        time.sleep(0.2)
    assert metric(server, "draftsmith_running") == 0
    assert complete(client, PROMPTS[3], max_tokens=4).usage.completion_tokens == 4


@pytest.mark.parametrize("body, status, needle", [
    (b"{not json", 400, "malformed JSON"),
    (b"[1, 2]", 400, "JSON object"),
    ({"model": MODEL, "prompt": 42}, 400, "prompt"),
    ({"model": MODEL, "prompt": ""}, 400, "prompt"),
    ({"model": MODEL, "prompt": "   "}, 400, "empty"),
    ({"model": "gpt-9", "prompt": "hi"}, 404, "does not exist"),
    ({"model": MODEL, "prompt": "hi", "temperature": 3}, 400, "temperature"),
    ({"model": MODEL, "prompt": "hi", "top_p": 0}, 400, "top_p"),
    ({"model": MODEL, "prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ({"model": MODEL, "prompt": "hi", "max_tokens": 100000}, 400, "context"),
    ({"model": MODEL, "prompt": "hi", "n": 2}, 400, "n"),
    ({"model": MODEL}, 400, "prompt"),
    ({"model": MODEL, "prompt": "hi", "seed": 2**64}, 400, "seed"),
    ({"model": MODEL, "prompt": "hi", "seed": -1}, 400, "seed"),
    ({"model": MODEL, "prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"model": MODEL, "prompt": "hi " * 400_000}, 413, "over the limit"),
])
def test_bad_requests_get_openai_style_4xx(server, body, status, needle):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(f"{server}/v1/completions", content=content, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["type"]


def test_bad_chat_requests_and_routes(server):
    r = httpx.post(f"{server}/v1/chat/completions", json={"model": MODEL, "messages": []}, timeout=30)
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
    r = httpx.post(f"{server}/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "robot", "content": "x"}]})
    assert r.status_code == 400
    r = httpx.get(f"{server}/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_metrics_are_prometheus_text(server, client):
    complete(client, PROMPTS[0], max_tokens=8)
    text = httpx.get(f"{server}/metrics").text
    for name in ("draftsmith_requests_total", "draftsmith_generated_tokens_total", "draftsmith_tau",
                 "draftsmith_acceptance_rate", "draftsmith_queue_depth", "draftsmith_tokens_per_second"):
        assert name in text
    assert metric(server, "draftsmith_tau") >= 1.0


def test_bounded_load(client):
    """24 requests from 4 clients, at most 120 s: every one completes with its full length."""
    start = time.time()
    with cf.ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda i: complete(client, f"{PROMPTS[i % 4]} {i}", max_tokens=12, temperature=1.0, seed=i),
                             range(24), timeout=120))
    assert time.time() - start < 120
    assert all(o.usage.completion_tokens == 12 or o.choices[0].finish_reason == "stop" for o in outs)


def test_serving_benchmark_runs_and_reports(tmp_path):
    from draftsmith.bench.serving import long_prompt_text, run_serving_bench, write_report

    folder = tmp_path / "target"
    tok = tiny_tokenizer()
    tiny_model("llama", vocab=len(tok), seed=5, eos=tok.eos_token_id).model.save_pretrained(folder)
    tok.save_pretrained(folder)
    long = long_prompt_text(["the quick brown fox", "hello world"], 200, tok)
    rows = run_serving_bench(str(folder), ["none", "ngram:k=4"], ["the quick brown fox", "hello world"], [1, 2],
                             max_tokens=8, requests_per_client=1, rounds=2, dtype="fp32", threads=1,
                             long_prompt=long, long_prompt_at=[2], progress=lambda _: None)
    assert [(r["method"], r["concurrency"]) for r in rows] == [("none", 1), ("none", 2), ("ngram:k=4", 1), ("ngram:k=4", 2)]
    assert all(r["tokens_per_s"] > 0 and r["ttft_p50"] <= r["ttft_p99"] for r in rows)
    assert [r["requests"] for r in rows] == [4, 4, 4, 4]  # 2 rounds of max(2, 1 × clients) requests
    assert [r["answered"] for r in rows] == [4, 4, 4, 4] and not any(r["refused"] + r["failed"] + r["hung"] for r in rows)
    probed = [r for r in rows if "long_ttft_ratio" in r]
    assert [r["concurrency"] for r in probed] == [2, 2]  # only where asked
    assert all(r["long_prompt_tokens"] >= 200 and r["long_answered"] == 6 for r in probed)  # 2 rounds x (2 + the long one)
    write_report(rows, tmp_path / "out", "cmd", "header")
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| ngram:k=4 | 2 | 4 | 4 | 0 / 0 / 0 |" in report and "arriving mid-run" in report


def test_serving_benchmark_counts_refused_broken_and_hung_requests_instead_of_stopping(monkeypatch):
    """Guards: one 429 or a dropped stream raised out of the benchmark and lost the whole run, and a
    request that never answered hung it."""
    import asyncio

    import httpx

    from draftsmith.bench.serving import _level, summarize

    done = "data: [DONE]\n\n"
    chunk = 'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n'
    usage = 'data: {"choices": [], "usage": {"completion_tokens": 1, "prompt_tokens": 3}}\n\n'

    async def handler(request: httpx.Request) -> httpx.Response:
        prompt = json.loads(request.content)["messages"][0]["content"]
        if prompt == "full":
            return httpx.Response(429, json={"error": {"message": "queue full"}})
        if prompt == "broken":
            return httpx.Response(200, text=chunk)  # no [DONE]
        if prompt == "slow":
            await asyncio.sleep(30)
        return httpx.Response(200, text=chunk + usage + done)

    transport = httpx.MockTransport(handler)
    real = httpx.AsyncClient

    class Mocked(real):
        def __init__(self, *a, **kw):
            kw.pop("limits", None)
            super().__init__(*a, transport=transport, **kw)

    monkeypatch.setattr(httpx, "AsyncClient", Mocked)
    level = asyncio.run(_level("http://x", ["ok", "full", "broken", "slow"], 2, 4, 4, timeout=1.0))

    row = summarize(level)
    assert (row["answered"], row["refused"], row["failed"], row["hung"]) == (1, 1, 1, 1)
    assert row["requests"] == 4 and level["tokens"] == 1


# ----- OpenAI compatibility, through the official client (issue 21) -------------------------------
def test_health_is_ok(server):
    """GET /health: 200 {"status": "ok"} while the engine worker is alive (503 otherwise: test_serve_faults)."""
    r = httpx.get(f"{server}/health", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_content_parts_equal_plain_content(client):
    """Bug: OpenAI's content-parts form ([{"type": "text", "text": ...}]) was refused with a 400.
    Text parts are joined by newlines, as vLLM does: the answer equals the plain string's."""
    plain = client.chat.completions.create(model=MODEL, max_tokens=12, temperature=0,
                                           messages=[{"role": "user", "content": "the quick\nbrown fox"}])
    parts = client.chat.completions.create(model=MODEL, max_tokens=12, temperature=0, messages=[
        {"role": "user", "content": [{"type": "text", "text": "the quick"}, {"type": "text", "text": "brown fox"}]}])
    assert parts.choices[0].message.content == plain.choices[0].message.content
    assert parts.usage.prompt_tokens == plain.usage.prompt_tokens


def test_non_text_content_parts_are_refused_clearly(client):
    """An image part is refused with a 400 that says text only (not a 500, not silently dropped)."""
    import openai

    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])
    assert "content part 1 is of type 'image_url'" in str(exc.value) and "text only" in str(exc.value)


def test_a_single_stop_string_longer_than_four_characters(client):
    """Bug: a single `stop` string longer than 4 characters got a 400 (the 4-items limit counted
    its characters). A 5-character stop string taken from the greedy answer ends it there."""
    full = complete(client, PROMPTS[0], max_tokens=24).choices[0].text
    start = next(i for i in range(3, len(full) - 5) if "\ufffd" not in full[i:i + 5] and full[i:i + 5] not in full[:i + 4])
    stop = full[start:start + 5]
    out = complete(client, PROMPTS[0], max_tokens=24, stop=stop)
    assert out.choices[0].text == full[:start] and out.choices[0].finish_reason == "stop"
    listed = complete(client, PROMPTS[0], max_tokens=24, stop=["zzzzzzzz", stop, "qqqqqqq", "xxxxxxxxxx"])
    assert listed.choices[0].text == full[:start]


def test_stop_limits(client):
    """Up to 4 stop strings of at most 256 characters each; more is a clear 400."""
    import openai

    with pytest.raises(openai.BadRequestError, match="at most 4 strings, got 5"):
        complete(client, PROMPTS[0], stop=["a", "b", "c", "d", "e"])
    with pytest.raises(openai.BadRequestError, match="at most 256 characters"):
        complete(client, PROMPTS[0], stop="x" * 257)
    with pytest.raises(openai.BadRequestError, match="must not be empty"):
        complete(client, PROMPTS[0], stop=[""])


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_stream_options_include_usage(client, chat):
    """Bug: `stream_options.include_usage` was ignored. With it, the stream ends with a chunk that
    has no choices and the usage (the speculative stats too); every other chunk has usage null."""
    kw = {"model": MODEL, "max_tokens": 10, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    if chat:
        chunks = list(client.chat.completions.create(messages=[{"role": "user", "content": PROMPTS[1]}], **kw))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        chunks = list(client.completions.create(prompt=PROMPTS[1], **kw))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == 10
    assert last.usage.model_extra["speculative"]["steps"] >= 1
    assert all(c.usage is None for c in chunks[:-1]) and chunks[-2].choices[0].finish_reason == "length"
    assert text


def test_stream_options_without_stream_is_refused(server):
    r = httpx.post(f"{server}/v1/completions", json={"model": MODEL, "prompt": "hi", "stream_options": {"include_usage": True}})
    assert r.status_code == 400 and "only allowed with stream: true" in r.json()["error"]["message"]


def test_logprobs_and_n_are_refused_clearly(client):
    """logprobs are not returned and n > 1 is not supported: each is a 400 that says so (a client
    must not get an answer without what it asked for)."""
    import openai

    with pytest.raises(openai.BadRequestError, match="logprobs are not supported"):
        complete(client, PROMPTS[0], logprobs=2)
    with pytest.raises(openai.BadRequestError, match="logprobs are not supported"):
        client.chat.completions.create(model=MODEL, max_tokens=4, logprobs=True, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="top_logprobs is not supported"):
        client.chat.completions.create(model=MODEL, max_tokens=4, top_logprobs=2, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="only n=1 is supported"):
        complete(client, PROMPTS[0], n=2)
    with pytest.raises(openai.BadRequestError, match="only n=1 is supported"):
        client.chat.completions.create(model=MODEL, max_tokens=4, n=3, messages=[{"role": "user", "content": "hi"}])
    # logprobs false / null and n=1 are what clients send by default: accepted
    assert complete(client, PROMPTS[0], max_tokens=3, n=1).usage.completion_tokens == 3
    chat = client.chat.completions.create(model=MODEL, max_tokens=3, logprobs=False, messages=[{"role": "user", "content": "hi"}])
    assert chat.choices[0].finish_reason in ("length", "stop")


def test_max_completion_tokens_and_the_default(client):
    """`max_completion_tokens` (the newer name) is honoured; a chat request that names neither gets
    the server's default (256 here), not the rest of the context."""
    out = client.chat.completions.create(model=MODEL, max_completion_tokens=5, temperature=0,
                                         messages=[{"role": "user", "content": PROMPTS[2]}])
    assert out.usage.completion_tokens <= 5
    out = client.chat.completions.create(model=MODEL, temperature=0, messages=[{"role": "user", "content": PROMPTS[2]}])
    assert out.usage.completion_tokens <= 256


def test_vanishing_top_p_is_greedy(client):
    """Bug: top_p=1e-300 at temperature 1 gave a 500 (the probabilities underflowed). It keeps the
    most likely token only, so the answer is the greedy one."""
    out = complete(client, PROMPTS[0], temperature=1.0, top_p=1e-300, seed=3)
    assert out.choices[0].text == complete(client, PROMPTS[0]).choices[0].text
