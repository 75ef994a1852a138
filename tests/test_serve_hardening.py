"""The server under hostile or unlucky requests: each case a probe found (issue 16), reproduced.

A request with a temperature that overflows, a seed past 64 bits, a slow tokenizer, too much queued
work, a failure inside a stream, an abandoned /v1/explain, a body that never finishes: each gets its
own clear answer and harms no other request.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest
import torch
from serve_utils import LiveServer, slow_down_steps

from llmkit import checkpoint
from llmkit.errors import LlmkitError
from llmkit.inference import batcher as batcher_module
from llmkit.serve import app as app_module
from llmkit.serve.app import ServeSettings, create_app

MAX_TOKENS = 200


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return checkpoint.load(tiny_checkpoint("tiny-gpt-1m", window=256))


@pytest.fixture(scope="module")
def server(model):
    settings = ServeSettings(name="tiny", max_batch=4, max_tokens=MAX_TOKENS, max_queue=6, body_timeout=1.0)
    live = LiveServer(create_app(model, settings))
    yield live
    live.close()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def ask(**change):
    return {"model": "tiny", "prompt": "The", "max_tokens": 4, **change}


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    return r.json()["error"]


def wait_until_idle(client) -> None:
    deadline = time.monotonic() + 10
    while client.get("/health").json()["active"]:
        assert time.monotonic() < deadline, "the rows were not freed"
        time.sleep(0.01)


@pytest.fixture
def slow_steps(server, monkeypatch):
    """10 ms more per decoding step."""
    return slow_down_steps(server, monkeypatch, 0.01)


# ---- schema-valid inputs that gave 500s ---------------------------------------------------------
def test_a_tiny_temperature_is_refused_and_harms_nobody(client):
    err = error_of(client.post("/v1/completions", json=ask(temperature=2.856e-39)), 400)
    assert err["param"] == "temperature" and "at least 1e-05" in err["message"]
    assert client.post("/v1/completions", json=ask(temperature=1e-5, seed=1)).status_code == 200


def test_seeds_are_64_bits_and_choices_wrap(client):
    assert error_of(client.post("/v1/completions", json=ask(seed=2**64)), 400)["param"] == "seed"
    r = client.post("/v1/completions", json=ask(seed=2**64 - 1, n=2, temperature=1.0))
    assert r.status_code == 200 and len(r.json()["choices"]) == 2


def test_integral_numbers_are_integers(client):
    r = client.post("/v1/completions", json=ask(n=2.0, max_tokens=3.0))
    assert r.status_code == 200 and len(r.json()["choices"]) == 2
    for bad in ({"n": 2.5}, {"n": "2"}, {"n": True}, {"max_tokens": 1e300}):
        assert error_of(client.post("/v1/completions", json=ask(**bad)), 400)["param"] == next(iter(bad))


def test_n_times_max_tokens_is_capped(client):
    err = error_of(client.post("/v1/completions", json=ask(n=2, max_tokens=150)), 400)
    assert err["param"] == "max_tokens" and "n=2 x max_tokens=150 = 300" in err["message"]


def test_the_openapi_document_is_served_with_the_request_schemas(client):
    doc = client.get("/openapi.json").json()
    body = doc["paths"]["/v1/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/CompletionRequest"}
    schemas = doc["components"]["schemas"]
    assert schemas["CompletionRequest"]["properties"]["seed"]["anyOf"][0]["maximum"] == 2**64 - 1
    assert "Message" in schemas and "ExplainRequest" in schemas


def test_an_empty_api_key_is_refused_at_start(model):
    for key in ("", "  "):
        with pytest.raises(LlmkitError, match="API key is empty"):
            create_app(model, ServeSettings(name="tiny", api_key=key))


# ---- the event loop and the queue ---------------------------------------------------------------
def test_tokenizing_runs_off_the_event_loop(server, client, model, monkeypatch):
    """A slow tokenization (a 1 MB prompt took seconds) must not stop /health from answering."""
    encode = model.tokenizer.encode

    def slow_encode(text, *args, **kwargs):
        if text.startswith("SLOW"):
            time.sleep(1.5)
        return encode(text, *args, **kwargs)

    monkeypatch.setattr(model.tokenizer, "encode", slow_encode)
    slow = threading.Thread(target=lambda: client.post("/v1/completions", json=ask(prompt="SLOW prompt")))
    slow.start()
    time.sleep(0.2)
    started = time.monotonic()
    assert client.get("/health").status_code == 200
    took = time.monotonic() - started
    slow.join()
    assert took < 0.5, f"/health took {took:.2f} s while a prompt was tokenized"


def test_too_much_queued_work_gets_429_with_retry_after(server, client, slow_steps):
    """max_queue=6 choices: a request with n=4 decoding leaves room for 2, not for 4 more."""
    long = ask(n=4, max_tokens=50, temperature=1.0, stream=True)
    with client.stream("POST", "/v1/completions", json=long) as first:
        lines = first.iter_lines()  # held: a dropped iterator closes the stream
        next(lines)
        r = client.post("/v1/completions", json=ask(n=4, max_tokens=10))
        err = error_of(r, 429)
        assert err["type"] == "rate_limit_error" and int(r.headers["retry-after"]) >= 1
        assert client.post("/v1/completions", json=ask(n=2, max_tokens=2)).status_code == 200
    wait_until_idle(client)


# ---- failures during decoding -------------------------------------------------------------------
@pytest.fixture
def breaks_on_top_k_7(monkeypatch):
    """Requests with top_k=7 fail at their second token (a stand-in for NaN scores or a bug)."""
    accept = batcher_module._Slot.accept  # every row's token goes through it, whether chosen alone or batched

    def failing(slot, *args):
        if slot.request.config.top_k == 7 and slot.sequence.count >= 1:
            raise RuntimeError("row exploded")
        return accept(slot, *args)

    monkeypatch.setattr(batcher_module._Slot, "accept", failing)


def test_an_error_inside_a_stream_is_an_sse_error_event_of_the_right_type(client, breaks_on_top_k_7):
    with client.stream("POST", "/v1/completions", json=ask(top_k=7, max_tokens=20, stream=True)) as r:
        assert r.status_code == 200
        datas = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert datas[-1] == "[DONE]"
    error = json.loads(datas[-2])["error"]
    assert error["type"] == "server_error" and "row exploded" in error["message"]
    err = error_of(client.post("/v1/completions", json=ask(top_k=7, max_tokens=20)), 500)
    assert err["type"] == "server_error" and err["code"] == "generation_failed"
    assert client.post("/v1/completions", json=ask(max_tokens=20)).status_code == 200


def test_an_unexpected_explain_error_is_json(client, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(app_module, "explain", broken)
    err = error_of(client.post("/v1/explain", json={"prompt": "The", "max_tokens": 2}), 500)
    assert err["type"] == "server_error" and err["code"] == "explain_failed" and "boom" in err["message"]


def test_an_abandoned_explain_stops(client, monkeypatch):
    real, steps = app_module.explain, []

    def counting(model, prompt, config=None, top=10, observer=None, **settings):
        def observe(t, scores, tokens):
            steps.append(t)
            time.sleep(0.02)
            if observer is not None:
                observer(t, scores, tokens)

        return real(model, prompt, config, top, observe, **settings)

    monkeypatch.setattr(app_module, "explain", counting)
    with pytest.raises(httpx.ReadTimeout):
        client.post("/v1/explain", json={"prompt": "The", "max_tokens": 150}, timeout=0.3)
    time.sleep(1.5)
    done = len(steps)
    time.sleep(0.5)
    assert len(steps) == done < 100, f"explain went on for {len(steps)} steps after the client left"


def test_a_body_that_never_finishes_times_out(server):
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b'{"model": "tiny", "prompt": "'
        )
        started = time.monotonic()
        reply = sock.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 408") and time.monotonic() - started < 5


def test_a_nan_model_answers_a_json_error_not_empty_text(tiny_checkpoint):
    """NaN weights (loaded some other way than checkpoint.load, which refuses them) gave "" with
    finish_reason "stop", or a 500 "not JSON compliant" with logprobs."""
    model = checkpoint.load(tiny_checkpoint("tiny-gpt-1m", window=256))
    with torch.no_grad():
        model.stack.final_norm.weight.fill_(float("nan"))
    live = LiveServer(create_app(model, ServeSettings(name="tiny")))
    try:
        for extra in ({}, {"logprobs": 2}, {"temperature": 0}, {"temperature": 0, "logprobs": 2}):
            r = httpx.post(f"{live.url}/v1/completions", json=ask(**extra), timeout=30)
            err = error_of(r, 500)
            assert err["code"] == "generation_failed" and "NaN or infinite" in err["message"]
    finally:
        live.close()


# ---- slow headers ---------------------------------------------------------------------------------------
def _closed_after(sock: socket.socket, limit: float) -> float | None:
    """Seconds until the server closed ``sock`` (recv gives b""), None if it was still open after ``limit``."""
    sock.settimeout(limit)
    start = time.monotonic()
    try:
        while sock.recv(4096):
            pass  # a response may come first (keep-alive): read through it
    except TimeoutError:
        return None
    return time.monotonic() - start


def test_a_client_that_never_finishes_its_headers_is_closed_and_others_are_served(model):
    from llmkit.serve.connections import header_timeout_protocol

    app = create_app(model, ServeSettings(name="tiny", max_batch=2))
    live = LiveServer(app, http=header_timeout_protocol(0.5))
    host, port = live.url.removeprefix("http://").split(":")
    try:
        half = [socket.create_connection((host, int(port))) for _ in range(20)]  # half-open clients
        for s in half:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # headers never end
        idle = socket.create_connection((host, int(port)))  # sends nothing at all
        assert httpx.get(f"{live.url}/health", timeout=10).status_code == 200  # a well-formed client meanwhile
        waits = [_closed_after(s, 5.0) for s in [*half, idle]]
        assert all(w is not None and w < 3.0 for w in waits), waits
        # a keep-alive connection: a whole request is answered, a half second one is closed in time
        keep = socket.create_connection((host, int(port)))
        keep.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        keep.settimeout(5)
        assert keep.recv(4096).startswith(b"HTTP/1.1 200")
        keep.sendall(b"GET /health HTTP/1.1\r\n")
        assert _closed_after(keep, 5.0) is not None
    finally:
        live.close()


def test_serve_uses_the_header_deadline(tiny_checkpoint, monkeypatch):
    from llmkit.cli import main
    from llmkit.serve.connections import HeaderDeadlineProtocol

    served = {}
    monkeypatch.setattr("llmkit.cli.serve.serve_on", lambda server, sock: served.update(config=server.config))
    directory = tiny_checkpoint("tiny-gpt-1m", window=256)
    assert main(["serve", str(directory), "--port", "0", "--quiet", "--header-timeout", "2.5"]) == 0
    protocol = served["config"].http
    assert issubclass(protocol, HeaderDeadlineProtocol) and protocol.header_timeout == 2.5
    assert main(["serve", str(directory), "--port", "0", "--header-timeout", "0"]) == 2
