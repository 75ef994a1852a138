"""``POST /v1/embeddings`` in OpenAI's request and response shape, over an ``Embedder`` (llmkit.retrieval.embed).

Request: ``model`` (the embedder's id), ``input`` (a string, a list of strings, a list of token ids, or
a list of such lists; at most 2048 items, none empty), ``encoding_format`` ("float", or "base64": the
little-endian float32 bytes, which the official client asks for by default and decodes with numpy),
``dimensions`` (accepted only when equal to the model's: an encoder not trained for shortened vectors
would return worse ones, so it is refused, not silently cut), ``user`` (ignored).
Response: ``{"object": "list", "data": [{"object": "embedding", "index", "embedding"}], "model",
"usage": {"prompt_tokens", "total_tokens"}}``; the token counts are the tokens the encoder read, [CLS]
and [SEP] included.

Token-id inputs are refused unless the server takes them (``ServeSettings.embedding_token_ids``, `llmkit serve
--embedding-token-ids`): the ids a client sends are its own tokenizer's, and LangChain's ``OpenAIEmbeddings``
sends OpenAI's (tiktoken) by default, which this encoder would read as other tokens (cosine 0.026 to the right
vector) without any error. The 400 tells LangChain users to set ``check_embedding_ctx_length=False`` (then it
sends text). Taken, they are this encoder's own text tokens: [CLS] and [SEP] are added as for text.

The embedder is listed by ``GET /v1/models`` beside the generator, and ``GET /v1/models/{id}`` answers for it
(``embedder_card``), so a client finds its id without reading an error message.

``llmkit serve`` passes a ``DeferredEmbedder``: the encoder loads on the first request, so the server
starts as fast as without it. The encoder runs in a worker thread, one request at a time (a lock): it
shares the CPU with the decoding batcher, and a forward pass already uses every thread torch has.
"""

from __future__ import annotations

import base64
import threading
from typing import Literal

import numpy as np
from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from llmkit.errors import LlmkitError
from llmkit.inference.loading import name_slug
from llmkit.serve.errors import ApiError
from llmkit.serve.openapi import reads

MAX_INPUTS = 2048  # OpenAI's limit on inputs per request


class DeferredEmbedder:
    """An embedder loaded on the first request, so `llmkit serve` is up (and answers /v1/models) without
    waiting for the encoder; ``name`` is read from the folder at once, without loading it."""

    def __init__(self, directory, device: str = "cpu", verify: bool = True) -> None:
        from llmkit.inference.loading import model_name

        self.directory, self.device, self.verify = directory, device, verify
        self.name = model_name(directory)
        self.max_length = _window(directory)  # for /v1/models, before the encoder loads
        self._loaded = None
        self._lock = threading.Lock()

    def get(self):
        with self._lock:
            if self._loaded is None:
                from llmkit.retrieval.embed import Embedder

                self._loaded = Embedder.load(self.directory, self.device, verify=self.verify)
            return self._loaded


class EmbeddingRequest(BaseModel):
    # the field is not named `model`: the app's body reader checks `body.model` against the generator's id
    model_config = ConfigDict(extra="forbid")

    requested: str = Field(alias="model")
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


def embedder_id(embedder) -> str:
    """The model id clients send for ``embedder``: its name as one word (``all-MiniLM-L6-v2``)."""
    return name_slug(embedder.name)


def embedder_card(embedder, created: int) -> dict:
    """The embedder's entry in ``/v1/models`` (vLLM's fields; ``max_model_len``: tokens per input it reads)."""
    card = {"id": embedder_id(embedder), "object": "model", "created": created, "owned_by": "llmkit",
            "root": embedder.name}  # fmt: skip
    length = getattr(embedder, "max_length", None)
    return {**card, "max_model_len": length} if length else card


