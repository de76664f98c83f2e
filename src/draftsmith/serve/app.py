"""OpenAI-compatible endpoints: /v1/models, /v1/completions, /v1/chat/completions (with
`stream: true` as server-sent events ending `data: [DONE]`; `stream_options.include_usage` adds a
final usage chunk), /health, and /metrics (Prometheus text).

Bad input gets an OpenAI-style error body (`{"error": {"message", "type", "param", "code"}}`)
and a 4xx status: 400 for malformed JSON and invalid or unsupported parameters (including prompt +
max_tokens over the context, `n` > 1, logprobs, non-text content parts), 404 for an unknown model
or route, 408 for a body not received within the body-read timeout, 413 for an oversized body
(counted as it streams in, chunked uploads too: nothing over the limit is buffered), 429 (with
Retry-After) when the request queue is full. A request that fails in the engine gets 500 (only
that request: its row failed alone), one that times out 504 (it is cancelled in the engine, its
row freed), and every request 503 while the engine is unhealthy. A stream that fails after its
first token ends with an SSE error event, then `data: [DONE]`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import generate_latest
from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, ValidationInfo,
                      field_validator)
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..errors import DraftsmithError
from ..types import SamplingParams
from .engine import Engine, EngineUnavailable, Job, QueueFull

MAX_BODY_BYTES = 1 << 20
MAX_STOP = 4  # stop strings per request (OpenAI's limit)
MAX_STOP_CHARS = 256  # characters per stop string
DEFAULT_MAX_TOKENS = 256  # a request without max_tokens gets this many at most (and never more than the room left)
RETRY_AFTER_S = 1  # what a 429 tells the client to wait


def _refuse(error_type: str, message: str, /, **ctx) -> PydanticCustomError:
    return PydanticCustomError(error_type, message, ctx)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: StrictBool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: StrictStr
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: StrictInt | None = Field(default=None, ge=0, lt=2**63)
    stop: tuple[str, ...] = ()
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: StrictInt | None = 1
    logprobs: Any = None
    top_logprobs: Any = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, v):
        """A string or a list of up to MAX_STOP strings, each 1..MAX_STOP_CHARS characters."""
        if v is None:
            return ()
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise _refuse("stop_type", "stop must be a string or a list of strings")
        if len(items) > MAX_STOP:
            raise _refuse("stop_count", "stop takes at most {limit} strings, got {n}", limit=MAX_STOP, n=len(items))
        for s in items:
            if not s:
                raise _refuse("stop_empty", "a stop string must not be empty")
            if len(s) > MAX_STOP_CHARS:
                raise _refuse("stop_length", "a stop string may have at most {limit} characters, got one of {n}",
                              limit=MAX_STOP_CHARS, n=len(s))
        return tuple(items)

    @field_validator("n")
    @classmethod
    def _n(cls, v):
        if v is not None and v != 1:
            raise _refuse("n_unsupported", "only n=1 is supported (one choice per request), got {n}", n=v)
        return 1

    @field_validator("logprobs")
    @classmethod
    def _logprobs(cls, v):
        if v is not None and v is not False:
            raise _refuse("logprobs_unsupported", "logprobs are not supported by this server (leave logprobs out, "
                          "or send null or false)")
        return None

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs(cls, v):
        if v is not None and v != 0:
            raise _refuse("logprobs_unsupported", "top_logprobs is not supported by this server (logprobs are not "
                          "returned)")
        return None

    @field_validator("stream_options")
    @classmethod
    def _stream_options(cls, v, info: ValidationInfo):
        if v is not None and not info.data.get("stream"):
            raise _refuse("stream_options", "stream_options is only allowed with stream: true")
        return v

    @property
    def asked_tokens(self) -> int | None:
        return self.max_tokens


class CompletionRequest(_Common):
    prompt: StrictStr = Field(min_length=1)
    echo: StrictBool = False
    best_of: StrictInt | None = None

    @field_validator("echo")
    @classmethod
    def _echo(cls, v):
        if v:
            raise _refuse("echo_unsupported", "echo is not supported by this server")
        return v

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, v):
        if v is not None and v != 1:
            raise _refuse("best_of_unsupported", "only best_of=1 is supported, got {n}", n=v)
        return v


class Message(BaseModel):
    """A chat message; `content` is a string or OpenAI's content parts (text parts only, joined
    by newlines; `developer` is the system role under its newer name)."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | None = Field(default=None, validate_default=True)

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, v, info: ValidationInfo):
        if v is None and info.data.get("role", "assistant") != "assistant":
            raise _refuse("content_missing", "a {role} message needs content", role=info.data["role"])
        if v is None or isinstance(v, str):
            return v
        if not isinstance(v, list):
            raise _refuse("content_type", "content must be a string or a list of content parts")
        texts = []
        for i, part in enumerate(v):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text":
                raise _refuse("content_part", "content part {i} is of type {kind}: this server takes text only "
                              "(parts of type 'text')", i=i, kind=repr(kind))
            if not isinstance(part.get("text"), str):
                raise _refuse("content_part", "content part {i} (type text) needs a string `text`", i=i)
            texts.append(part["text"])
        return "\n".join(texts)

    def for_template(self) -> dict:
        return {"role": "system" if self.role == "developer" else self.role, "content": self.content or ""}


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)  # the newer name of max_tokens

    @property
    def asked_tokens(self) -> int | None:
        return self.max_tokens if self.max_tokens is not None else self.max_completion_tokens


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def error_response(status: int, message: str, type_: str = "invalid_request_error", param=None, code=None,
                   headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status_code=status,
                        headers=headers)


