"""`llmkit serve`: the OpenAI-compatible API against a live uvicorn server on a random loopback port.

One server (a tiny random GPT-2 with a byte-level BPE tokenizer, an API key, small limits) serves
the module. Greedy results are checked against ``llmkit.generate``; every error case answers a 4xx
in OpenAI's error shape; the official ``openai`` package completes, chats and streams.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from serve_utils import LiveServer, slow_down_steps

from llmkit import checkpoint
from llmkit.inference import generate
from llmkit.serve.app import ServeSettings, create_app
from llmkit.serve.chat import ChatTemplate

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
WINDOW = 256
MAX_TOKENS = 200  # the server's limit per request
MAX_BODY = 16 * 1024


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint) -> Path:
    return tiny_checkpoint("tiny-gpt-1m", window=WINDOW)


@pytest.fixture(scope="module")
def model(model_dir):
    return checkpoint.load(model_dir)


@pytest.fixture(scope="module")
def server(model):
    settings = ServeSettings(name="tiny", api_key=KEY, max_batch=4, max_tokens=MAX_TOKENS, max_body=MAX_BODY)
    live = LiveServer(create_app(model, settings))
    yield live
    live.close()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as c:
        yield c


def expected(model, prompt: str, n: int, stop: list[str] = ()) -> str:
    return generate(model, prompt, max_new_tokens=n, stop_strings=list(stop))[0].text


def sse(response: httpx.Response) -> list[dict]:
    """The JSON chunks of a server-sent event stream; checks it ends with [DONE]."""
    datas = [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]
    assert datas[-1] == "[DONE]"
    return [json.loads(d) for d in datas[:-1]]


# ---- plain routes -------------------------------------------------------------------------------
def test_health_models_and_playground(client):
    assert client.get("/health").json()["status"] == "ok"
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny"]
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for control in ("prompt", "max_tokens", "temperature", "top_k", "top_p", "sampling", "seed", "stop", "explain"):
        assert f'id="{control}"' in page.text


def test_completion_equals_generate(client, model):
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "The cat", "max_tokens": 20, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == "tiny"
    assert body["choices"][0]["text"] == expected(model, "The cat", 20)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 20
    assert body["usage"]["prompt_tokens"] == len(model.tokenizer.encode("The cat"))


def test_completion_options(client, model):
    full = expected(model, "The dog", 30)
    stop = full[5:8]
    r = client.post(
        "/v1/completions",
        json={"model": "tiny", "prompt": "The dog", "max_tokens": 30, "temperature": 0, "stop": stop, "echo": True,
              "logprobs": 2},
    )  # fmt: skip
    choice = r.json()["choices"][0]
    assert choice["text"] == "The dog" + full[: full.index(stop)] and choice["finish_reason"] == "stop"
    logprobs = choice["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == len(logprobs["top_logprobs"])
    # echo: the prompt's tokens come first, the first one without a logprob (nothing predicts it)
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert len(logprobs["tokens"]) == len(model.tokenizer.encode("The dog")) + r.json()["usage"]["completion_tokens"]
    assert all(len(top) <= 2 and max(top.values()) <= 0 for top in logprobs["top_logprobs"][1:])
    # n choices with a seed: reproducible, and they differ from each other
    ask = {"model": "tiny", "prompt": "The", "max_tokens": 12, "temperature": 1.0, "n": 3, "seed": 5}
    a, b = client.post("/v1/completions", json=ask).json(), client.post("/v1/completions", json=ask).json()
    texts = [c["text"] for c in a["choices"]]
    assert texts == [c["text"] for c in b["choices"]] and len(set(texts)) > 1
    assert [c["index"] for c in a["choices"]] == [0, 1, 2]


def test_chat_uses_the_plain_template(client, model):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]
    r = client.post("/v1/chat/completions", json={"model": "tiny", "messages": messages, "max_tokens": 15,
                                                  "temperature": 0})  # fmt: skip
    body = r.json()
    assert body["object"] == "chat.completion"
    prompt = ChatTemplate().render(messages)
    assert prompt == "System: Be brief.\nUser: hello\nAssistant:"
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant"
    assert message["content"] == expected(model, prompt, 15, stop=["\nUser:"])


def test_chat_template_from_the_tokenizer_config(tmp_path):
    template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    chat = ChatTemplate.from_dir(tmp_path)
    assert chat.render([{"role": "user", "content": "hi"}]) == "<user>hi<assistant>"
    assert chat.stop == []


# ---- streaming ----------------------------------------------------------------------------------
def test_streamed_completion_and_chat(client, model):
    ask = {"model": "tiny", "prompt": "The cat", "max_tokens": 20, "temperature": 0, "stream": True}
    with client.stream("POST", "/v1/completions", json=ask) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        chunks = sse(r)
    assert len(chunks) >= 10  # token by token, not one blob
    assert "".join(c["choices"][0]["text"] for c in chunks) == expected(model, "The cat", 20)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    messages = [{"role": "user", "content": "hello"}]
    ask = {"model": "tiny", "messages": messages, "max_tokens": 10, "temperature": 0, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=ask) as r:
        chunks = sse(r)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == expected(model, ChatTemplate().render(messages), 10, stop=["\nUser:"])


@pytest.fixture
def slow_steps(server, monkeypatch):
    """5 ms more per decoding step, so a request of MAX_TOKENS tokens lasts about a second."""
    return slow_down_steps(server, monkeypatch, 0.005)


def wait_until_idle(client) -> None:
    deadline = time.monotonic() + 10
    while client.get("/health").json()["active"]:
        assert time.monotonic() < deadline, "the slot was not freed"
        time.sleep(0.01)


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_frees_its_slot(server, client, slow_steps, stream):
    ask = {"model": "tiny", "prompt": "The", "max_tokens": MAX_TOKENS, "temperature": 0, "stream": stream}
    before = len(slow_steps.step_sizes)
    if stream:
        with client.stream("POST", "/v1/completions", json=ask) as r:
            next(r.iter_lines())  # the first event arrived; now hang up
    else:
        with pytest.raises(httpx.ReadTimeout):  # gives up after 0.2 s and closes the connection
            client.post("/v1/completions", json=ask, timeout=0.2)
    wait_until_idle(client)
    assert len(slow_steps.step_sizes) - before < MAX_TOKENS // 2  # it stopped long before the end


# ---- errors -------------------------------------------------------------------------------------
def assert_error(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param, err
    return err


def test_api_key(server):
    ask = {"model": "tiny", "prompt": "x", "max_tokens": 1}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        err = assert_error(httpx.post(f"{server.url}/v1/completions", json=ask, headers=headers), 401)
        assert err["type"] == "authentication_error"
    assert_error(httpx.get(f"{server.url}/v1/models"), 401)
    assert httpx.get(f"{server.url}/health").status_code == 200  # health and the page need no key


@pytest.mark.parametrize(
    "change, status, param",
    [
        ({"model": "other"}, 404, "model"),
        ({"max_tokens": "ten"}, 400, "max_tokens"),
        ({"max_tokens": 0}, 400, "max_tokens"),
        ({"temperature": 5}, 400, "temperature"),
        ({"temperature": "0.5"}, 400, "temperature"),
        ({"top_p": 0}, 400, "top_p"),
        ({"top_k": -2}, 400, "top_k"),  # -1 is vLLM's "off"
        ({"n": 100}, 400, "n"),
        ({"seed": -3}, 400, "seed"),
        ({"stop": ["s"] * 65}, 400, "stop"),  # past the server's limit (64 by default; OpenAI's 4 is too few)
        ({"stop": [""]}, 400, "stop"),
        ({"presence_penalty": 3}, 400, "presence_penalty"),
        ({"repetition_penalty": 5e-324}, 400, "repetition_penalty"),  # would overflow the scores (the fuzzer's)
        ({"logit_bias": {"999999": 5}}, 400, "logit_bias"),  # outside the vocabulary
        ({"logit_bias": {"x": 5}}, 400, "logit_bias"),
        ({"max_tokens": 3, "max_completion_tokens": 4}, 400, "max_completion_tokens"),
        ({"prompt": [[1, 2], "x"]}, 400, "prompt"),
        ({"prompt": [999999]}, 400, "prompt"),
        ({"stream_options": {"include_usage": "yes"}}, 400, "stream_options.include_usage"),
        ({"best_of": 2}, 400, "best_of"),  # still unknown: still refused
        ({"prompt": ["x"] * 40, "n": 2}, 400, "prompt"),  # more choices than the server ever queues: not a 429
        ({"prompt": 5}, 400, "prompt"),
        ({"max_tokens": MAX_TOKENS + 1}, 400, "max_tokens"),  # past the server's limit
        ({"max_tokens": 150, "prompt": "The cat ate the cake. " * 20}, 400, "max_tokens"),  # past the window
        ({"prompt": "The cat ate the cake. " * 60}, 400, "prompt"),  # the prompt alone is past it
        ({"checkpoint": "/etc/passwd"}, 400, "checkpoint"),  # no request names a file or a checkpoint
    ],
)
def test_bad_requests(client, change, status, param):
    ask = {"model": "tiny", "prompt": "The", "max_tokens": 4, **change}
    assert_error(client.post("/v1/completions", json=ask), status, param)


def test_bad_chat_and_bodies(client):
    assert_error(client.post("/v1/chat/completions", json={"model": "tiny", "messages": []}), 400, "messages")
    bad_role = {"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}
    assert_error(client.post("/v1/chat/completions", json=bad_role), 400)
    assert_error(
        client.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"}), 400
    )
    huge = {"model": "tiny", "prompt": "x" * (MAX_BODY + 10)}
    assert_error(client.post("/v1/completions", json=huge), 413)

    def chunks():  # no Content-Length: the limit is counted as the body arrives
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(MAX_BODY // 1024 + 2):
            yield b"x" * 1024
        yield b'"}'

    assert_error(client.post("/v1/completions", content=chunks()), 413)
    assert_error(client.get("/v1/nothing"), 404)
    assert_error(client.get("/v1/completions"), 405)


# ---- echo scoring, prompt lists, the fields clients send ----------------------------------------
def prompt_logprobs(model, ids: list[int]) -> list[float]:
    """log p(token i | tokens before it) for i >= 1: one forward pass, fp32 log-softmax (llmkit eval's way)."""
    import torch

    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0, :-1].float().log_softmax(-1)
    return [float(logp[i, t]) for i, t in enumerate(ids[1:])]


