"""`llmkit serve`: an OpenAI-compatible HTTP API and a playground page over one model (FastAPI).

- app.py: builds the app (create_app): the route groups below, error handlers, middleware; and its own routes:
  the playground, /health, /metrics, /v1/models, /v1/explain, vLLM's /tokenize and /detokenize;
- server.py: ServeSettings and the Server every route shares (API key, body limits, model names, admission,
  generation configs, the batcher's events, SSE streaming);
- errors.py: ApiError and the handlers that answer every failure in OpenAI's error shape;
- guard.py: the Host and Origin checks that keep web pages from driving the server;
- completions.py: POST /v1/completions (echo, logprobs, streaming);
- chat.py: POST /v1/chat/completions (tools, streaming); re-exports the chat template (llmkit.chat.template);
- openapi.py: the /openapi.json document, with the request bodies the registered routes read;
- schemas.py: the validated request bodies and OpenAI's error object;
- structured.py: response_format / guided_* / tools -> the request's grammar; replies -> tool_calls;
- logprobs.py: OpenAI's logprobs objects (completions and chat) from the engine's scores;
- classify.py: POST /classify in vLLM's shape for a model with a classification head;
- embeddings.py: POST /v1/embeddings over a retrieval Embedder (``--embedder``);
- metrics.py: Prometheus counters and histograms behind /metrics, requests counted by registered route;
- connections.py: uvicorn's h11 protocol with a deadline for request headers;
- playground.html: the page at ``/``.

Decoding is llmkit.inference.batcher's (continuous batching); nothing here does model math.
"""
