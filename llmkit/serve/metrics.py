"""``GET /metrics``: the server's counters in Prometheus' text format, through prometheus_client.

Each app has its own ``CollectorRegistry`` (not the library's global one), so a process can hold
several apps (the tests do) without their series colliding. Names follow vLLM's where one exists:
requests by route and status, prompt and generated tokens, waiting and running choices, the batch
size of every decoding step, time to first token and time per output token.
"""

from __future__ import annotations

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
            waiting.set_function(batcher.pending.qsize)
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