def _window(directory) -> int | None:
    """Tokens per input the encoder in ``directory`` reads (its window, or sentence-transformers' shorter
    max_seq_length), from its JSON files alone; None when they do not say."""
    import json
    from pathlib import Path

    directory = Path(directory)
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        window = config.get("max_seq_len") or config.get("max_position_embeddings")
        bert = directory / "sentence_bert_config.json"
        pooled = json.loads(bert.read_text(encoding="utf-8")).get("max_seq_length") if bert.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None
    lengths = [n for n in (window, pooled) if isinstance(n, int) and n > 0]
    return min(lengths) if lengths else None


def register_embeddings(app: FastAPI, server, source, token_ids: bool = False) -> None:
    """Add ``POST /v1/embeddings`` to ``app`` over ``source`` (an Embedder, or a DeferredEmbedder loaded on the
    first request); ``server`` (llmkit.serve.server.Server) gives the app's API-key check and body reader;
    ``token_ids``: token-id inputs are taken (as this encoder's own tokens) rather than refused."""
    lock = threading.Lock()
    name = embedder_id(source)

    def load():
        try:
            return source.get() if isinstance(source, DeferredEmbedder) else source
        except LlmkitError as err:
            raise ApiError(500, f"the embedder could not be loaded: {err}", code="embedder_unavailable") from None

    def rows_of(body: EmbeddingRequest, embedder) -> list[list[int]]:
        items = [body.input] if isinstance(body.input, str) or _is_ids(body.input) else list(body.input)
        if not items:
            raise ApiError(400, "input: must not be empty", param="input", code="invalid_value")
        if len(items) > MAX_INPUTS:
            raise ApiError(400, f"input: at most {MAX_INPUTS} items per request", param="input", code="invalid_value")
        if any(len(item) == 0 for item in items):
            raise ApiError(400, "input: an item is empty", param="input", code="invalid_value")
        if not token_ids and any(not isinstance(item, str) for item in items):
            raise ApiError(
                400, f"input: token ids are refused: they would be read as {name}'s own tokens, and clients send "
                "other tokenizers' (LangChain's OpenAIEmbeddings sends OpenAI's unless check_embedding_ctx_length="
                "False); send text, or start the server with --embedding-token-ids",
                param="input", code="token_ids_refused",
            )  # fmt: skip
        texts = [i for i in items if isinstance(i, str)]
        encoded = iter(embedder.encode(texts)) if texts else iter(())
        return [next(encoded) if isinstance(item, str) else wrap(item, embedder) for item in items]

    def wrap(ids: list[int], embedder) -> list[int]:
        vocab = embedder.model.config.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ApiError(400, f"input: token id {bad[0]} is outside the vocabulary of {vocab}", param="input")
        tok = embedder.tokenizer
        head = [tok.cls_token_id] if tok.cls_token_id is not None else []
        tail = [tok.sep_token_id] if tok.sep_token_id is not None else []
        room = embedder.max_length - len(head) - len(tail)
        return head + list(ids[:room]) + tail

    def embed(rows: list[list[int]], embedder) -> np.ndarray:
        with lock:
            return embedder.embed_ids(rows)

    @app.post("/v1/embeddings")
    @reads(EmbeddingRequest)
    async def embeddings(request: Request):
        server.authorize(request)
        body = await server.read(request, EmbeddingRequest)
        if body.requested != name:
            raise ApiError(
                404, f"model '{body.requested}' does not exist; this server embeds with '{name}'",
                param="model", code="model_not_found",
            )  # fmt: skip
        embedder = await run_in_threadpool(load)
        if body.dimensions is not None and body.dimensions != embedder.dim:
            raise ApiError(
                400, f"dimensions: {name} gives {embedder.dim}-dimensional vectors and cannot shorten them",
                param="dimensions", code="invalid_value",
            )  # fmt: skip
        rows = await run_in_threadpool(rows_of, body, embedder)
        vectors = await run_in_threadpool(embed, rows, embedder)
        data = [
            {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
            for i, v in enumerate(vectors)
        ]
        tokens = sum(map(len, rows))
        return {
            "object": "list",
            "data": data,
            "model": name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


def _is_ids(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, int) for v in value)


def _encode(vector: np.ndarray, fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()
