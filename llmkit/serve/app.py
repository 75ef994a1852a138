"""The OpenAI-compatible HTTP API and the playground, on FastAPI, over one loaded model.

Routes: ``GET /`` (playground.html), ``GET /health``, ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (both streamed as server-sent events with ``"stream": true``) and
``POST /v1/explain`` (the playground's next-token panel; llmkit's own). Every request is decoded by
one ``Batcher`` (llmkit.inference.batcher), so concurrent requests share decoding steps. A model with
a classification head gets no batcher: it answers ``POST /classify`` (llmkit.serve.classify).

Per request: API key (when set) -> body read up to ``max_body`` bytes -> pydantic validation ->
model name -> prompt tokens -> GenerationConfig (its own checks) -> context window -> one batcher
request per choice (``n``) -> tokens back through an asyncio queue. Every failure is a 4xx JSON
error in OpenAI's shape; a client that disconnects cancels its requests, freeing their rows.

Hardening: tokenizing and chat templates run in worker threads, never on the event loop (eight
1 MB prompts froze it for 9 s); at most ``max_queue`` choices wait or decode at once, beyond that
a 429 with ``Retry-After``; ``n`` x ``max_tokens`` is capped by the server's ``max_tokens``; a body
must arrive within ``body_timeout`` seconds; an abandoned /v1/explain stops at its next token; an
error inside a stream is an SSE error event; any unexpected error is a JSON 500; the OpenAPI
document (with the request schemas) is served at /openapi.json; an empty API key is refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from torch import nn

from llmkit.config import GenerationConfig
from llmkit.errors import LlmkitError
from llmkit.inference.batcher import Batcher, PromptScores, TokenEvent
from llmkit.inference.batcher import Request as BatchRequest
from llmkit.inference.explain import explain
from llmkit.serve.chat import ChatTemplate
from llmkit.serve.logprobs import chat_logprob, completion_logprobs, with_prompt
from llmkit.serve.metrics import CONTENT_TYPE, Metrics
from llmkit.serve.schemas import (
    MAX_SEED,
    MAX_STOP,
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    ExplainRequest,
    Sampling,
    TokenizeRequest,
    error_body,
)
from llmkit.serve.structured import ToolSetup, call_deltas, compile_grammar, opens_call, request_grammar, tool_reply
from llmkit.serve.structured import tool_setup as check_tool_setup

PLAYGROUND = Path(__file__).with_name("playground.html")
DISCONNECT_POLL = 0.25  # seconds between checks that a non-streaming client is still there
FINISH = {"eos": "stop", "stop": "stop", "length": "length"}  # ours -> OpenAI's finish_reason


@dataclass
class ServeSettings:
    """What the operator chooses (CLI flags); nothing here can be set by a request."""

    name: str  # the model id responses carry (the first of vLLM's --served-model-name)
    aliases: tuple[str, ...] = ()  # other names a request may send for the same model, listed by /v1/models
    api_key: str | None = None
    max_batch: int = 8
    max_tokens: int = 1024  # the most new tokens one request may ask for
    max_body: int = 1 << 20  # bytes
    chat: ChatTemplate = field(default_factory=ChatTemplate)
    max_queue: int | None = None  # choices waiting or decoding at once (None: 8 batches' worth); more get 429
    body_timeout: float = 30.0  # seconds for a request body to arrive (slow senders hold a connection)
    request_log: bool = False  # one stderr line per request (llmkit serve turns it on; --quiet off)
    max_stop: int = MAX_STOP  # stop strings one request may send
    embedder: Any = None  # a llmkit.retrieval.embed.Embedder: POST /v1/embeddings (llmkit.serve.embeddings)


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None, headers=None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}


def create_app(model: nn.Module, settings: ServeSettings) -> FastAPI:
    """The app for ``model`` (with a tokenizer); the batcher thread runs while the app does."""
    if getattr(model, "tokenizer", None) is None:
        raise LlmkitError("serving needs a tokenizer and this checkpoint has none", "save the model with its tokenizer")
    if settings.api_key is not None and not settings.api_key.strip():
        raise LlmkitError("the API key is empty: that would turn authentication off", "give a non-empty --api-key")
    # a classifier has no LM head to decode with: it answers /classify (llmkit.serve.classify), no batcher
    batcher = None if model.config.has_classifier else Batcher(model, settings.max_batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if batcher is not None:
            batcher.start()
        yield
        if batcher is not None:
            batcher.close()

    app = FastAPI(title="llmkit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.openapi = lambda: _openapi(app, [settings.name, *settings.aliases])
    app.state.batcher = batcher  # tests and the load benchmark read batcher.step_sizes
    server = _Server(model, settings, batcher)

    if settings.request_log:
        app.middleware("http")(_log_request)
    app.add_middleware(_Counter, metrics=server.metrics)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        body = error_body(err.message, _kind(err.status), err.param, err.code)
        return JSONResponse(body, status_code=err.status, headers=err.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        # still logged by uvicorn with its traceback; the client gets JSON, not plain text
        return JSONResponse(error_body(f"internal error: {type(err).__name__}", _kind(500)), status_code=500)

    @app.exception_handler(404)
    async def _not_found(request: Request, err: Exception) -> JSONResponse:
        return JSONResponse(error_body(f"no route {request.url.path}", code="not_found"), status_code=404)

    @app.exception_handler(405)
    async def _bad_method(request: Request, err: Exception) -> JSONResponse:
        message = f"{request.method} is not allowed on {request.url.path}"
        return JSONResponse(error_body(message, code="method_not_allowed"), status_code=405)

    if batcher is None:
        from llmkit.serve.classify import register_classify

        register_classify(app, server)  # first: its 400s on the generation routes win over theirs
    register_openai_routes(app, server)
    register_vllm_routes(app, server)
    if settings.embedder is not None:
        from llmkit.serve.embeddings import register_embeddings

        register_embeddings(app, server, settings.embedder)
    return app


def register_openai_routes(app: FastAPI, server: _Server) -> None:
    """The playground, /health, /metrics and OpenAI's routes. Other route groups (embeddings) register
    themselves the same way: a function of (app, server) called from ``create_app``."""
    settings, batcher = server.settings, server.batcher

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> HTMLResponse:
        return HTMLResponse(PLAYGROUND.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": settings.name, "active": len(batcher.slots) if batcher else 0}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        server.authorize(request)
        # one entry per name, as vLLM lists its --served-model-name list
        return {"object": "list", "data": [server.model_card(name) for name in server.names]}

    @app.get("/v1/models/{model_id:path}")
    async def model(request: Request, model_id: str) -> dict[str, Any]:
        server.authorize(request)
        server.check_model(model_id)
        return server.model_card(model_id)

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
        return await server.explain(request, body)


def register_vllm_routes(app: FastAPI, server: _Server) -> None:
    """vLLM's ``POST /tokenize`` and ``POST /detokenize``, in vLLM's shapes."""

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict[str, Any]:
        server.authorize(request)
        body = await server.read(request, TokenizeRequest)
        return await server.tokenize(body)

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict[str, Any]:
        server.authorize(request)
        body = await server.read(request, DetokenizeRequest)
        return {"prompt": await run_in_threadpool(server.tokenizer.decode, server.check_ids(body.tokens))}


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


ROUTES = {"/", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/explain",
          "/v1/embeddings", "/tokenize", "/detokenize", "/classify", "/v1/classify"}  # fmt: skip


class _Counter:
    """ASGI middleware counting each answered request by route and status; any other path counts as
    "other" (one series per path a scanner tries would grow without bound). Plain ASGI, not
    ``app.middleware``: Starlette's BaseHTTPMiddleware hides a client's disconnect from the handler."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        route = path if path in ROUTES else "/v1/models/{id}" if path.startswith("/v1/models/") else "other"

        async def counted(message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(route=route, status=str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counted)


def _kind(status: int) -> str:
    return {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error", 500: "server_error"}.get(
        status, "invalid_request_error"
    )


# Routes read their bodies themselves (to bound their size), so FastAPI cannot see the schemas:
# they are added here, for client generators and fuzzers (schemathesis) that read the document.
_BODIES = {"/v1/completions": CompletionRequest, "/v1/chat/completions": ChatRequest, "/v1/explain": ExplainRequest,
           "/tokenize": TokenizeRequest, "/detokenize": DetokenizeRequest}  # fmt: skip


def _openapi(app: FastAPI, names: list[str]) -> dict[str, Any]:
    """The document FastAPI builds, plus the request bodies; ``model`` is one of the names of this server's model."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version="1", routes=app.routes)
        _, defs = models_json_schema(
            [(model, "validation") for model in _BODIES.values()], ref_template="#/components/schemas/{model}"
        )
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(defs.get("$defs", {}))
        for model in (CompletionRequest, ChatRequest):
            schemas[model.__name__]["properties"]["model"] = {"type": "string", "enum": names, "title": "Model"}
        for path, model in _BODIES.items():
            doc["paths"][path]["post"]["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
            }
        app.openapi_schema = doc
    return app.openapi_schema


class _Server:
    """The request handling behind the routes."""

    def __init__(self, model: nn.Module, settings: ServeSettings, batcher: Batcher | None) -> None:
        self.model, self.settings, self.batcher = model, settings, batcher
        self.names = list(dict.fromkeys([settings.name, *settings.aliases]))
        self.capacity = batcher.capacity if batcher is not None else model.config.max_seq_len  # None: a classifier
        self.tokenizer = model.tokenizer
        self.created = int(time.time())
        self.explaining = 0  # /v1/explain calls running; changed on the event loop only
        self.metrics = Metrics(batcher)

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
        """The body, at most ``max_body`` bytes arriving within ``body_timeout`` seconds, validated by ``schema``."""
        limit = self.settings.max_body
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {limit}", code="body_too_large")
        try:
            raw = await asyncio.wait_for(self._body(request, limit), self.settings.body_timeout)
        except asyncio.TimeoutError:
            raise ApiError(
                408, f"the request body did not arrive within {self.settings.body_timeout:g} s", code="timeout"
            ) from None
        except ClientDisconnect:  # gone before its body arrived: nothing to answer, nothing to log as ours
            raise ApiError(
                400, "the client closed the connection before sending its body", code="client_closed"
            ) from None
        try:
            # large bodies parse in a worker thread, off the event loop
            validate = schema.model_validate_json
            body = validate(raw) if len(raw) < 65536 else await run_in_threadpool(validate, raw)
        except ValidationError as err:
            first = err.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            raise ApiError(400, f"{param or 'body'}: {first['msg']}", param=param, code="invalid_value") from None
        if getattr(body, "model", None) is not None:  # optional, as in vLLM: without it, the one model served
            self.check_model(body.model)
        return body

    def check_model(self, name: str) -> None:
        if name not in self.names:
            raise ApiError(
                404, f"model '{name}' does not exist; this server has '{self.settings.name}'",
                param="model", code="model_not_found",
            )  # fmt: skip

    def check_ids(self, ids: list[int], param: str = "tokens") -> list[int]:
        """Token ids a client sent, each inside the vocabulary (an id past it would index out of the embedding)."""
        vocab = self.model.config.vocab_size
        bad = [t for t in ids if t >= vocab]
        if bad:
            raise ApiError(400, f"token id {bad[0]} is outside the vocabulary of {vocab}", param=param)
        return ids

    @staticmethod
    async def _body(request: Request, limit: int) -> bytes:
        raw = bytearray()
        async for chunk in request.stream():  # a body without Content-Length is counted as it arrives
            raw += chunk
            if len(raw) > limit:
                raise ApiError(413, f"request body exceeds the limit of {limit} bytes", code="body_too_large")
        return bytes(raw)

    def admit(self, choices: int) -> None:
        """429 with Retry-After when ``choices`` more would pass ``max_queue``: a bounded wait for everyone.
        Counted from the batcher itself (rows decoding + requests waiting), so nothing can leak a count."""
        busy = len(self.batcher.slots) + self.batcher.pending.qsize() + self.explaining
        limit = self.settings.max_queue or 8 * self.settings.max_batch
        if choices > limit:  # would never fit: a retry cannot help, so not a 429
            raise ApiError(
                400, f"this request has {choices} choices (prompts x n); the server queues at most {limit} at once",
                param="prompt", code="too_many_choices",
            )  # fmt: skip
        if busy + choices > limit:
            wait = 1 + busy // max(self.settings.max_batch, 1)  # rough: a batch's worth per second
            raise ApiError(
                429, f"the server is busy ({busy} choices queued or decoding); retry in {wait} s",
                code="rate_limit_exceeded", headers={"Retry-After": str(wait)},
            )  # fmt: skip

    def model_card(self, name: str) -> dict[str, Any]:
        return {
            "id": name, "object": "model", "created": self.created, "owned_by": "llmkit",
            "root": self.settings.name,  # vLLM's root: what the name stands for (here the model's own name)
            "max_model_len": self.capacity,  # vLLM's field: clients size their prompts by it
        }  # fmt: skip

    def configs(
        self, body: Sampling, prompt_len: int, default: int | None, extra_stop: list[str] = ()
    ) -> list[GenerationConfig]:
        """One GenerationConfig per choice, after the server's limits and the context window. Without
        max_tokens: ``default`` (completions: 16, as OpenAI), or all the room left (chat: None)."""
        room = self.batcher.capacity - prompt_len
        if room < 0 or (room == 0 and body.wanted_tokens != 0):
            raise ApiError(
                400, f"the prompt has {prompt_len} tokens; the context window holds {self.batcher.capacity}",
                param="prompt", code="context_length_exceeded",
            )  # fmt: skip
        self._check_fields(body)
        limit = self.settings.max_tokens
        wanted = body.wanted_tokens if body.wanted_tokens is not None else min(default or limit, limit // body.n, room)
        if wanted > limit:
            raise ApiError(400, f"max_tokens={wanted} exceeds this server's limit of {limit}", param="max_tokens")
        if wanted * body.n > limit:  # n choices cost n times the decoding
            raise ApiError(
                400, f"n={body.n} x max_tokens={wanted} = {body.n * wanted} new tokens exceeds this server's limit "
                f"of {limit} per request", param="max_tokens",
            )  # fmt: skip
        if wanted > room:
            raise ApiError(
                400, f"{prompt_len} prompt tokens + max_tokens={wanted} exceed the context window of "
                f"{self.batcher.capacity}; lower max_tokens to {room} or less",
                param="max_tokens", code="context_length_exceeded",
            )  # fmt: skip
        sampling = body.temperature > 0  # below MIN_TEMPERATURE but 0 the schema refuses
        base = dict(
            max_new_tokens=wanted, min_new_tokens=0, do_sample=sampling,
            temperature=body.temperature if sampling else 1.0, top_k=max(body.top_k, 0), top_p=body.top_p,
            min_p=body.min_p, repetition_penalty=body.repetition_penalty, presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty, logit_bias=dict(body.logit_bias or {}),
            stop_strings=list(body.stop or []) + list(extra_stop), num_beams=1, num_return_sequences=1,
        )  # fmt: skip
        try:
            # choice i draws with seed + i: reproducible, and the n choices differ
            return [
                self.model.generation_config.replace(
                    **base, seed=None if body.seed is None else (body.seed + i) % (MAX_SEED + 1)
                )
                for i in range(body.n)
            ]
        except LlmkitError as err:
            raise ApiError(400, str(err), code="invalid_value") from None

    def _check_fields(self, body: Sampling) -> None:
        """What the schema cannot know: the server's stop limit, the vocabulary, one value for max_tokens."""
        if body.max_tokens is not None and body.max_completion_tokens not in (None, body.max_tokens):
            raise ApiError(
                400, f"max_tokens={body.max_tokens} and max_completion_tokens={body.max_completion_tokens} differ; "
                "send one", param="max_completion_tokens",
            )  # fmt: skip
        if body.wanted_tokens == 0 and not getattr(body, "echo", False):
            raise ApiError(400, "max_tokens=0 generates nothing; send it with echo to score the prompt", "max_tokens")
        if len(body.stop or []) > self.settings.max_stop:
            raise ApiError(400, f"{len(body.stop)} stop strings; this server takes {self.settings.max_stop}", "stop")
        self.check_ids(list(body.logit_bias or {}), param="logit_bias")

    async def grammars(self, body: Sampling, setup: ToolSetup | None = None):
        """The request's compiled constraint (RowGrammars) or None; one the engine cannot compile is a 400."""
        param = "response_format"
        try:
            grammar, param = request_grammar(body, setup)
            if grammar is None:
                return None
            eos = self.model.generation_config.eos_token_id
            return await run_in_threadpool(compile_grammar, self.model, grammar, eos)
        except LlmkitError as err:
            raise ApiError(400, str(err), param=param, code="invalid_value") from None

    # ---- decoding -----------------------------------------------------------------------------
    def submit(
        self, jobs: list[tuple[list[int], GenerationConfig]], logprobs: int, prompt_logprobs: bool, grammars=None
    ):
        """One batcher request per choice (a prompt and its config, with fresh matchers of ``grammars`` when the
        output is constrained); their (choice, event) items arrive on the returned queue, an event being a
        TokenEvent, the prompt's PromptScores, or an exception."""
        loop, items = asyncio.get_running_loop(), asyncio.Queue()
        requests = []
        for i, (ids, cfg) in enumerate(jobs):

            def post(event, i=i) -> None:
                loop.call_soon_threadsafe(items.put_nowait, (i, event))

            constraint = grammars.start() if grammars is not None else None
            requests.append(BatchRequest(ids, cfg, post, post, logprobs, prompt_logprobs, post, constraint=constraint))
        for r in requests:
            self.batcher.submit(r)
        return requests, items

    async def events(
        self, http: Request, jobs: list[tuple[list[int], GenerationConfig]], logprobs: int, watch: bool,
        prompt_logprobs: bool = False, grammars=None,
    ) -> AsyncIterator:  # fmt: skip
        """(choice, TokenEvent or PromptScores) until every choice has finished; a disconnected client
        cancels them all: a stream is cancelled by Starlette when the client goes (``watch=False``), a
        plain request polls. A scoring-only choice (max_new_tokens 0) finishes with its PromptScores."""
        requests, items = self.submit(jobs, logprobs, prompt_logprobs, grammars)
        counts = getattr(http.state, "tokens", None)  # the request log's, when it is on
        prompt_tokens = sum({id(ids): len(ids) for ids, _ in jobs}.values())  # a prompt's n choices share its list
        if counts is not None:
            counts[0] = prompt_tokens
        self.metrics.prompt_tokens.inc(prompt_tokens)
        submitted = time.perf_counter()
        last: dict[int, float] = {}  # choice -> when its previous token came
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
                if isinstance(event, Exception):  # the request was valid: a failure of ours (e.g. NaN scores)
                    raise ApiError(500, f"generation failed: {event}", code="generation_failed")
                if isinstance(event, PromptScores):
                    left -= jobs[i][1].max_new_tokens == 0
                    yield i, event
                    continue
                now = time.perf_counter()
                (self.metrics.tpot if i in last else self.metrics.ttft).observe(now - last.get(i, submitted))
                last[i] = now
                left -= event.finish_reason is not None
                self.metrics.generation_tokens.inc()
                if counts is not None:
                    counts[1] += 1
                yield i, event
        finally:
            for r in requests:  # finished ones are already gone; the rest leave the batch
                r.cancel()

    async def encode_async(self, text: str) -> list[int]:
        """``encode`` in a worker thread: a 1 MB prompt takes a second of CPU the event loop must not spend."""
        return await run_in_threadpool(self.encode, text)

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text)
        if not ids and self.model.config.bos_token_id is not None:
            ids = [self.model.config.bos_token_id]
        if not ids:
            raise ApiError(400, "the prompt is empty", param="prompt")
        return ids

    # ---- /tokenize, /detokenize ---------------------------------------------------------------
    async def tokenize(self, body: TokenizeRequest) -> dict[str, Any]:
        if body.messages is not None:
            messages = [m.model_dump(exclude_none=True) for m in body.messages]
            try:  # a template's own error, or an earlier call's arguments that are not JSON
                text = await run_in_threadpool(
                    lambda: self.settings.chat.render(messages, add_generation_prompt=body.add_generation_prompt)
                )
            except LlmkitError as err:
                raise ApiError(400, str(err), param="messages", code="invalid_value") from None
        else:
            text = body.prompt
        ids = await run_in_threadpool(self.tokenizer.encode, text, body.add_special_tokens)
        out = {"count": len(ids), "max_model_len": self.capacity, "tokens": ids}
        if body.return_token_strs:
            out["token_strs"] = [self.tokenizer.id_to_token(t) for t in ids]
        return out

    # ---- /v1/completions ----------------------------------------------------------------------
    async def complete(self, http: Request, body: CompletionRequest):
        """Each prompt (text or token ids) gets ``n`` choices, index prompt * n + j, all decoded in the batch.
        ``echo`` puts the prompt before each choice's text; with ``logprobs`` the prompt's own tokens come
        first in the logprobs (the first one's null), from the prefill's logits."""
        prompts = body.prompts()
        ids_of = [await self.encode_async(p) if isinstance(p, str) else self.check_ids(p, "prompt") for p in prompts]
        echoes = [await self._echo_text(p, ids) if body.echo else "" for p, ids in zip(prompts, ids_of, strict=True)]
        jobs = [(ids, cfg) for ids in ids_of for cfg in self.configs(body, len(ids), default=16)]
        grammars = await self.grammars(body)
        self.admit(len(jobs))
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": self.settings.name}  # fmt: skip
        scoring = body.echo and body.logprobs is not None
        events = self.events(http, jobs, body.logprobs or 0, watch=not body.stream, prompt_logprobs=scoring,
                             grammars=grammars)  # fmt: skip
        echo_of = [echoes[i // body.n] for i in range(len(jobs))]
        if body.stream:
            return _sse(self._completion_chunks(head, body, events, echo_of, jobs))
        texts = list(echo_of)
        logs: list[list[TokenEvent]] = [[] for _ in jobs]
        prompt_scores: list[PromptScores | None] = [None] * len(jobs)
        reasons = ["length"] * len(jobs)
        async for i, ev in events:
            if isinstance(ev, PromptScores):
                prompt_scores[i] = ev
                continue
            texts[i] += ev.text
            logs[i].append(ev)
            reasons[i] = FINISH[ev.finish_reason] if ev.finish_reason else reasons[i]
        choices = [
            {"text": texts[i], "index": i, "finish_reason": reasons[i],
             "logprobs": await self._logprobs(logs[i], prompt_scores[i] if scoring else None, echo_of[i])
             if body.logprobs is not None else None}
            for i in range(len(jobs))
        ]  # fmt: skip
        return {**head, "choices": choices, "usage": _usage(sum(map(len, ids_of)), sum(map(len, logs)))}

    async def _echo_text(self, prompt: str | list[int], ids: list[int]) -> str:
        """The text ``echo`` returns: the prompt as sent, or its token ids decoded."""
        return prompt if isinstance(prompt, str) else await run_in_threadpool(self.tokenizer.decode, ids)

    async def _completion_chunks(self, head, body: CompletionRequest, events, echo_of, jobs) -> AsyncIterator[dict]:
        def chunk(i: int, text: str, logprobs, reason) -> dict:
            return {**head, "choices": [{"text": text, "index": i, "logprobs": logprobs, "finish_reason": reason}]}

        scored = body.echo and body.logprobs is not None  # then the echo comes with its PromptScores
        if body.echo and not scored:
            for i, text in enumerate(echo_of):
                yield chunk(i, text, None, None if jobs[i][1].max_new_tokens else "length")
        offsets = [len(text) for text in echo_of]
        completion = 0
        async for i, ev in events:
            if isinstance(ev, PromptScores):
                if not scored:  # the end of a max_tokens 0 choice, whose echo went out above
                    continue
                logprobs = await self._logprobs([], ev, echo_of[i])
                yield chunk(i, echo_of[i], logprobs, None if jobs[i][1].max_new_tokens else "length")
                continue
            completion += 1
            logprobs = completion_logprobs(self.tokenizer, [ev], offsets[i]) if body.logprobs is not None else None
            offsets[i] += len(ev.text)
            yield chunk(i, ev.text, logprobs, FINISH[ev.finish_reason] if ev.finish_reason else None)
        if body.include_usage:
            prompt_tokens = sum(len(jobs[i][0]) for i in range(0, len(jobs), body.n))
            yield {**head, "choices": [], "usage": _usage(prompt_tokens, completion)}

    async def _logprobs(self, events: list[TokenEvent], prompt: PromptScores | None, echo: str) -> dict[str, Any]:
        """A choice's logprobs object; the prompt's offsets decode every prefix, so in a worker thread."""
        generated = completion_logprobs(self.tokenizer, events, len(echo))
        if prompt is None:
            return generated
        return await run_in_threadpool(with_prompt, self.tokenizer, prompt, generated)

    # ---- /v1/chat/completions -----------------------------------------------------------------
    async def chat(self, http: Request, body: ChatRequest):
        """Chat completions; with ``tools`` the reply is decoded under the call's grammar and a call comes back
        as ``tool_calls`` (llmkit.serve.structured)."""
        template = self.settings.chat
        try:
            tools = [t.model_dump(exclude_none=True) for t in body.tools] if body.tools is not None else None
            choice = body.tool_choice.model_dump() if isinstance(body.tool_choice, BaseModel) else body.tool_choice
            setup = check_tool_setup(tools, choice, body.parallel_tool_calls)
        except LlmkitError as err:
            param = "tool_choice" if "tool_choice" in str(err) else "tools"
            raise ApiError(400, str(err), param=param, code="invalid_value") from None
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        shown = setup.tools if setup.active else None  # tool_choice "none": the model is not told of them
        try:
            prompt = await run_in_threadpool(lambda: template.render(messages, tools=shown))
        except LlmkitError as err:
            raise ApiError(400, str(err), param="messages", code="invalid_value") from None
        ids = await self.encode_async(prompt)
        configs = self.configs(body, len(ids), default=None, extra_stop=template.stop)
        grammars = await self.grammars(body, setup)
        self.admit(len(configs))
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": self.settings.name}  # fmt: skip
        top = (body.top_logprobs or 0) if body.logprobs else 0
        events = self.events(http, [(ids, cfg) for cfg in configs], top, watch=not body.stream, grammars=grammars)
        if body.stream:
            head = {**head, "object": "chat.completion.chunk"}
            return _sse(self._chat_chunks(head, body, events, len(ids), setup))
        texts, reasons = [""] * len(configs), ["length"] * len(configs)
        logs: list[list[TokenEvent]] = [[] for _ in configs]
        async for i, ev in events:
            texts[i] += ev.text
            logs[i].append(ev)
            reasons[i] = FINISH[ev.finish_reason] if ev.finish_reason else reasons[i]
        choices = []
        for i in range(len(configs)):
            content, calls, reason = tool_reply(texts[i], setup, reasons[i])
            message = {"role": "assistant", "content": content, **({"tool_calls": calls} if calls else {})}
            logprobs = {"content": [chat_logprob(self.tokenizer, ev) for ev in logs[i]]} if body.logprobs else None
            choices.append({"index": i, "message": message, "finish_reason": reason, "logprobs": logprobs})
        return {**head, "choices": choices, "usage": _usage(len(ids), sum(map(len, logs)))}

    async def _chat_chunks(
        self, head, body: ChatRequest, events, prompt_tokens: int, setup: ToolSetup
    ) -> AsyncIterator[dict]:
        """Chunks as OpenAI streams them; a reply that opens a call is held until it ends (``held``), then
        sent as tool_calls deltas (its logprobs are not streamed)."""

        def chunk(i: int, delta: dict, reason: str | None = None, logprobs=None) -> dict:
            return {**head, "choices": [{"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": reason}]}

        for i in range(body.n):  # OpenAI opens each choice with the role
            yield chunk(i, {"role": "assistant", "content": ""})
        completion = 0
        started = [False] * body.n  # some text went out (so the reply is text, not a call)
        held: dict[int, str] = {}  # choice -> the call text so far
        async for i, ev in events:
            completion += 1
            reason = FINISH[ev.finish_reason] if ev.finish_reason else None
            if setup.active and not started[i] and (i in held or opens_call(ev.text)):
                held[i] = held.get(i, "") + ev.text
                if reason is None:
                    continue
                content, calls, reason = tool_reply(held.pop(i), setup, reason)
                deltas = call_deltas(calls) if calls else [{"content": content}]
                for delta in deltas[:-1]:
                    yield chunk(i, delta)
                yield chunk(i, deltas[-1], reason)
                continue
            started[i] = started[i] or bool(ev.text)
            logprobs = {"content": [chat_logprob(self.tokenizer, ev)]} if body.logprobs else None
            delta = {"content": ev.text} if ev.text or reason is None else {}
            yield chunk(i, delta, reason, logprobs)
        if body.include_usage:  # OpenAI's last chunk: no choices, the request's usage
            yield {**head, "choices": [], "usage": _usage(prompt_tokens, completion)}

    # ---- /v1/explain --------------------------------------------------------------------------
    async def explain(self, http: Request, body: ExplainRequest) -> dict[str, Any]:
        ids = await self.encode_async(body.prompt)
        room = self.batcher.capacity - len(ids)
        if body.max_tokens > min(room, self.settings.max_tokens):
            raise ApiError(400, f"max_tokens={body.max_tokens} exceeds the room of {room}", param="max_tokens")
        settings = dict(
            max_new_tokens=body.max_tokens, do_sample=body.do_sample, temperature=body.temperature, top_k=body.top_k,
            top_p=body.top_p, seed=body.seed, stop_strings=body.stop, num_beams=1, num_return_sequences=1,
            compile=False,  # a compiled step would re-lay out the weights the batcher thread is using
        )  # fmt: skip
        self.admit(1)
        self.explaining += 1
        try:
            result = await self._explain_until_abandoned(http, ids, body.top, settings)
        except LlmkitError as err:
            raise ApiError(400, str(err), code="invalid_value") from None
        except ApiError:
            raise
        except Exception as err:  # noqa: BLE001 - the request was valid: a failure of ours, answered like
            # /v1/completions' generation_failed. Left to uvicorn, it would also close the keep-alive
            # connection, and a client's next request on it could meet a reset instead of an answer.
            # The traceback still goes to the server's log, as uvicorn would have written it.
            logging.getLogger("uvicorn.error").exception("/v1/explain failed")
            raise ApiError(500, f"explain failed: {type(err).__name__}: {err}", code="explain_failed") from None
        finally:
            self.explaining -= 1
        out = result.to_dict()
        out["prompt"] = body.prompt
        return out

    async def _explain_until_abandoned(self, http: Request, ids: list[int], top: int, settings: dict[str, Any]):
        """The engine in a worker thread (beside the batcher's, not inside the event loop); a client that
        goes away stops it at its next token, so abandoned calls do not keep a core busy."""
        stop = threading.Event()

        def observer(t: int, scores, tokens) -> None:
            if stop.is_set():
                raise _Abandoned

        work = asyncio.ensure_future(run_in_threadpool(explain, self.model, [ids], None, top, observer, **settings))
        work.add_done_callback(lambda done: done.cancelled() or done.exception())  # an abandoned one's end is expected
        try:
            while not (await asyncio.wait({work}, timeout=DISCONNECT_POLL))[0]:
                if await http.is_disconnected():
                    raise ApiError(499, "the client closed the request", code="client_closed")
            return work.result()
        finally:
            stop.set()  # also when this handler is cancelled


class _Abandoned(Exception):
    """Raised inside an abandoned /v1/explain's decoding loop to end it."""


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(chunks: AsyncIterator[dict]) -> StreamingResponse:
    """Server-sent events as OpenAI sends them: ``data: {json}`` per chunk, then ``data: [DONE]``.
    An error after the stream has started cannot change the status, so it goes out as an error event
    with the error's own type (server_error for a failure of ours)."""

    async def body() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        except ApiError as err:
            yield f"data: {json.dumps(error_body(err.message, _kind(err.status), err.param, err.code))}\n\n"
        except Exception as err:  # noqa: BLE001 - the client must learn that the stream broke
            body = error_body(f"internal error: {type(err).__name__}", _kind(500), code="internal_error")
            yield f"data: {json.dumps(body)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
