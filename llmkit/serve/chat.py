"""``POST /v1/chat/completions``: OpenAI's chat completions, answered whole or streamed, with tools.

The messages are rendered by the terminal chat's template (llmkit.chat.template: one renderer, with tools;
``ChatTemplate`` is re-exported here, as the CLI and tests import it from this module). With ``tools`` the
reply is decoded under the call's grammar and a call comes back as ``tool_calls`` (llmkit.serve.structured);
the checks, limits and decoding are the Server's (llmkit.serve.server).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from llmkit.chat.template import PLAIN_STOP, ChatTemplate
from llmkit.errors import LlmkitError
from llmkit.inference.batcher import TokenEvent
from llmkit.serve.errors import ApiError
from llmkit.serve.logprobs import chat_logprob
from llmkit.serve.openapi import reads
from llmkit.serve.schemas import ChatRequest
from llmkit.serve.server import FINISH, Server, sse, usage
from llmkit.serve.structured import ToolSetup, call_deltas, opens_call, tool_reply
from llmkit.serve.structured import tool_setup as check_tool_setup

__all__ = ["PLAIN_STOP", "ChatTemplate", "register_chat"]


def register_chat(app: FastAPI, server: Server) -> None:
    """Add ``POST /v1/chat/completions`` to ``app``."""

    @app.post("/v1/chat/completions")
    @reads(ChatRequest)
    async def chat(request: Request):  # the name FastAPI gives the operation: chat_v1_chat_completions_post
        server.authorize(request)
        server.check_generates()
        body = await server.read(request, ChatRequest)
        return await chat_completion(server, request, body)


async def chat_completion(server: Server, http: Request, body: ChatRequest):
    """Chat completions; with ``tools`` the reply is decoded under the call's grammar and a call comes back
    as ``tool_calls`` (llmkit.serve.structured)."""
    template = server.settings.chat
    try:
        tools = [t.model_dump(exclude_none=True) for t in body.tools] if body.tools is not None else None
        choice = body.tool_choice.model_dump() if isinstance(body.tool_choice, BaseModel) else body.tool_choice
        setup = check_tool_setup(tools, choice, body.parallel_tool_calls)
    except LlmkitError as err:
        param = getattr(err, "param", None) or ("tool_choice" if "tool_choice" in str(err) else "tools")
        raise ApiError(400, str(err), param=param, code="invalid_value") from None
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    shown = setup.tools if setup.active else None  # tool_choice "none": the model is not told of them
    try:
        prompt = await run_in_threadpool(lambda: template.render(messages, tools=shown))
    except LlmkitError as err:
        raise ApiError(400, str(err), param="messages", code="invalid_value") from None
    ids = await server.encode_async(prompt)
    configs = server.configs(body, len(ids), default=None, extra_stop=template.stop)
    grammars = await server.grammars(body, setup)
    server.admit(len(configs))
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": server.settings.name}  # fmt: skip
    top = (body.top_logprobs or 0) if body.logprobs else 0
    events = server.events(http, [(ids, cfg) for cfg in configs], top, watch=not body.stream, grammars=grammars)
    if body.stream:
        head = {**head, "object": "chat.completion.chunk"}
        return sse(_chat_chunks(server, head, body, events, len(ids), setup))
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
        logprobs = {"content": [chat_logprob(server.tokenizer, ev) for ev in logs[i]]} if body.logprobs else None
        choices.append({"index": i, "message": message, "finish_reason": reason, "logprobs": logprobs})
    return {**head, "choices": choices, "usage": usage(len(ids), sum(map(len, logs)))}


async def _chat_chunks(
    server: Server, head, body: ChatRequest, events, prompt_tokens: int, setup: ToolSetup
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
        logprobs = {"content": [chat_logprob(server.tokenizer, ev)]} if body.logprobs else None
        delta = {"content": ev.text} if ev.text or reason is None else {}
        yield chunk(i, delta, reason, logprobs)
    if body.include_usage:  # OpenAI's last chunk: no choices, the request's usage
        yield {**head, "choices": [], "usage": usage(prompt_tokens, completion)}
