"""The OpenAPI document at /openapi.json: FastAPI's, plus the request bodies the routes read themselves.

Routes read their bodies through ``Server.read`` (to bound their size and time), so FastAPI cannot see the
schemas; a route says which one it reads with ``@reads(Schema)`` and the document is built from the routes
the app has registered, for client generators and fuzzers (schemathesis) that read it.
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


def openapi_document(app: FastAPI, names: list[str]) -> dict[str, Any]:
    """The document FastAPI builds, plus the request bodies; a generation body's ``model`` is one of ``names``
    (the names of this server's model). Built once, on the first call."""
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
                schemas[model.__name__]["properties"]["model"] = {"type": "string", "enum": names, "title": "Model"}
        for path, model in bodies.items():
            doc["paths"][path]["post"]["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
            }
        app.openapi_schema = doc
    return app.openapi_schema