def check_scored_echo(model, choice: dict, text: str) -> None:
    """The echoed prompt's logprobs are the model's own, the first null, and each offset is where the text
    of the tokens before it ends."""
    want_ids = model.tokenizer.encode(text)
    lp = choice["logprobs"]
    assert choice["text"] == text and choice["finish_reason"] == "length"
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["token_logprobs"][1:] == pytest.approx(prompt_logprobs(model, want_ids), abs=1e-5)
    for top, got in zip(lp["top_logprobs"][1:], lp["token_logprobs"][1:], strict=True):
        assert len(top) <= 2 and max(top.values()) >= got - 1e-6
    offsets = lp["text_offset"]
    assert offsets[0] == 0 and offsets == sorted(offsets) and offsets[-1] < len(text)
    for i, at in enumerate(offsets):
        prefix = model.tokenizer.decode(want_ids[:i]).rstrip("\ufffd")
        assert at == len(prefix) and text.startswith(prefix)


def test_echo_with_max_tokens_0_scores_each_prompt(client, model):
    ids = model.tokenizer.encode("A banana is yellow. 😀")  # the emoji takes several byte-level tokens
    texts = ["The cat ate the cake", model.tokenizer.decode(ids)]
    for prompt in (texts, [model.tokenizer.encode(t) for t in texts]):  # strings, then lists of token ids
        ask = {"model": "tiny", "prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 2}
        r = client.post("/v1/completions", json=ask)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 0
        for choice, text in zip(r.json()["choices"], texts, strict=True):
            check_scored_echo(model, choice, text)
    # echo without logprobs and nothing to generate: the prompt back, plain and streamed
    ask = {"model": "tiny", "prompt": ["The cat", "A dog"], "max_tokens": 0, "echo": True}
    assert [c["text"] for c in client.post("/v1/completions", json=ask).json()["choices"]] == ["The cat", "A dog"]
    with client.stream("POST", "/v1/completions", json={**ask, "stream": True}) as r:
        assert [(c["choices"][0]["text"], c["choices"][0]["finish_reason"]) for c in sse(r)] == [
            ("The cat", "length"),
            ("A dog", "length"),
        ]
    # streamed, the echo arrives with the prompt's logprobs; generation goes on after it
    ask = {"model": "tiny", "prompt": "The cat", "max_tokens": 3, "echo": True, "logprobs": 1, "temperature": 0,
           "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    with client.stream("POST", "/v1/completions", json=ask) as r:
        chunks = sse(r)
    first = chunks[0]["choices"][0]
    assert first["text"] == "The cat" and first["logprobs"]["token_logprobs"][0] is None
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == "The cat" + expected(model, "The cat", 3)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3


def test_vllm_extras_are_applied(client, model):
    def text(**change):
        ask = {"model": "tiny", "prompt": "The cat", "max_tokens": 10, **change}
        r = client.post("/v1/completions", json=ask)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]

    greedy = expected(model, "The cat", 10)
    assert text(temperature=1.0, top_k=1, seed=3) == greedy  # one candidate left: the argmax
    assert text(temperature=1.0, min_p=1.0, seed=3) == greedy  # only tokens as likely as the best
    assert text(temperature=1.0, top_k=-1, seed=3) == text(temperature=1.0, top_k=0, seed=3)  # vLLM's off
    penalized = generate(model, "The cat", max_new_tokens=10, repetition_penalty=1.5)[0].text
    assert text(temperature=0, repetition_penalty=1.5) == penalized != greedy
    assert text(temperature=0, max_completion_tokens=10, user="someone") == greedy


def test_models_tokenize_and_detokenize(client, model):
    assert client.get("/v1/models/tiny").json()["id"] == "tiny"
    assert_error(client.get("/v1/models/other"), 404, "model")
    tokens = client.post("/tokenize", json={"model": "tiny", "prompt": "The cat 😀"}).json()
    ids = model.tokenizer.encode("The cat 😀")
    assert tokens == {"count": len(ids), "max_model_len": WINDOW, "tokens": ids}
    with_strs = client.post("/tokenize", json={"prompt": "The cat", "return_token_strs": True}).json()
    assert with_strs["token_strs"] == [model.tokenizer.id_to_token(t) for t in model.tokenizer.encode("The cat")]
    assert client.post("/detokenize", json={"model": "tiny", "tokens": ids}).json() == {"prompt": "The cat 😀"}
    chat = client.post("/tokenize", json={"messages": [{"role": "user", "content": "hi"}]}).json()
    assert chat["tokens"] == model.tokenizer.encode("User: hi\nAssistant:")
    assert_error(client.post("/detokenize", json={"tokens": [10**6]}), 400, "tokens")
    assert_error(client.post("/tokenize", json={"prompt": "x", "messages": [{"role": "user", "content": "y"}]}), 400)
    assert_error(client.post("/tokenize", json={"model": "other", "prompt": "x"}), 404, "model")
    assert_error(httpx.post(f"{client.base_url}/tokenize", json={"prompt": "x"}), 401)


def test_metrics_in_prometheus_format(client):
    from prometheus_client.parser import text_string_to_metric_families

    client.post("/v1/completions", json={"model": "tiny", "prompt": "The cat", "max_tokens": 5, "temperature": 0})
    client.post("/v1/completions", json={"model": "other", "prompt": "x"})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(r.text) for s in family.samples}  # fmt: skip
    assert samples[("llmkit_requests_total", (("route", "/v1/completions"), ("status", "200")))] >= 1
    assert samples[("llmkit_requests_total", (("route", "/v1/completions"), ("status", "404")))] >= 1
    assert samples[("llmkit_prompt_tokens_total", ())] >= 2 and samples[("llmkit_generation_tokens_total", ())] >= 5
    assert samples[("llmkit_time_to_first_token_seconds_count", ())] >= 1
    assert samples[("llmkit_time_per_output_token_seconds_count", ())] >= 4
    assert samples[("llmkit_batch_size_count", ())] >= 4  # a step per token after the first
    assert ("llmkit_requests_waiting", ()) in samples and ("llmkit_requests_running", ()) in samples


