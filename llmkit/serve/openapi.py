"""The OpenAPI document at /openapi.json: FastAPI's, plus what the server really does.

Routes read their bodies through ``Server.read`` (to bound their size and time), so FastAPI cannot see the
schemas; a route says which one it reads with ``@reads(Schema)`` and the document is built from the routes
the app has registered, for client generators and fuzzers (schemathesis) that read it. Added to FastAPI's:

- every status a route answers, with OpenAI's error object (``ErrorResponse``): 400 (a body or value refused),
  401 (the API key), 403 (llmkit.serve.guard's Host/Origin checks), 404 (an unknown model), 413 (the body
  limit), 429 with ``Retry-After`` (a full queue), 500 (a failure of ours); no 422 (validation is a 400, as
  OpenAI and vLLM answer it). A wrong method is a 405 with ``Allow`` (errors.py), for any path.
- the 200's real media types: server-sent events beside JSON for the streaming routes, Prometheus text for
  /metrics, HTML for the playground;
- the limits the server's own checks enforce, where a schema can say them (``limits``): the model's names,
  ``max_tokens`` up to the server's, token ids inside the vocabulary, at most ``max_stop`` stop strings.
  What no schema can say (the context window counted in tokens, a grammar the engine cannot compile) stays a
  400 for a body the schema allows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from llmkit.serve.schemas import Sampling


def reads(schema: type[BaseModel]) -> Callable:
    """Mark a route's endpoint as reading a ``schema`` body (with ``Server.read``), for the document."""

    def mark(endpoint: Callable) -> Callable:
        endpoint.request_body = schema
        return endpoint

    return mark


def request_bodies(app: FastAPI) -> dict[str, type[BaseModel]]:
    """path -> the body schema its route reads, for each registered route marked with ``reads``."""
    return {
        route.path: route.endpoint.request_body
        for route in app.routes
        if isinstance(route, APIRoute) and hasattr(route.endpoint, "request_body")
    }


ERROR = {"$ref": "#/components/schemas/ErrorResponse"}
ERROR_SCHEMA = {
    "type": "object", "required": ["error"], "title": "ErrorResponse",
    "properties": {"error": {"type": "object", "required": ["message", "type", "param", "code"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"}, "param": {"type": ["string", "null"]},
        "code": {"type": ["string", "null"]}}}},
}  # fmt: skip
WHY = {400: "the body or a value is refused", 401: "missing or wrong API key", 403: "another Host or web origin",
       404: "unknown model", 413: "body too large", 429: "the queue is full: retry after Retry-After seconds",
       500: "a failure of the server's"}  # fmt: skip
STREAMS = ("/v1/completions", "/v1/chat/completions")  # 200: JSON, or server-sent events with "stream": true
OPEN = ("/", "/health")  # no API key asked


def openapi_document(
    app: FastAPI, names: list[str], limits: dict[str, int] | None = None, keyed: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The document FastAPI builds, plus the request bodies, the statuses and the server's ``limits``
    (max_tokens, vocab, max_stop); a generation body's ``model`` is one of ``names`` (the names of this server's
    model); ``keyed``: the paths that need the API key (none without one), declared as bearer authentication.
    Built once, on the first call."""
    if app.openapi_schema is None:
        bodies = request_bodies(app)
        doc = get_openapi(title=app.title, version="1", routes=app.routes)
        _, defs = models_json_schema(
            [(model, "validation") for model in bodies.values()], ref_template="#/components/schemas/{model}"
        )
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(defs.get("$defs", {}))
        for model in bodies.values():
            if issubclass(model, Sampling):  # completions and chat
                # optional, as in vLLM: null (or no model) is the one model served. Saying only the enum made the
                # document refuse null, which the server takes: the fuzzer's AcceptedNegativeData flake
                named = {"type": "string", "enum": names}
                schemas[model.__name__]["properties"]["model"] = {"anyOf": [named, {"type": "null"}], "title": "Model"}
        for path, model in bodies.items():
            doc["paths"][path]["post"]["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
            }
        schemas["ErrorResponse"] = ERROR_SCHEMA
        for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422: never sent (errors.py)
            schemas.pop(name, None)
        for path, operations in doc["paths"].items():
            for method, operation in operations.items():
                operation["responses"] = _responses(path, method, operation["responses"], path in bodies)
                if path in keyed:
                    operation["security"] = [{"apiKey": []}]
        if keyed:
            doc["components"]["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
        _limit(schemas, limits or {})
        app.openapi_schema = doc
    return app.openapi_schema


def _responses(path: str, method: str, given: dict[str, Any], has_body: bool) -> dict[str, Any]:
    """The statuses ``path`` answers (module docstring), each with its media type and headers."""
    ok = given.get("200", {"description": "OK"})
    if path in STREAMS:
        event = {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}  # one SSE event
        ok = {**ok, "content": {**ok.get("content", {}), "text/event-stream": {"schema": event}}}
    if path == "/metrics":
        ok = {**ok, "content": {"text/plain": {"schema": {"type": "string"}}}}
    statuses = [401, 403, 500] if path not in OPEN else [403, 500]
    if has_body:
        statuses += [400, 404, 413]
        if path in (*STREAMS, "/v1/explain"):
            statuses.append(429)
    elif "{" in path:
        statuses.append(404)
    out = {"200": ok}
    for status in sorted(statuses):
        answer = {"description": WHY[status], "content": {"application/json": {"schema": ERROR}}}
        if status == 429:
            answer["headers"] = {"Retry-After": {"description": "seconds", "schema": {"type": "string"}}}
        out[str(status)] = answer
    return out


def _limit(schemas: dict[str, Any], limits: dict[str, int]) -> None:
    """The server's own limits written into the request schemas, where a schema can say them."""
    tokens = limits.get("max_tokens")
    for name in ("CompletionRequest", "ChatRequest"):
        props = schemas.get(name, {}).get("properties", {})
        for field in ("max_tokens", "max_completion_tokens"):
            if tokens and field in props:
                _cap(props[field], "maximum", tokens)
        if "max_stop" in limits and "stop" in props:
            _cap(props["stop"], "maxItems", limits["max_stop"])
    if tokens and "ExplainRequest" in schemas:
        _cap(schemas["ExplainRequest"]["properties"]["max_tokens"], "maximum", tokens)
    if "vocab" in limits:  # the generator's token ids: a prompt's and /detokenize's
        for name in ("CompletionRequest", "DetokenizeRequest"):
            _cap_ids(schemas.get(name), limits["vocab"] - 1)


def _cap(schema: dict[str, Any], key: str, value: int) -> None:
    """``key`` (maximum, maxItems) set to at most ``value`` on ``schema`` and the branches of its anyOf; on the
    arrays of a string-or-list field only."""
    for branch in schema.get("anyOf", [schema]):
        if key == "maximum" and branch.get("type") == "integer":
            branch[key] = min(branch.get(key, value), value)
        if key == "maxItems" and branch.get("type") == "array":
            branch[key] = min(branch.get(key, value), value)


def _cap_ids(node: Any, top: int) -> None:
    """``maximum: top`` on the integers of every array of integers under ``node`` (token ids)."""
    if isinstance(node, dict):
        items = node.get("items")
        if node.get("type") == "array" and isinstance(items, dict) and items.get("type") == "integer":
            items["maximum"] = min(items.get("maximum", top), top)
        for value in node.values():
            _cap_ids(value, top)
    elif isinstance(node, list):
        for value in node:
            _cap_ids(value, top)
