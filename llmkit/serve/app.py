"""The OpenAI-compatible HTTP API and the playground, on FastAPI, over one loaded model.

Routes: ``GET /`` (playground.html), ``GET /health``, ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (both streamed as server-sent events with ``"stream": true``) and
``POST /v1/explain`` (the playground's next-token panel; llmkit's own). Every request is decoded by
one ``Batcher`` (llmkit.inference.batcher), so concurrent requests share decoding steps.

Per request: API key (when set) -> body read up to ``max_body`` bytes -> pydantic validation ->
model name -> prompt tokens -> GenerationConfig (its own checks) -> context window -> one batcher
request per choice (``n``) -> tokens back through an asyncio queue. Every failure is a 4xx JSON
error in OpenAI's shape; a client that disconnects cancels its requests, freeing their rows.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from torch import nn

from llmkit.config import GenerationConfig
from llmkit.errors import LlmkitError
from llmkit.inference.batcher import Batcher, TokenEvent
from llmkit.inference.batcher import Request as BatchRequest
from llmkit.inference.explain import explain, token_text
from llmkit.serve.chat import ChatTemplate
from llmkit.serve.schemas import ChatRequest, CompletionRequest, ExplainRequest, Sampling, error_body

PLAYGROUND = Path(__file__).with_name("playground.html")
DISCONNECT_POLL = 0.25  # seconds between checks that a non-streaming client is still there
FINISH = {"eos": "stop", "stop": "stop", "length": "length"}  # ours -> OpenAI's finish_reason


@dataclass
class ServeSettings:
    """What the operator chooses (CLI flags); nothing here can be set by a request."""

    name: str  # the model id clients must send
    api_key: str | None = None
    max_batch: int = 8
    max_tokens: int = 1024  # the most new tokens one request may ask for
    max_body: int = 1 << 20  # bytes
    chat: ChatTemplate = field(default_factory=ChatTemplate)
    request_log: bool = False  # one stderr line per request (llmkit serve turns it on; --quiet off)


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def create_app(model: nn.Module, settings: ServeSettings) -> FastAPI:
    """The app for ``model`` (with a tokenizer); the batcher thread runs while the app does."""
    if getattr(model, "tokenizer", None) is None:
        raise LlmkitError("serving needs a tokenizer and this checkpoint has none", "save the model with its tokenizer")
    batcher = Batcher(model, settings.max_batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        batcher.close()

    app = FastAPI(title="llmkit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher  # tests and the load benchmark read batcher.step_sizes
    server = _Server(model, settings, batcher)

    if settings.request_log:
        app.middleware("http")(_log_request)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(error_body(err.message, _kind(err.status), err.param, err.code), status_code=err.status)

    @app.exception_handler(404)
    async def _not_found(request: Request, err: Exception) -> JSONResponse:
        return JSONResponse(error_body(f"no route {request.url.path}", code="not_found"), status_code=404)

    @app.exception_handler(405)
    async def _bad_method(request: Request, err: Exception) -> JSONResponse:
        message = f"{request.method} is not allowed on {request.url.path}"
        return JSONResponse(error_body(message, code="method_not_allowed"), status_code=405)

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> HTMLResponse:
        return HTMLResponse(PLAYGROUND.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": settings.name, "active": len(batcher.slots)}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        server.authorize(request)
        return {"object": "list", "data": [server.model_card()]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        server.authorize(request)
        body = await server.read(request, CompletionRequest)
        return await server.complete(request, body)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        server.authorize(request)
        body = await server.read(request, ChatRequest)
        return await server.chat(request, body)

    @app.post("/v1/explain")
    async def explain_route(request: Request) -> dict[str, Any]:
        server.authorize(request)
        body = await server.read(request, ExplainRequest)
        return await server.explain(body)

    return app


async def _log_request(request: Request, call_next):
    """``POST /v1/completions 200 12 tokens in, 40 out, 0.53 s``, written when the response (a stream
    included) has been sent; the token counts come from ``_Server.events`` through ``request.state``."""
    start = time.perf_counter()
    request.state.tokens = [0, 0]  # prompt tokens, generated tokens
    response = await call_next(request)
    body = response.body_iterator

    async def logged() -> AsyncIterator:
        try:
            async for chunk in body:
                yield chunk
        finally:
            tokens_in, tokens_out = request.state.tokens
            line = f"{request.method} {request.url.path} {response.status_code}"
            if tokens_in or tokens_out:
                line += f" {tokens_in} tokens in, {tokens_out} out"
            print(f"{line}, {time.perf_counter() - start:.2f} s", file=sys.stderr, flush=True)

    response.body_iterator = logged()
    return response


def _kind(status: int) -> str:
    return {401: "authentication_error", 404: "not_found_error", 500: "server_error"}.get(
        status, "invalid_request_error"
    )


class _Server:
    """The request handling behind the routes."""

    def __init__(self, model: nn.Module, settings: ServeSettings, batcher: Batcher) -> None:
        self.model, self.settings, self.batcher = model, settings, batcher
        self.tokenizer = model.tokenizer
        self.created = int(time.time())

    # ---- checks -------------------------------------------------------------------------------
    def authorize(self, request: Request) -> None:
        key = self.settings.api_key
        if key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # compare_digest: the time taken does not tell how much of a guessed key was right
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), key.encode()):
            raise ApiError(401, "missing or wrong API key; send 'Authorization: Bearer KEY'", code="invalid_api_key")

    async def read(self, request: Request, schema: type[BaseModel]) -> Any:
        """The body, at most ``max_body`` bytes, validated by ``schema``."""
        limit = self.settings.max_body
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {limit}", code="body_too_large")
        raw = bytearray()
        async for chunk in request.stream():  # a body without Content-Length is counted as it arrives
            raw += chunk
            if len(raw) > limit:
                raise ApiError(413, f"request body exceeds the limit of {limit} bytes", code="body_too_large")
        try:
            body = schema.model_validate_json(bytes(raw))
        except ValidationError as err:
            first = err.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            raise ApiError(400, f"{param or 'body'}: {first['msg']}", param=param, code="invalid_value") from None
        if hasattr(body, "model") and body.model != self.settings.name:
            raise ApiError(
                404, f"model '{body.model}' does not exist; this server has '{self.settings.name}'",
                param="model", code="model_not_found",
            )  # fmt: skip
        return body

    def model_card(self) -> dict[str, Any]:
        return {"id": self.settings.name, "object": "model", "created": self.created, "owned_by": "llmkit"}

    def configs(
        self, body: Sampling, prompt_len: int, default: int | None, extra_stop: list[str] = ()
    ) -> list[GenerationConfig]:
        """One GenerationConfig per choice, after the server's limits and the context window. Without
        max_tokens: ``default`` (completions: 16, as OpenAI), or all the room left (chat: None)."""
        room = self.batcher.capacity - prompt_len
        if room < 1:
            raise ApiError(
                400, f"the prompt has {prompt_len} tokens; the context window holds {self.batcher.capacity}",
                param="prompt", code="context_length_exceeded",
            )  # fmt: skip
        limit = self.settings.max_tokens
        wanted = body.max_tokens if body.max_tokens is not None else min(default or limit, limit, room)
        if wanted > limit:
            raise ApiError(400, f"max_tokens={wanted} exceeds this server's limit of {limit}", param="max_tokens")
        if wanted > room:
            raise ApiError(
                400, f"{prompt_len} prompt tokens + max_tokens={wanted} exceed the context window of "
                f"{self.batcher.capacity}; lower max_tokens to {room} or less",
                param="max_tokens", code="context_length_exceeded",
            )  # fmt: skip
        sampling = body.temperature > 0
        base = dict(
            max_new_tokens=wanted, min_new_tokens=0, do_sample=sampling,
            temperature=body.temperature if sampling else 1.0, top_k=body.top_k, top_p=body.top_p,
            min_p=0.0, repetition_penalty=1.0, stop_strings=list(body.stop or []) + list(extra_stop),
            num_beams=1, num_return_sequences=1,
        )  # fmt: skip
        try:
            # choice i draws with seed + i: reproducible, and the n choices differ
            return [
                self.model.generation_config.replace(**base, seed=None if body.seed is None else body.seed + i)
                for i in range(body.n)
            ]
        except LlmkitError as err:
            raise ApiError(400, str(err), code="invalid_value") from None

    # ---- decoding -----------------------------------------------------------------------------
    def submit(self, prompt_ids: list[int], configs: list[GenerationConfig], logprobs: int):
        """One batcher request per choice; their (choice, event) items arrive on the returned queue."""
        loop, items = asyncio.get_running_loop(), asyncio.Queue()
        requests = []
        for i, cfg in enumerate(configs):

            def on_token(event: TokenEvent, i=i) -> None:
                loop.call_soon_threadsafe(items.put_nowait, (i, event))

            def on_error(err: Exception, i=i) -> None:
                loop.call_soon_threadsafe(items.put_nowait, (i, err))

            requests.append(BatchRequest(prompt_ids, cfg, on_token, on_error, logprobs))
        for r in requests:
            self.batcher.submit(r)
        return requests, items

    async def events(self, http: Request, prompt_ids: list[int], configs, logprobs: int, watch: bool) -> AsyncIterator:
        """(choice, TokenEvent) until every choice has finished; a disconnected client cancels them all:
        a stream is cancelled by Starlette when the client goes (``watch=False``), a plain request polls."""
        requests, items = self.submit(prompt_ids, configs, logprobs)
        counts = getattr(http.state, "tokens", None)  # the request log's, when it is on
        if counts is not None:
            counts[0] = len(prompt_ids)
        left, next_check = len(requests), time.monotonic() + DISCONNECT_POLL
        try:
            while left:
                try:
                    i, event = await asyncio.wait_for(items.get(), timeout=DISCONNECT_POLL)
                except asyncio.TimeoutError:
                    i, event = None, None
                # by the clock, not only when tokens stop coming: a busy request would never be checked
                if watch and time.monotonic() >= next_check:
                    if await http.is_disconnected():
                        return
                    next_check = time.monotonic() + DISCONNECT_POLL
                if event is None:
                    continue
                if isinstance(event, Exception):
                    raise ApiError(500, f"generation failed: {event}", code="generation_failed")
                left -= event.finish_reason is not None
                if counts is not None:
                    counts[1] += 1
                yield i, event
        finally:
            for r in requests:  # finished ones are already gone; the rest leave the batch
                r.cancel()

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text)
        if not ids and self.model.config.bos_token_id is not None:
            ids = [self.model.config.bos_token_id]
        if not ids:
            raise ApiError(400, "the prompt is empty", param="prompt")
        return ids

    # ---- /v1/completions ----------------------------------------------------------------------
    async def complete(self, http: Request, body: CompletionRequest):
        ids = self.encode(body.prompt)
        configs = self.configs(body, len(ids), default=16)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": self.settings.name}  # fmt: skip
        events = self.events(http, ids, configs, body.logprobs or 0, watch=not body.stream)
        if body.stream:
            return _sse(self._completion_chunks(head, body, events))
        texts = [body.prompt if body.echo else "" for _ in configs]
        logs: list[list[TokenEvent]] = [[] for _ in configs]
        reasons = ["length"] * len(configs)
        async for i, ev in events:
            texts[i] += ev.text
            logs[i].append(ev)
            reasons[i] = FINISH[ev.finish_reason] if ev.finish_reason else reasons[i]
        choices = [
            {"text": texts[i], "index": i, "finish_reason": reasons[i],
             "logprobs": self._completion_logprobs(logs[i]) if body.logprobs is not None else None}
            for i in range(len(configs))
        ]  # fmt: skip
        return {**head, "choices": choices, "usage": _usage(len(ids), sum(map(len, logs)))}

    async def _completion_chunks(self, head, body: CompletionRequest, events) -> AsyncIterator[dict]:
        if body.echo:
            for i in range(body.n):
                yield {**head, "choices": [{"text": body.prompt, "index": i, "logprobs": None, "finish_reason": None}]}
        async for i, ev in events:
            logprobs = self._completion_logprobs([ev]) if body.logprobs is not None else None
            reason = FINISH[ev.finish_reason] if ev.finish_reason else None
            yield {**head, "choices": [{"text": ev.text, "index": i, "logprobs": logprobs, "finish_reason": reason}]}

    def _completion_logprobs(self, events: list[TokenEvent]) -> dict[str, Any]:
        """The legacy completions logprobs object: tokens, their logprobs, top alternatives, offsets."""
        tokens = [token_text(self.tokenizer, ev.token_id) for ev in events]
        offsets, at = [], 0
        for ev in events:
            offsets.append(at)
            at += len(ev.text)
        return {
            "tokens": tokens,
            "token_logprobs": [ev.logprob for ev in events],
            "top_logprobs": [{token_text(self.tokenizer, t): lp for t, lp in ev.top_logprobs} for ev in events],
            "text_offset": offsets,
        }

    # ---- /v1/chat/completions -----------------------------------------------------------------
    async def chat(self, http: Request, body: ChatRequest):
        template = self.settings.chat
        prompt = template.render([m.model_dump(exclude_none=True) for m in body.messages])
        ids = self.encode(prompt)
        configs = self.configs(body, len(ids), default=None, extra_stop=template.stop)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": self.settings.name}  # fmt: skip
        top = (body.top_logprobs or 0) if body.logprobs else 0
        events = self.events(http, ids, configs, top, watch=not body.stream)
        if body.stream:
            return _sse(self._chat_chunks({**head, "object": "chat.completion.chunk"}, body, events))
        texts, reasons = [""] * len(configs), ["length"] * len(configs)
        logs: list[list[TokenEvent]] = [[] for _ in configs]
        async for i, ev in events:
            texts[i] += ev.text
            logs[i].append(ev)
            reasons[i] = FINISH[ev.finish_reason] if ev.finish_reason else reasons[i]
        choices = [
            {"index": i, "message": {"role": "assistant", "content": texts[i]}, "finish_reason": reasons[i],
             "logprobs": {"content": [self._chat_logprob(ev) for ev in logs[i]]} if body.logprobs else None}
            for i in range(len(configs))
        ]  # fmt: skip
        return {**head, "choices": choices, "usage": _usage(len(ids), sum(map(len, logs)))}

    async def _chat_chunks(self, head, body: ChatRequest, events) -> AsyncIterator[dict]:
        for i in range(body.n):  # OpenAI opens each choice with the role
            delta = {"role": "assistant", "content": ""}
            yield {**head, "choices": [{"index": i, "delta": delta, "logprobs": None, "finish_reason": None}]}
        async for i, ev in events:
            logprobs = {"content": [self._chat_logprob(ev)]} if body.logprobs else None
            reason = FINISH[ev.finish_reason] if ev.finish_reason else None
            delta = {"content": ev.text} if ev.text or reason is None else {}
            yield {**head, "choices": [{"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": reason}]}

    def _chat_logprob(self, ev: TokenEvent) -> dict[str, Any]:
        def entry(token_id: int, logprob: float) -> dict[str, Any]:
            text = token_text(self.tokenizer, token_id)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

        return {**entry(ev.token_id, ev.logprob), "top_logprobs": [entry(t, lp) for t, lp in ev.top_logprobs]}

    # ---- /v1/explain --------------------------------------------------------------------------
    async def explain(self, body: ExplainRequest) -> dict[str, Any]:
        ids = self.encode(body.prompt)
        room = self.batcher.capacity - len(ids)
        if body.max_tokens > min(room, self.settings.max_tokens):
            raise ApiError(400, f"max_tokens={body.max_tokens} exceeds the room of {room}", param="max_tokens")
        settings = dict(
            max_new_tokens=body.max_tokens, do_sample=body.do_sample, temperature=body.temperature, top_k=body.top_k,
            top_p=body.top_p, seed=body.seed, stop_strings=body.stop, num_beams=1, num_return_sequences=1,
            compile=False,  # a compiled step would re-lay out the weights the batcher thread is using
        )  # fmt: skip
        try:
            # the engine in a worker thread: it runs beside the batcher's thread, not inside the event loop
            result = await run_in_threadpool(explain, self.model, [ids], None, body.top, **settings)
        except LlmkitError as err:
            raise ApiError(400, str(err), code="invalid_value") from None
        out = result.to_dict()
        out["prompt"] = body.prompt
        return out


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(chunks: AsyncIterator[dict]) -> StreamingResponse:
    """Server-sent events as OpenAI sends them: ``data: {json}`` per chunk, then ``data: [DONE]``.
    An error after the stream has started cannot change the status, so it goes out as an error event."""
    import json

    async def body() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        except ApiError as err:
            yield f"data: {json.dumps(error_body(err.message, code=err.code))}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
