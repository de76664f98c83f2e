"""OpenAI-compatible endpoints: /v1/models, /v1/completions, /v1/chat/completions (with
`stream: true` as server-sent events ending `data: [DONE]`), and /metrics (Prometheus text).

Bad input gets an OpenAI-style error body (`{"error": {"message", "type", "param", "code"}}`)
and a 4xx status: 400 for malformed JSON and invalid parameters (including prompt + max_tokens
over the context), 404 for an unknown model or route, 413 for an oversized body."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import generate_latest
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import DraftsmithError
from ..types import SamplingParams
from .engine import Engine, Job

MAX_BODY_BYTES = 1 << 20


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: StrictStr
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: StrictInt | None = Field(default=None, ge=0, lt=2**63)
    stop: StrictStr | list[StrictStr] | None = Field(default=None, max_length=4)
    stream: StrictBool = False
    n: Literal[1] = 1


class CompletionRequest(_Common):
    prompt: StrictStr = Field(min_length=1)


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: StrictStr


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


def error_response(status: int, message: str, type_: str = "invalid_request_error", param=None, code=None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status_code=status)


def create_app(engine: Engine, model_name: str, drafter_name: str, max_body: int = MAX_BODY_BYTES,
               verifier_name: str = "auto") -> FastAPI:
    """The app over `engine`. `verifier_name` is the server-wide acceptance rule as configured
    (`serve --verifier`; "auto" = greedy at temperature 0, rejection sampling otherwise): requests
    keep the OpenAI schema and cannot pick their own; /v1/models names the rule and every usage's
    `speculative.lossless` says whether the output followed the target's distribution."""
    app = FastAPI(title="draftsmith", docs_url=None, redoc_url=None)
    target = engine.target
    created = int(time.time())
    seeds = secrets.SystemRandom()  # a seed for requests that give none

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.type, exc.param, exc.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(exc.status_code, str(exc.detail), kind)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "draftsmith", "drafter": drafter_name,
                                            "verifier": verifier_name, "lossless": engine.lossless}]}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(generate_latest(engine.metrics.registry).decode(), media_type="text/plain; version=0.0.4")

    async def parse(request: Request, schema: type[BaseModel]):
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body:
            raise ApiError(413, f"request body of {declared} bytes is over the limit of {max_body}")
        body = await request.body()
        if len(body) > max_body:
            raise ApiError(413, f"request body of {len(body)} bytes is over the limit of {max_body}")
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
            param = ".".join(str(p) for p in first["loc"])
            raise ApiError(400, f"{param}: {first['msg']}", param=param) from None
        if req.model != model_name:
            raise ApiError(404, f"model {req.model!r} does not exist; this server serves {model_name!r}",
                           "not_found_error", "model", "model_not_found")
        return req

    def sampling(req: _Common, prompt_ids: list[int]) -> SamplingParams:
        room = target.max_length - len(prompt_ids)
        if req.max_tokens is not None and req.max_tokens > room:
            raise ApiError(400, f"prompt ({len(prompt_ids)} tokens) + max_tokens ({req.max_tokens}) is over the "
                           f"model's context of {target.max_length} tokens", param="max_tokens",
                           code="context_length_exceeded")
        if room < 1:
            raise ApiError(400, f"the prompt ({len(prompt_ids)} tokens) fills the model's context of "
                           f"{target.max_length} tokens", param="prompt", code="context_length_exceeded")
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        try:
            return SamplingParams(temperature=req.temperature, top_p=req.top_p, stop=stop,
                                  max_new_tokens=req.max_tokens or (min(room, 16) if isinstance(req, CompletionRequest) else room))
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

    async def run(request: Request, req: _Common, prompt_ids: list[int], chat: bool):
        params = sampling(req, prompt_ids)
        loop = asyncio.get_running_loop()
        job = Job(prompt_ids, params, req.seed if req.seed is not None else seeds.randrange(2**63), loop, asyncio.Queue())
        engine.submit(job)
        rid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        kind = "chat.completion" if chat else "text_completion"
        if req.stream:
            return StreamingResponse(sse(job, rid, kind, chat, len(prompt_ids)), media_type="text/event-stream")
        text = []
        checked = time.monotonic()
        try:
            while True:
                try:
                    item = await asyncio.wait_for(job.out.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    item = None
                if time.monotonic() - checked >= 0.5:  # on a timer: items may arrive every step
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        job.cancel.set()
                        return error_response(499, "client disconnected")
                if item is None:
                    continue
                if item[0] == "text":
                    text.append(item[1])
                elif item[0] == "error":
                    return error_response(500, item[1], "server_error")
                else:
                    result = item[1]
                    break
        finally:
            job.cancel.set()  # a no-op once done; frees the worker if we leave early
        body = "".join(text)
        choice = ({"index": 0, "message": {"role": "assistant", "content": body}} if chat
                  else {"index": 0, "text": body, "logprobs": None})
        choice["finish_reason"] = result.stats.finish_reason
        return {"id": rid, "object": kind, "created": int(time.time()), "model": model_name,
                "choices": [choice], "usage": usage(result, len(prompt_ids))}

    async def sse(job: Job, rid: str, kind: str, chat: bool, prompt_tokens: int):
        kind = kind + ".chunk" if chat else kind

        def event(delta: dict, finish: str | None = None, extra: dict | None = None) -> str:
            """One chunk; `delta` is the chat delta (a completion chunk carries its content as text)."""
            if chat:
                choice = {"index": 0, "delta": delta, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": delta.get("content", ""), "logprobs": None, "finish_reason": finish}
            data = {"id": rid, "object": kind, "created": int(time.time()), "model": model_name, "choices": [choice], **(extra or {})}
            return f"data: {json.dumps(data)}\n\n"

        try:
            if chat:
                yield event({"role": "assistant", "content": ""})
            while True:
                item = await job.out.get()
                if item[0] == "text":
                    yield event({"content": item[1]})
                elif item[0] == "error":
                    yield f"data: {json.dumps({'error': {'message': item[1], 'type': 'server_error'}})}\n\n"
                    break
                else:
                    result = item[1]
                    yield event({}, result.stats.finish_reason, {"usage": usage(result, prompt_tokens)})
                    break
            yield "data: [DONE]\n\n"
        finally:
            job.cancel.set()  # the client went away (or we are done): free the worker

    def usage(result, prompt_tokens: int) -> dict:
        s = result.stats
        return {"prompt_tokens": prompt_tokens, "completion_tokens": s.new_tokens,
                "total_tokens": prompt_tokens + s.new_tokens,
                "speculative": {"steps": s.steps, "drafted_tokens": s.drafted, "accepted_tokens": s.accepted,
                                "tau": round(s.tau, 4), "acceptance_rate": round(s.acceptance_rate, 4),
                                "lossless": s.lossless}}

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = await parse(request, CompletionRequest)
        return await run(request, req, encode(req.prompt, "prompt"), chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = await parse(request, ChatRequest)
        if not target.has_chat_template:
            raise ApiError(400, f"{model_name} has no chat template: use /v1/completions")
        return await run(request, req, encode([m.model_dump() for m in req.messages], "messages"), chat=True)

    return app
