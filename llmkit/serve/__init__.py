"""`llmkit serve`: an OpenAI-compatible HTTP API and a playground page over one model (FastAPI).

- app.py: builds the app (routes, API key, body limits, streaming, JSON errors, /openapi.json);
- schemas.py: the validated request bodies and OpenAI's error object;
- chat.py: the chat template that turns messages into a prompt (re-exported from llmkit.chat);
- structured.py: response_format / guided_* / tools -> the request's grammar; replies -> tool_calls;
- logprobs.py: OpenAI's logprobs objects (completions and chat) from the engine's scores;
- classify.py: POST /classify in vLLM's shape for a model with a classification head;
- embeddings.py: POST /v1/embeddings over a retrieval Embedder (``--embedder``);
- metrics.py: Prometheus counters and histograms behind /metrics;
- connections.py: uvicorn's h11 protocol with a deadline for request headers;
- playground.html: the page at ``/``.

Decoding is llmkit.inference.batcher's (continuous batching); nothing here does model math.
"""