# ---- explain (the playground's panel) -----------------------------------------------------------
def test_explain_endpoint(client, model):
    from llmkit.inference import explain

    r = client.post("/v1/explain", json={"prompt": "The cat", "max_tokens": 3, "do_sample": True, "top_k": 5,
                                         "temperature": 0.8, "seed": 1, "top": 4})  # fmt: skip
    assert r.status_code == 200, r.text
    got = r.json()
    want = explain(model, "The cat", max_new_tokens=3, do_sample=True, top_k=5, temperature=0.8, seed=1, top=4)
    assert len(got["steps"]) == 3 and got["completion"] == want.completion
    assert got["steps"][0]["candidates"][0]["token_id"] == want.steps[0].candidates[0].token_id
    assert_error(client.post("/v1/explain", json={"prompt": "x", "max_tokens": 1000}), 400, "max_tokens")


# ---- the official client ------------------------------------------------------------------------
def test_the_openai_package(server, model):
    openai = pytest.importorskip("openai")
    api = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY)
    assert [m.id for m in api.models.list()] == ["tiny"]
    done = api.completions.create(model="tiny", prompt="The cat", max_tokens=12, temperature=0)
    assert done.choices[0].text == expected(model, "The cat", 12)
    chat = api.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=8, temperature=0
    )
    assert chat.choices[0].message.content == expected(model, "User: hello\nAssistant:", 8, stop=["\nUser:"])
    pieces = [c.choices[0].text for c in api.completions.create(
        model="tiny", prompt="The cat", max_tokens=12, temperature=0, stream=True)]  # fmt: skip
    assert "".join(pieces) == done.choices[0].text
    stream = api.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=8, temperature=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == chat.choices[0].message.content
    with pytest.raises(openai.NotFoundError):
        api.completions.create(model="gpt-4", prompt="x", max_tokens=1)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong").models.list()


