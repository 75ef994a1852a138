"""What every route shares: ``ServeSettings`` (the operator's choices) and ``Server``, the request handling
behind the routes: the API key, bodies read with a size and time limit and validated, model names, token ids,
admission (429 when the queue is full), one GenerationConfig per choice, the request's grammar, and the
batcher's events for a request's choices; plus OpenAI's ``usage`` and server-sent events for the streams.

The routes (app.py, completions.py, chat.py, classify.py, embeddings.py) are thin: authorize, read, call.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from torch import nn

from llmkit.chat.template import ChatTemplate
from llmkit.config import GenerationConfig
from llmkit.errors import LlmkitError
from llmkit.inference.batcher import DEFAULT_MAX_BATCH, DEFAULT_PREFILL_TOKENS, Batcher, PromptScores
from llmkit.inference.batcher import Request as BatchRequest
from llmkit.serve.classify import refusal
from llmkit.serve.errors import ApiError, error_type
from llmkit.serve.metrics import Metrics
from llmkit.serve.schemas import MAX_SEED, MAX_STOP, Sampling, TokenizeRequest, error_body
from llmkit.serve.structured import RequestGrammar, ToolSetup, compile_grammar, grammar_failure, request_grammar

DISCONNECT_POLL = 0.25  # seconds between checks that a non-streaming client is still there
FINISH = {"eos": "stop", "stop": "stop", "length": "length"}  # ours -> OpenAI's finish_reason


@dataclass
class ServeSettings:
    """What the operator chooses (CLI flags); nothing here can be set by a request."""

    name: str  # the model id responses carry (the first of vLLM's --served-model-name)
    aliases: tuple[str, ...] = ()  # other names a request may send for the same model, listed by /v1/models
    api_key: str | None = None
    max_batch: int = DEFAULT_MAX_BATCH
    kv_cache_mb: float | None = None  # the batcher's KV cache (None: 1 GiB, at least one context window)
    prefill_tokens: int = DEFAULT_PREFILL_TOKENS  # positions one prefill pass runs (chunked prefill)
    prefix_cache: bool = True  # prompts that start alike share their first KV blocks (llmkit.inference.paged)
    max_tokens: int = 1024  # the most new tokens one request may ask for
    max_body: int = 1 << 20  # bytes
    chat: ChatTemplate = field(default_factory=ChatTemplate)
    max_queue: int | None = None  # choices waiting or decoding at once (None: 8 batches' worth); more get 429
    body_timeout: float = 30.0  # seconds for a request body to arrive (slow senders hold a connection)
    request_log: bool = False  # one stderr line per request (llmkit serve turns it on; --quiet off)
    max_stop: int = MAX_STOP  # stop strings one request may send
    embedder: Any = None  # a llmkit.retrieval.embed.Embedder: POST /v1/embeddings (llmkit.serve.embeddings)
    embedding_token_ids: bool = False  # /v1/embeddings takes token ids (the encoder's own) instead of refusing them
    # keeping web pages out (llmkit.serve.guard): the bound address, checked against Host without an API key
    # (None: not checked, for an app another server mounts); the web origins whose pages may call the API
    host: str | None = None
    allowed_origins: tuple[str, ...] = ()
    public_metrics: bool = False  # /metrics without the API key (by default it follows --api-key)


class Server:
    """The request handling behind the routes."""

    def __init__(self, model: nn.Module, settings: ServeSettings, batcher: Batcher | None) -> None:
        self.model, self.settings, self.batcher = model, settings, batcher
        self.names = list(dict.fromkeys([settings.name, *settings.aliases]))
        self.capacity = batcher.capacity if batcher is not None else model.config.max_seq_len  # None: a classifier
        self.tokenizer = model.tokenizer
        self.created = int(time.time())
        self.explaining = 0  # /v1/explain calls running; changed on the event loop only
        self.metrics = Metrics(batcher)
        # a model with a classification head has no decoder: what the generation routes answer it
        self.refusal = refusal(model.config, settings.name) if batcher is None else None

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

    def check_generates(self) -> None:
        """The generation routes' first check after the key: a model with a classification head answers a 400
        naming POST /classify (llmkit.serve.classify), before its body is read."""
        if self.refusal is not None:
            raise ApiError(400, self.refusal, code="model_has_classification_head")

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
        busy = len(self.batcher.slots) + self.batcher.queued() + self.explaining
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
            **({"eos_token_id": []} if body.ignore_eos else {}),  # vLLM's ignore_eos
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

    async def grammars(self, body: Sampling, setup: ToolSetup | None = None) -> RequestGrammar | None:
        """The request's compiled constraint or None; one the engine cannot compile, or that matches nothing,
        is a 400 naming the field (llmkit.serve.structured)."""
        param = "response_format"
        try:
            grammar, param = request_grammar(body, setup)
            if grammar is None:
                return None
            eos = self.model.generation_config.eos_token_id
            return RequestGrammar(await run_in_threadpool(compile_grammar, self.model, grammar, eos), param)
        except LlmkitError as err:
            raise ApiError(400, str(err), param=getattr(err, "param", param), code="invalid_value") from None

    # ---- decoding -----------------------------------------------------------------------------
    def submit(
        self, jobs: list[tuple[list[int], GenerationConfig]], logprobs: int, prompt_logprobs: bool,
        grammars: RequestGrammar | None = None,
    ):  # fmt: skip
        """One batcher request per choice (a prompt and its config, with fresh matchers of ``grammars`` when the
        output is constrained); their (choice, event) items arrive on the returned queue, an event being a
        TokenEvent, the prompt's PromptScores, or an exception."""
        loop, items = asyncio.get_running_loop(), asyncio.Queue()
        requests = []
        for i, (ids, cfg) in enumerate(jobs):

            def post(event, i=i) -> None:
                loop.call_soon_threadsafe(items.put_nowait, (i, event))

            constraint = grammars.start() if grammars is not None else None
            request = BatchRequest(
                prompt_ids=ids, config=cfg, logprobs=logprobs, prompt_logprobs=prompt_logprobs, constraint=constraint,
                on_token=post, on_prompt=post, on_error=post,  # every event goes to the one queue
            )  # fmt: skip
            requests.append(request)
        try:
            for r in requests:
                self.batcher.submit(r)
        except LlmkitError as err:  # longer than the KV cache holds (--kv-cache-mb): no retry can help
            for r in requests:
                r.cancel()
            raise ApiError(400, str(err), param="max_tokens", code="context_length_exceeded") from None
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
                if isinstance(event, Exception):
                    self._failed(i, requests[i], grammars)
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

    @staticmethod
    def _failed(i: int, request: BatchRequest, grammars: RequestGrammar | None) -> None:
        """A choice that failed: a 400 naming the field when its grammar failed while decoding (an engine limit
        the checks before admission could not see; the batcher has already dropped that row alone), else
        nothing here (the request was valid: a failure of ours, e.g. NaN scores, answered as a 500)."""
        why = grammar_failure(request.constraint) if grammars is not None else None
        if why is not None:
            raise ApiError(
                400, f"choice {i}: the {grammars.field} grammar failed while decoding: {why}; simplify the grammar",
                param=grammars.field, code="grammar_failed",
            )  # fmt: skip

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
        """vLLM's /tokenize: a prompt, or chat ``messages`` rendered as a prompt for generation (which a model
        with a classification head refuses: it cannot generate)."""
        if body.messages is not None and self.refusal is not None:
            raise ApiError(400, self.refusal, param="messages", code="model_has_classification_head")
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


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def sse(chunks: AsyncIterator[dict]) -> StreamingResponse:
    """Server-sent events as OpenAI sends them: ``data: {json}`` per chunk, then ``data: [DONE]``.
    An error after the stream has started cannot change the status, so it goes out as an error event
    with the error's own type (server_error for a failure of ours)."""

    async def body() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        except ApiError as err:
            yield f"data: {json.dumps(error_body(err.message, error_type(err.status), err.param, err.code))}\n\n"
        except Exception as err:  # noqa: BLE001 - the client must learn that the stream broke
            body = error_body(f"internal error: {type(err).__name__}", error_type(500), code="internal_error")
            yield f"data: {json.dumps(body)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
