"""`llmkit serve`: an OpenAI-compatible HTTP API and a playground page over one model (FastAPI).

app.py builds the app (routes, checks, streaming); schemas.py holds the validated request bodies
and the OpenAI error shape; chat.py turns chat messages into a prompt; playground.html is the page
at ``/``. Decoding is llmkit.inference.batcher's (continuous batching); nothing here does model math.
"""
