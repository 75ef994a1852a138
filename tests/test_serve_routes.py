"""The server's layout: what lists routes reads the registered routes (metrics labels, the OpenAPI request
bodies), batcher requests are built with keyword arguments, and no module of llmkit/serve passes 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import Request
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from llmkit import checkpoint
from llmkit.serve.app import ServeSettings, create_app
from llmkit.serve.openapi import reads
from llmkit.serve.schemas import TokenizeRequest

SERVE = Path(__file__).resolve().parents[1] / "llmkit" / "serve"


@pytest.fixture(scope="module")
def app(tiny_checkpoint):
    return create_app(checkpoint.load(tiny_checkpoint()), ServeSettings(name="tiny"))


def request_counts(client: TestClient) -> dict[tuple[str, str], float]:
    """(route label, status) -> count, from /metrics."""
    return {
        (s.labels["route"], s.labels["status"]): s.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for s in family.samples
        if s.name == "llmkit_requests_total"
    }


def test_requests_are_counted_under_the_registered_routes(app):
    with TestClient(app) as client:
        client.get("/health")
        client.get("/v1/models/tiny")
        client.get("/v1/models/some/other")
        client.post("/classify", json={"input": "x"})  # a classifier's route, not registered on a generator
        client.post("/v1/embeddings", json={"model": "x", "input": "x"})  # registered only with --embedder
        client.get("/nowhere")
        counts = request_counts(client)
    assert counts[("/health", "200")] == 1
    assert counts[("/v1/models/{id}", "200")] == 1 and counts[("/v1/models/{id}", "404")] == 1
    assert counts[("other", "404")] == 3  # /classify, /v1/embeddings, /nowhere: no route of this app
    assert not any(route in ("/classify", "/v1/embeddings", "/nowhere") for route, _ in counts)


def test_the_openapi_bodies_are_those_of_the_registered_routes(tiny_checkpoint):
    app = create_app(checkpoint.load(tiny_checkpoint()), ServeSettings(name="tiny"))

    @app.post("/v1/extra")  # a route group added later documents its body by marking its endpoint
    @reads(TokenizeRequest)
    async def extra(request: Request) -> dict:
        return {}

    doc = app.openapi()
    with_body = {path for path, item in doc["paths"].items() if "requestBody" in item.get("post", {})}
    assert with_body == {
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/explain",
        "/tokenize",
        "/detokenize",
        "/v1/extra",
    }
    assert doc["paths"]["/v1/extra"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TokenizeRequest"
    }
    # a generation body's model is one of the server's names; the others keep a free string
    assert doc["components"]["schemas"]["ChatRequest"]["properties"]["model"]["anyOf"][0]["enum"] == ["tiny"]
    assert "enum" not in str(doc["components"]["schemas"]["TokenizeRequest"]["properties"]["model"])


def test_the_embeddings_body_is_documented_when_the_route_is_registered(tiny_checkpoint):
    model = checkpoint.load(tiny_checkpoint())
    embedder = SimpleNamespace(name="all-MiniLM-L6-v2")  # never loaded: the document needs its name alone
    doc = create_app(model, ServeSettings(name="tiny", embedder=embedder)).openapi()
    body = doc["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/EmbeddingRequest"}
    assert "model" in doc["components"]["schemas"]["EmbeddingRequest"]["required"]  # the field's public name
    assert "/v1/embeddings" not in create_app(model, ServeSettings(name="tiny")).openapi()["paths"]


def batcher_request_calls(path: Path) -> list[ast.Call]:
    """The calls in ``path`` of llmkit.inference.batcher's Request, under whatever name it was imported."""
    tree = ast.parse(path.read_text())
    names = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "llmkit.inference.batcher"
        for alias in node.names
        if alias.name == "Request"
    }
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names
    ]


def test_batcher_requests_are_built_with_keyword_arguments():
    # Request(ids, cfg, post, post, logprobs, prompt_logprobs, post) cannot be read: which post is which?
    calls = [(path, call) for path in sorted(SERVE.parent.rglob("*.py")) for call in batcher_request_calls(path)]
    assert calls, "the server builds batcher requests somewhere"
    for path, call in calls:
        assert not call.args, f"{path.name}:{call.lineno}: build the batcher Request with keyword arguments"


@pytest.mark.parametrize("path", sorted(SERVE.glob("*.py")), ids=lambda p: p.name)
def test_serve_modules_stay_small(path):
    # DESIGN.md: split a file when it passes ~400 lines (serve/app.py had grown to 796)
    lines = len(path.read_text().splitlines())
    assert lines <= 400, f"llmkit/serve/{path.name} has {lines} lines: split it along its routes"
