"""``GET /metrics``: the server's counters in Prometheus' text format, through prometheus_client.

Each app has its own ``CollectorRegistry`` (not the library's global one), so a process can hold
several apps (the tests do) without their series colliding. Names follow vLLM's where one exists:
requests by route and status, prompt and generated tokens, waiting and running choices, the batch
size of every decoding step, time to first token and time per output token. ``RequestCounter`` counts
each answered request under its route, the routes being those the app has registered.
"""

from __future__ import annotations

import re

from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from llmkit.inference.batcher import Batcher

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The collectors of one app; the server calls ``request``, ``tokens``, ``first_token``, ``next_token``."""

    def __init__(self, batcher: Batcher | None) -> None:
        """``batcher`` None (a classifier's server): the queue gauges stay 0 and no step is observed."""
        self.registry = r = CollectorRegistry()
        self.requests = Counter("llmkit_requests", "HTTP requests answered", ["route", "status"], registry=r)
        self.prompt_tokens = Counter("llmkit_prompt_tokens", "Prompt tokens read", registry=r)
        self.generation_tokens = Counter("llmkit_generation_tokens", "Tokens generated", registry=r)
        waiting = Gauge("llmkit_requests_waiting", "Choices queued for a row in the batch", registry=r)
        running = Gauge("llmkit_requests_running", "Choices decoding in the batch", registry=r)
        if batcher is not None:
            waiting.set_function(batcher.queued)
            running.set_function(lambda: len(batcher.slots))
        self.batch_size = Histogram(
            "llmkit_batch_size", "Rows decoded together per decoding step", buckets=BATCH_BUCKETS, registry=r
        )
        self.ttft = Histogram(
            "llmkit_time_to_first_token_seconds", "From a choice's submission to its first token",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.tpot = Histogram(
            "llmkit_time_per_output_token_seconds", "Between consecutive tokens of a choice",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        if batcher is not None:  # on_step is called on the batcher's thread; prometheus_client is thread-safe
            batcher.on_step = self.batch_size.observe

    def render(self) -> bytes:
        """The text exposition of every collector."""
        return generate_latest(self.registry)


def route_label(route: APIRoute) -> str:
    """A route's label: its path, each parameter written ``{id}`` (``/v1/models/{id}``)."""
    return re.sub(r"\{[^}]*\}", "{id}", route.path_format)


class RequestCounter:
    """ASGI middleware counting each answered request by route and status. The routes are ``routes`` (the
    app's own, as registered; FastAPI's /openapi.json is not one); any other path counts as "other" (one
    series per path a scanner tries would grow without bound). Plain ASGI, not ``app.middleware``:
    Starlette's BaseHTTPMiddleware hides a client's disconnect from the handler."""

    def __init__(self, app, metrics: Metrics, routes: list[APIRoute]) -> None:
        self.app, self.metrics = app, metrics
        self.paths = {route.path for route in routes if not route.param_convertors}
        self.templates = [(route.path_regex, route_label(route)) for route in routes if route.param_convertors]

    def label(self, path: str) -> str:
        """The route ``path`` is counted under."""
        if path in self.paths:
            return path
        return next((label for regex, label in self.templates if regex.match(path)), "other")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = self.label(scope["path"])

        async def counted(message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(route=route, status=str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counted)