def _engine_error(message: str, status: int) -> ApiError:
    """An error item from the engine as an API error: 4xx are the request's fault, 5xx the server's."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return ApiError(status, message, kind, code="engine_error" if status == 500 else None)


class _JobStream(StreamingResponse):
    """A stream that cancels its job however it ends (done, client gone, server shutting down)."""

    def __init__(self, content, job: Job, **kw):
        super().__init__(content, **kw)
        self.job = job

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.stop()


def create_app(engine: Engine, model_name: str, drafter_name: str, max_body: int = MAX_BODY_BYTES,
               verifier_name: str = "auto", *, request_timeout: float | None = None,
               first_token_timeout: float | None = None, body_timeout: float | None = 30.0,
               default_max_tokens: int = DEFAULT_MAX_TOKENS, max_tokens_limit: int | None = None) -> FastAPI:
    """The app over `engine`. `verifier_name` is the server-wide acceptance rule as configured
    (`serve --verifier`; "auto" = greedy at temperature 0, rejection sampling otherwise): requests
    keep the OpenAI schema and cannot pick their own; /v1/models names the rule and every usage's
    `speculative.lossless` says whether the output followed the target's distribution.

    Limits (None or 0 = none): `request_timeout` and `first_token_timeout` in seconds from the
    request's arrival (to its end, to its first text); `body_timeout` to receive the whole body;
    `default_max_tokens` for a request that names no max_tokens (capped by the context left);
    `max_tokens_limit`, the most a request may ask for."""
    app = FastAPI(title="draftsmith", docs_url=None, redoc_url=None)
    target = engine.target
    created = int(time.time())
    seeds = secrets.SystemRandom()  # a seed for requests that give none
    request_timeout = request_timeout or None
    first_token_timeout = first_token_timeout or None
    body_timeout = body_timeout or None

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(exc.status_code, str(exc.detail), kind)

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception):  # a bug of ours: still an OpenAI-style body
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")

    def unhealthy() -> ApiError | None:
        ok, why = engine.health()
        return None if ok else ApiError(503, f"the server is unhealthy: {why}", "server_error", code="unhealthy")

    @app.get("/health")
    async def health():
        ok, why = engine.health()
        body = {"status": "ok" if ok else "unhealthy", "running": len(engine.active), "queued": len(engine.jobs),
                "restarts": engine.restarts}
        if not ok:
            body["reason"] = why
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def models():
        if (exc := unhealthy()) is not None:
            raise exc
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "draftsmith", "drafter": drafter_name,
                                            "verifier": verifier_name, "lossless": engine.lossless}]}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(generate_latest(engine.metrics.registry).decode(), media_type="text/plain; version=0.0.4")

    async def read_body(request: Request) -> bytes:
        """The body, counted as it arrives: over `max_body` bytes stops reading at once (413), a body
        not complete within `body_timeout` is a 408."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body:
            raise ApiError(413, f"request body of {declared} bytes is over the limit of {max_body}")
        body = bytearray()
        timer = asyncio.timeout(body_timeout) if body_timeout else contextlib.nullcontext()
        try:
            async with timer:
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > max_body:
                        raise ApiError(413, f"request body is over the limit of {max_body} bytes (stopped reading "
                                       f"at {len(body)})")
        except TimeoutError:
            raise ApiError(408, f"the request body was not received within {body_timeout:g} s ({len(body)} bytes "
                           "came)", code="body_timeout") from None
        except ClientDisconnect:
            raise ApiError(400, "the client disconnected while sending the body") from None
        return bytes(body)

    async def parse(request: Request, schema: type[BaseModel]):
        body = await read_body(request)
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"malformed JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object")
        try:
            req = schema.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = [str(p) for p in first["loc"] if not str(p).startswith("function-")]
            param = ".".join(loc) or None
            raise ApiError(400, f"{param}: {first['msg']}" if param else first["msg"], param=param) from None
        if req.model != model_name:
            raise ApiError(404, f"model {req.model!r} does not exist; this server serves {model_name!r}",
                           "not_found_error", "model", "model_not_found")
        return req

    def sampling(req: _Common, prompt_ids: list[int]) -> SamplingParams:
        room = target.max_length - len(prompt_ids)
        asked = req.asked_tokens
        if room < 1:
            raise ApiError(400, f"the prompt ({len(prompt_ids)} tokens) fills the model's context of "
                           f"{target.max_length} tokens", param="prompt", code="context_length_exceeded")
        if asked is not None and max_tokens_limit is not None and asked > max_tokens_limit:
            raise ApiError(400, f"max_tokens ({asked}) is over this server's limit of {max_tokens_limit}",
                           param="max_tokens")
        if asked is not None and asked > room:
            raise ApiError(400, f"prompt ({len(prompt_ids)} tokens) + max_tokens ({asked}) is over the "
                           f"model's context of {target.max_length} tokens", param="max_tokens",
                           code="context_length_exceeded")
        try:
            return SamplingParams(temperature=req.temperature, top_p=req.top_p, stop=req.stop,
                                  max_new_tokens=asked if asked is not None else min(room, default_max_tokens))
        except (DraftsmithError, ValueError) as exc:
            raise ApiError(400, str(exc)) from None

    def encode(prompt: str | list[dict], param: str) -> list[int]:
        """A completion prompt (plain text, no chat template) or chat messages -> ids."""
        from jinja2 import TemplateError

        try:
            return target.encode(prompt, chat=False if isinstance(prompt, str) else None)
        except (DraftsmithError, TemplateError) as exc:  # e.g. an empty prompt, a template that wants alternating roles
            raise ApiError(400, f"{type(exc).__name__}: {exc}" if isinstance(exc, TemplateError) else str(exc),
                           param=param) from None

    class Waiter:
        """The job's next item, within the first-token and request deadlines (504 past them, the
        job cancelled), watching for a client that left (non-streaming) and a dead engine (503)."""

        def __init__(self, job: Job, start: float):
            self.job, self.first_seen = job, False
            self.first_deadline = start + first_token_timeout if first_token_timeout else None
            self.deadline = start + request_timeout if request_timeout else None

        def _due(self) -> tuple[float | None, str]:
            """The next deadline and what passing it means."""
            first = None if self.first_seen else self.first_deadline
            if first is not None and (self.deadline is None or first <= self.deadline):
                return first, f"no first token within the first-token timeout of {first_token_timeout:g} s"
            if self.deadline is None:
                return None, ""
            return self.deadline, f"the request did not finish within the request timeout of {request_timeout:g} s"

        async def next(self, request: Request | None = None):
            checked = time.monotonic()
            while True:
                try:
                    item = self.job.out.get_nowait()
                except asyncio.QueueEmpty:
                    item = None
                if item is not None:
                    self.first_seen = True
                    return item
                deadline, why = self._due()
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    self.job.stop("timeout")
                    raise ApiError(504, why, "server_error", code="timeout")
                wait = 0.5 if deadline is None else min(0.5, deadline - now)
                try:
                    item = await asyncio.wait_for(self.job.out.get(), timeout=wait)
                    self.first_seen = True
                    return item
                except asyncio.TimeoutError:
                    pass
                if request is not None and time.monotonic() - checked >= 0.5:
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        self.job.stop()
                        raise ApiError(499, "client disconnected")
                if not engine.alive and self.job.out.empty():
                    raise unhealthy() or ApiError(503, "the server is shutting down", "server_error")

    async def run(request: Request, req: _Common, prompt_ids: list[int], chat: bool, start: float):
        params = sampling(req, prompt_ids)
        loop = asyncio.get_running_loop()
        job = Job(prompt_ids, params, req.seed if req.seed is not None else seeds.randrange(2**63), loop, asyncio.Queue())
        try:
            engine.submit(job)
        except QueueFull as exc:
            raise ApiError(429, str(exc), "rate_limit_error", code="queue_full",
                           headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        except EngineUnavailable as exc:
            raise ApiError(503, f"the server is unhealthy: {exc}", "server_error", code="unhealthy") from None
        waiter = Waiter(job, start)
        rid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        kind = "chat.completion" if chat else "text_completion"
        try:
            first = await waiter.next(request)  # before the stream starts: errors so far get their status
            if first[0] == "error":
                raise _engine_error(first[1], first[2])
        except BaseException:
            job.stop()
            raise
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _JobStream(sse(job, waiter, first, rid, kind, chat, len(prompt_ids), include_usage), job,
                              media_type="text/event-stream")
        text = []
        try:
            item = first
            while item[0] == "text":
                text.append(item[1])
                item = await waiter.next(request)
            if item[0] == "error":
                raise _engine_error(item[1], item[2])
            result = item[1]
        finally:
            job.stop()  # a no-op once done; frees the worker if we leave early
        body = "".join(text)
        choice = ({"index": 0, "message": {"role": "assistant", "content": body}} if chat
                  else {"index": 0, "text": body, "logprobs": None})
        choice["finish_reason"] = result.stats.finish_reason
        return {"id": rid, "object": kind, "created": int(time.time()), "model": model_name,
                "choices": [choice], "usage": usage(result, len(prompt_ids))}

    async def sse(job: Job, waiter: Waiter, first, rid: str, kind: str, chat: bool, prompt_tokens: int,
                  include_usage: bool):
        kind = kind + ".chunk" if chat else kind

        def chunk(choices: list, extra: dict | None = None) -> str:
            data = {"id": rid, "object": kind, "created": int(time.time()), "model": model_name, "choices": choices}
            if include_usage:
                data["usage"] = None  # as OpenAI: null in every chunk but the last
            return f"data: {json.dumps({**data, **(extra or {})})}\n\n"

        def event(delta: dict, finish: str | None = None, extra: dict | None = None) -> str:
            """One chunk; `delta` is the chat delta (a completion chunk carries its content as text)."""
            if chat:
                choice = {"index": 0, "delta": delta, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": delta.get("content", ""), "logprobs": None, "finish_reason": finish}
            return chunk([choice], extra)

        def error_event(exc: ApiError) -> str:
            return f"data: {json.dumps(exc.body())}\n\n"

        try:
            if chat:
                yield event({"role": "assistant", "content": ""})
            item = first
            while True:
                if item[0] == "text":
                    yield event({"content": item[1]})
                elif item[0] == "error":
                    yield error_event(_engine_error(item[1], item[2]))
                    break
                else:
                    result = item[1]
                    if include_usage:  # the finish chunk, then one with no choices and the usage
                        yield event({}, result.stats.finish_reason)
                        yield chunk([], {"usage": usage(result, prompt_tokens)})
                    else:
                        yield event({}, result.stats.finish_reason, {"usage": usage(result, prompt_tokens)})
                    break
                try:
                    item = await waiter.next()
                except ApiError as exc:  # timed out, or the engine gave up
                    yield error_event(exc)
                    break
            yield "data: [DONE]\n\n"
        finally:
            job.stop()  # the client went away (or we are done): free the worker

    def usage(result, prompt_tokens: int) -> dict:
        s = result.stats
        return {"prompt_tokens": prompt_tokens, "completion_tokens": s.new_tokens,
                "total_tokens": prompt_tokens + s.new_tokens,
                "speculative": {"steps": s.steps, "drafted_tokens": s.drafted, "accepted_tokens": s.accepted,
                                "tau": round(s.tau, 4), "acceptance_rate": round(s.acceptance_rate, 4),
                                "lossless": s.lossless}}

    async def admit(request: Request):
        """The request's arrival time; 503 at once while the engine cannot take work."""
        start = time.monotonic()
        if not engine.alive:
            raise unhealthy() or ApiError(503, "the server is shutting down", "server_error")
        return start

    @app.post("/v1/completions")
    async def completions(request: Request):
        start = await admit(request)
        req = await parse(request, CompletionRequest)
        return await run(request, req, encode(req.prompt, "prompt"), chat=False, start=start)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        start = await admit(request)
        req = await parse(request, ChatRequest)
        if not target.has_chat_template:
            raise ApiError(400, f"{model_name} has no chat template: use /v1/completions")
        return await run(request, req, encode([m.for_template() for m in req.messages], "messages"), chat=True,
                         start=start)

    return app
