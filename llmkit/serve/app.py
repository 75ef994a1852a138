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

This module assembles the app from the route groups (each a ``register_*(app, server)`` function: here the
playground, health, metrics, models, explain and vLLM's tokenize routes; completions.py, chat.py,
classify.py, embeddings.py) over one ``Server`` (server.py); errors.py answers every failure.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from torch import nn

from llmkit.errors import LlmkitError
from llmkit.inference.batcher import Batcher
from llmkit.inference.explain import explain
from llmkit.serve.chat import register_chat
from llmkit.serve.classify import register_classify
from llmkit.serve.completions import register_completions
from llmkit.serve.embeddings import embedder_card, embedder_id, register_embeddings
from llmkit.serve.errors import ApiError, add_error_handlers
from llmkit.serve.guard import Guard
from llmkit.serve.metrics import CONTENT_TYPE, RequestCounter
from llmkit.serve.openapi import openapi_document, reads
from llmkit.serve.schemas import DetokenizeRequest, ExplainRequest, TokenizeRequest
from llmkit.serve.server import DISCONNECT_POLL, Server, ServeSettings

__all__ = ["ServeSettings", "create_app"]

PLAYGROUND = Path(__file__).with_name("playground.html")


def create_app(model: nn.Module, settings: ServeSettings) -> FastAPI:
    """The app for ``model`` (with a tokenizer); the batcher thread runs while the app does."""
    if getattr(model, "tokenizer", None) is None:
        raise LlmkitError("serving needs a tokenizer and this checkpoint has none", "save the model with its tokenizer")
    if settings.api_key is not None and not settings.api_key.strip():
        raise LlmkitError("the API key is empty: that would turn authentication off", "give a non-empty --api-key")
    # a classifier has no LM head to decode with: it answers /classify (llmkit.serve.classify), no batcher
    room = dict(
        kv_cache_mb=settings.kv_cache_mb, prefill_tokens=settings.prefill_tokens, prefix_cache=settings.prefix_cache
    )
    batcher = None if model.config.has_classifier else Batcher(model, settings.max_batch, **room)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if batcher is not None:
            batcher.start()
        yield
        if batcher is not None:
            batcher.close()

    app = FastAPI(title="llmkit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    limits = {"max_tokens": settings.max_tokens, "max_stop": settings.max_stop, "vocab": model.config.vocab_size}
    app.openapi = lambda: openapi_document(app, [settings.name, *settings.aliases], limits, keyed_paths(app, settings))
    app.state.batcher = batcher  # tests and the load benchmark read batcher.step_sizes
    server = Server(model, settings, batcher)
    add_error_handlers(app)
    # on a classifier the generation routes are there too, and answer a 400 naming /classify
    for register in (register_openai_routes, register_completions, register_chat, register_explain):
        register(app, server)
    register_vllm_routes(app, server)
    if batcher is None:
        register_classify(app, server)
    if settings.embedder is not None:
        register_embeddings(app, server, settings.embedder, settings.embedding_token_ids)
    if settings.request_log:
        app.middleware("http")(_log_request)
    # the metrics' routes are the ones registered above
    routes = [route for route in app.routes if isinstance(route, APIRoute)]
    # the Host/Origin checks run before any route (and inside the counter, so refusals are counted)
    keyless = settings.api_key is None
    app.add_middleware(Guard, host=settings.host, keyless=keyless, allowed_origins=settings.allowed_origins)
    app.add_middleware(RequestCounter, metrics=server.metrics, routes=routes)
    return app


def keyed_paths(app: FastAPI, settings: ServeSettings) -> tuple[str, ...]:
    """The paths that need the API key: all but the playground and /health (and /metrics when public)."""
    if settings.api_key is None:
        return ()
    open_paths = {"/", "/health", "/openapi.json"} | ({"/metrics"} if settings.public_metrics else set())
    return tuple(r.path for r in app.routes if isinstance(r, APIRoute) and r.path not in open_paths)


def register_openai_routes(app: FastAPI, server: Server) -> None:
    """The playground, /health, /metrics and OpenAI's /v1/models. Every route group registers itself the same
    way: a function of (app, server) called from ``create_app``."""
    settings, batcher = server.settings, server.batcher

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> HTMLResponse:
        return HTMLResponse(PLAYGROUND.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": settings.name, "active": len(batcher.slots) if batcher else 0}

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        if not settings.public_metrics:  # it follows the API key unless the operator made it public
            server.authorize(request)
        return Response(server.metrics.render(), media_type=CONTENT_TYPE)

    embedder = settings.embedder

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        server.authorize(request)
        # one entry per name, as vLLM lists its --served-model-name list; then the embedder, when there is one
        cards = [server.model_card(name) for name in server.names]
        if embedder is not None:
            cards.append(embedder_card(embedder, server.created))
        return {"object": "list", "data": cards}

    @app.get("/v1/models/{model_id:path}")
    async def model(request: Request, model_id: str) -> dict[str, Any]:
        server.authorize(request)
        if embedder is not None and model_id == embedder_id(embedder):
            return embedder_card(embedder, server.created)
        server.check_model(model_id)
        return server.model_card(model_id)


def register_explain(app: FastAPI, server: Server) -> None:
    """``POST /v1/explain``, the playground's next-token panel (llmkit's own)."""

    @app.post("/v1/explain")
    @reads(ExplainRequest)
    async def explain_route(request: Request) -> dict[str, Any]:
        server.authorize(request)
        server.check_generates()
        body = await server.read(request, ExplainRequest)
        return await explain_reply(server, request, body)


def register_vllm_routes(app: FastAPI, server: Server) -> None:
    """vLLM's ``POST /tokenize`` and ``POST /detokenize``, in vLLM's shapes."""

    @app.post("/tokenize")
    @reads(TokenizeRequest)
    async def tokenize(request: Request) -> dict[str, Any]:
        server.authorize(request)
        body = await server.read(request, TokenizeRequest)
        return await server.tokenize(body)

    @app.post("/detokenize")
    @reads(DetokenizeRequest)
    async def detokenize(request: Request) -> dict[str, Any]:
        server.authorize(request)
        body = await server.read(request, DetokenizeRequest)
        return {"prompt": await run_in_threadpool(server.tokenizer.decode, server.check_ids(body.tokens))}


async def _log_request(request: Request, call_next):
    """``POST /v1/completions 200 12 tokens in, 40 out, 0.53 s``, written when the response (a stream
    included) has been sent; the token counts come from ``Server.events`` through ``request.state``."""
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


async def explain_reply(server: Server, http: Request, body: ExplainRequest) -> dict[str, Any]:
    """The next-token panel's steps for ``body``: the engine's explain (llmkit.inference.explain)."""
    ids = await server.encode_async(body.prompt)
    room = server.batcher.capacity - len(ids)
    if body.max_tokens > min(room, server.settings.max_tokens):
        limit = min(room, server.settings.max_tokens)  # the context window's room and the server's own limit
        raise ApiError(400, f"max_tokens={body.max_tokens} exceeds {limit} (room {room}, server limit "
                       f"{server.settings.max_tokens})", param="max_tokens")  # fmt: skip
    settings = dict(
        max_new_tokens=body.max_tokens, do_sample=body.do_sample, temperature=body.temperature, top_k=body.top_k,
        top_p=body.top_p, seed=body.seed, stop_strings=body.stop, num_beams=1, num_return_sequences=1,
        compile=False,  # a compiled step would re-lay out the weights the batcher thread is using
    )  # fmt: skip
    server.admit(1)
    server.explaining += 1
    try:
        result = await _explain_until_abandoned(http, server.model, ids, body.top, settings)
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
        server.explaining -= 1
    out = result.to_dict()
    out["prompt"] = body.prompt
    return out


async def _explain_until_abandoned(http: Request, model: nn.Module, ids: list[int], top: int, settings: dict[str, Any]):
    """The engine in a worker thread (beside the batcher's, not inside the event loop); a client that
    goes away stops it at its next token, so abandoned calls do not keep a core busy."""
    stop = threading.Event()

    def observer(t: int, scores, tokens) -> None:
        if stop.is_set():
            raise _Abandoned

    work = asyncio.ensure_future(run_in_threadpool(explain, model, [ids], None, top, observer, **settings))
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