# ---- concurrency through HTTP -------------------------------------------------------------------
def test_concurrent_requests_share_steps(server, model):
    import asyncio

    batcher = server.app.state.batcher
    before = len(batcher.step_sizes)
    prompts = ["The cat", "The dog", "A banana", "def f"]

    async def main():
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=30) as c:
            asks = [{"model": "tiny", "prompt": p, "max_tokens": 40, "temperature": 0} for p in prompts]
            return await asyncio.gather(*(c.post("/v1/completions", json=a) for a in asks))

    answers = asyncio.run(main())
    for p, r in zip(prompts, answers, strict=True):
        assert r.json()["choices"][0]["text"] == expected(model, p, 40)
    assert max(batcher.step_sizes[before:]) > 1


# ---- the command --------------------------------------------------------------------------------
def test_cli_serves_on_loopback(model_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "llmkit", "serve", str(model_dir), "--port", str(port), "--api-key", KEY]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers=AUTH)
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert r.json()["data"][0]["id"] == "tiny-gpt-1m"  # the name the checkpoint carries, not its folder's
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_cli_on_a_busy_port_is_one_line_exit_2(model_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cmd = [sys.executable, "-m", "llmkit", "serve", str(model_dir), "--port", str(port)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"llmkit serve: error: port {port} on 127.0.0.1 is in use; pass another --port")
    assert "serving" not in r.stdout + r.stderr  # nothing is announced that will not happen


@pytest.mark.parametrize("quiet", [False, True])
def test_cli_request_log_one_line_per_request(model_dir, monkeypatch, capsys, quiet):
    from fastapi.testclient import TestClient

    from llmkit.cli import main

    served = {}
    monkeypatch.setattr("llmkit.cli.serve.serve_on", lambda server, sock: served.update(app=server.config.app))
    assert main(["serve", str(model_dir), "--port", "0", *(["--quiet"] if quiet else [])]) == 0
    capsys.readouterr()
    with TestClient(served["app"], base_url="http://127.0.0.1:8000") as c:
        body = {"model": "tiny-gpt-1m", "prompt": "The cat", "max_tokens": 5, "temperature": 0}
        assert c.post("/v1/completions", json=body).status_code == 200
        assert c.post("/v1/completions", json={**body, "stream": True}).status_code == 200
        assert c.get("/nowhere").status_code == 404
    lines = capsys.readouterr().err.splitlines()
    if quiet:
        assert lines == []
        return
    n = len(checkpoint.load(model_dir).tokenizer.encode("The cat"))
    assert len(lines) == 3, lines
    assert lines[0].startswith(f"POST /v1/completions 200 {n} tokens in, 5 out, ") and lines[0].endswith(" s")
    assert lines[1].startswith(f"POST /v1/completions 200 {n} tokens in, 5 out, ")  # streamed: counted at its end
    assert lines[2].startswith("GET /nowhere 404, ")


def test_cli_errors(model_dir):
    run = lambda *a: subprocess.run([sys.executable, "-m", "llmkit", "serve", *a], capture_output=True, text=True)
    r = run(str(model_dir), "--max-batch", "0")
    assert r.returncode == 2 and "--max-batch 0 must be >= 1" in r.stderr and len(r.stderr.splitlines()) == 1
    r = run(str(model_dir.parent / "missing"))
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1
