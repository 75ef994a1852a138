"""``POST /classify`` (and ``/v1/classify``) for a checkpoint with a classification head, in vLLM's shape.

vLLM's classification API (what SGLang also copies): request ``{"model", "input": str | list[str]}``
(``model`` optional, as on the other routes of this server; ``user`` accepted and ignored), response
``{"id": "classify-...", "object": "list", "created", "model", "data": [{"index", "label", "probs",
"num_classes"}], "usage": {"prompt_tokens", "total_tokens", "completion_tokens": 0,
"prompt_tokens_details": null}}``; ``probs`` are the per-label probabilities in the head's order (softmax,
or a sigmoid for a one-label head: ``llmkit.predict.classify``), ``label`` the most likely one. A token
classifier answers each input with ``entities`` (``entity_group``, ``score``, ``word``, ``start``, ``end``:
``llmkit predict``'s, grouped as transformers' "simple" strategy) in place of ``label`` and ``probs``,
and ``num_classes``.

The model runs in a worker thread, one request at a time (a lock), in batches of ``--max-batch`` texts.
On a head model the generation routes (completions, chat, explain, and /tokenize with chat ``messages``, which
renders a prompt for generation) answer a one-line 400 naming this one: ``refusal``, which the server gives them
(``Server.check_generates``).
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, StrictStr
from starlette.concurrency import run_in_threadpool

from llmkit.errors import LlmkitError
from llmkit.inference.loading import head_kind
from llmkit.predict import predict
from llmkit.predict.classify import ClassScores
from llmkit.serve.errors import ApiError
from llmkit.serve.openapi import reads

MAX_INPUTS = 2048  # as /v1/embeddings


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = None
    input: StrictStr | list[StrictStr]
    user: StrictStr | None = None


def classify_item(index: int, p) -> dict[str, Any]:
    """One input's entry of ``data``."""
    if isinstance(p, ClassScores):
        return {"index": index, "label": p.label, "probs": p.scores, "num_classes": len(p.labels)}
    return {"index": index, "entities": [e.to_dict() for e in p.entities], "num_classes": len(p.labels)}


def refusal(config, name: str) -> str:
    """What the generation routes answer a model named ``name`` with a classification head (``config``'s)."""
    kind, labels = head_kind(config), config.label_names()
    return (
        f"'{name}' has a {kind}-classification head (labels {', '.join(labels[:8])}"
        f"{', ...' if len(labels) > 8 else ''}); it cannot generate text: POST /classify with "
        '{"input": ...} returns its predictions'
    )


def register_classify(app: FastAPI, server) -> None:
    """Add ``POST /classify`` and ``POST /v1/classify`` to ``app``; ``server`` (llmkit.serve.server.Server)
    gives the API-key check and body reader."""
    model, settings = server.model, server.settings
    lock = threading.Lock()

    def run(texts: list[str]):
        with lock:
            return predict(model, texts, batch_size=settings.max_batch)

    @reads(ClassifyRequest)
    async def classify(request: Request) -> dict[str, Any]:
        server.authorize(request)
        body = await server.read(request, ClassifyRequest)
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if not texts:
            raise ApiError(400, "input: must not be empty", param="input", code="invalid_value")
        if len(texts) > MAX_INPUTS:
            raise ApiError(400, f"input: at most {MAX_INPUTS} items per request", param="input", code="invalid_value")
        empty = next((i for i, t in enumerate(texts) if not t), None)
        if empty is not None:
            raise ApiError(400, f"input[{empty}] is empty", param="input", code="invalid_value")
        try:
            predictions = await run_in_threadpool(run, texts)
        except LlmkitError as err:
            raise ApiError(400, str(err), param="input", code="invalid_value") from None
        tokens = sum(p.tokens if isinstance(p, ClassScores) else p.read for p in predictions)
        return {
            "id": f"classify-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
            "model": settings.name, "data": [classify_item(i, p) for i, p in enumerate(predictions)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0,
                      "prompt_tokens_details": None},
        }  # fmt: skip

    for path in ("/classify", "/v1/classify"):
        app.add_api_route(path, classify, methods=["POST"])
