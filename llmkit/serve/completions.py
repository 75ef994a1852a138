"""``POST /v1/completions``: OpenAI's legacy completions, answered whole or streamed as server-sent events.

Each prompt (text or token ids) gets ``n`` choices, decoded together by the batcher; ``echo`` returns the
prompt before the choice's text, and with ``logprobs`` the prompt's own tokens are scored too (lm-evaluation-
harness reads that shape). The checks, limits and decoding are the Server's (llmkit.serve.server).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

from llmkit.inference.batcher import PromptScores, TokenEvent
from llmkit.serve.logprobs import completion_logprobs, with_prompt
from llmkit.serve.openapi import reads
from llmkit.serve.schemas import CompletionRequest
from llmkit.serve.server import FINISH, Server, sse, usage


def register_completions(app: FastAPI, server: Server) -> None:
    """Add ``POST /v1/completions`` to ``app``."""

    @app.post("/v1/completions")
    @reads(CompletionRequest)
    async def completions(request: Request):
        server.authorize(request)
        server.check_generates()
        body = await server.read(request, CompletionRequest)
        return await complete(server, request, body)


async def complete(server: Server, http: Request, body: CompletionRequest):
    """Each prompt (text or token ids) gets ``n`` choices, index prompt * n + j, all decoded in the batch.
    ``echo`` puts the prompt before each choice's text; with ``logprobs`` the prompt's own tokens come
    first in the logprobs (the first one's null), from the prefill's logits."""
    prompts = body.prompts()
    ids_of = [await server.encode_async(p) if isinstance(p, str) else server.check_ids(p, "prompt") for p in prompts]
    echoes = [await _echo_text(server, p, ids) if body.echo else "" for p, ids in zip(prompts, ids_of, strict=True)]
    jobs = [(ids, cfg) for ids in ids_of for cfg in server.configs(body, len(ids), default=16)]
    grammars = await server.grammars(body)
    server.admit(len(jobs))
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": server.settings.name}  # fmt: skip
    scoring = body.echo and body.logprobs is not None
    events = server.events(http, jobs, body.logprobs or 0, watch=not body.stream, prompt_logprobs=scoring,
                           grammars=grammars)  # fmt: skip
    echo_of = [echoes[i // body.n] for i in range(len(jobs))]
    if body.stream:
        return sse(_completion_chunks(server, head, body, events, echo_of, jobs))
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
         "logprobs": await _logprobs(server, logs[i], prompt_scores[i] if scoring else None, echo_of[i])
         if body.logprobs is not None else None}
        for i in range(len(jobs))
    ]  # fmt: skip
    return {**head, "choices": choices, "usage": usage(sum(map(len, ids_of)), sum(map(len, logs)))}


async def _echo_text(server: Server, prompt: str | list[int], ids: list[int]) -> str:
    """The text ``echo`` returns: the prompt as sent, or its token ids decoded."""
    return prompt if isinstance(prompt, str) else await run_in_threadpool(server.tokenizer.decode, ids)


async def _completion_chunks(
    server: Server, head, body: CompletionRequest, events, echo_of, jobs
) -> AsyncIterator[dict]:
    """The stream's chunks, one per token of a choice; an echo goes first (with its logprobs when scored), and
    with ``include_usage`` a last chunk carries the usage."""

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
            logprobs = await _logprobs(server, [], ev, echo_of[i])
            yield chunk(i, echo_of[i], logprobs, None if jobs[i][1].max_new_tokens else "length")
            continue
        completion += 1
        logprobs = completion_logprobs(server.tokenizer, [ev], offsets[i]) if body.logprobs is not None else None
        offsets[i] += len(ev.text)
        yield chunk(i, ev.text, logprobs, FINISH[ev.finish_reason] if ev.finish_reason else None)
    if body.include_usage:
        prompt_tokens = sum(len(jobs[i][0]) for i in range(0, len(jobs), body.n))
        yield {**head, "choices": [], "usage": usage(prompt_tokens, completion)}


async def _logprobs(server: Server, events: list[TokenEvent], prompt: PromptScores | None, echo: str) -> dict[str, Any]:
    """A choice's logprobs object; the prompt's offsets decode every prefix, so in a worker thread."""
    generated = completion_logprobs(server.tokenizer, events, len(echo))
    if prompt is None:
        return generated
    return await run_in_threadpool(with_prompt, server.tokenizer, prompt, generated)
