"""`llmkit serve` on a checkpoint with a classification head: POST /classify in vLLM's shape, against a live
server; the generation routes answer a one-line 400 naming it; no decoding batcher is built.

Models: tiny random classifiers (tests/heads_utils.py); predictions are checked against ``llmkit.predict``,
itself checked against transformers' pipelines in tests/test_predict.py.
"""

from __future__ import annotations

import httpx
import pytest
from heads_utils import TEXTS, build_heads
from serve_utils import LiveServer

pytest.importorskip("transformers")

from llmkit import checkpoint  # noqa: E402
from llmkit.predict import predict  # noqa: E402
from llmkit.serve.app import ServeSettings, create_app  # noqa: E402

KEY = "k"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    return {name: dirs[0] for name, dirs in build_heads(tmp_path_factory.mktemp("heads")).items()}


@pytest.fixture(scope="module")
def servers(heads):
    """name -> (base URL, loaded model) for a 3-way BERT, a Llama and a token classifier, batches of 2."""
    live, out = [], {}
    for name in ("bert3", "llama2", "tokens"):
        model = checkpoint.load(heads[name])
        server = LiveServer(create_app(model, ServeSettings(name=name, api_key=KEY, max_batch=2)))
        assert server.app.state.batcher is None  # no KV cache, no decoding thread
        live.append(server)
        out[name] = (server.url, model)
    yield out
    for server in live:
        server.close()


def post(url: str, path: str, body: dict, headers=AUTH) -> httpx.Response:
    return httpx.post(url + path, json=body, headers=headers, timeout=60)


@pytest.mark.parametrize("name", ["bert3", "llama2"])
def test_classify_equals_predict(servers, name):
    url, model = servers[name]
    expected = predict(model, TEXTS)  # batches of 32; the server runs batches of 2: rounding differs by ~1e-6
    r = post(url, "/classify", {"model": name, "input": TEXTS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == name and body["id"].startswith("classify-")
    assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
    for d, p in zip(body["data"], expected, strict=True):
        assert d["label"] == p.label and d["num_classes"] == len(p.labels)
        assert d["probs"] == pytest.approx(p.scores, abs=1e-5)
    tokens = sum(p.tokens for p in expected)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0,
                             "prompt_tokens_details": None}  # fmt: skip
    one = post(url, "/v1/classify", {"input": TEXTS[1]}).json()  # a string, no model: the only one
    assert one["data"][0]["probs"] == pytest.approx(expected[1].scores, abs=1e-5)


def test_token_classifier_answers_entities(servers):
    url, model = servers["tokens"]
    body = post(url, "/classify", {"model": "tokens", "input": TEXTS[:3]}).json()
    expected = predict(model, TEXTS[:3])
    assert sum(len(d["entities"]) for d in body["data"]) > 0
    for d, p in zip(body["data"], expected, strict=True):
        assert [(e["entity_group"], e["word"], e["start"], e["end"]) for e in d["entities"]] == [
            (e.entity_group, e.word, e.start, e.end) for e in p.entities
        ]
        assert "label" not in d and d["num_classes"] == len(p.labels)


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/completions", {"model": "llama2", "prompt": "hello", "max_tokens": 3}),
        ("/v1/chat/completions", {"model": "llama2", "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/explain", {"prompt": "hello"}),
        ("/tokenize", {"messages": [{"role": "user", "content": "hi"}]}),
    ],
)
def test_generation_routes_answer_400_naming_classify(servers, path, body):
    """Before: every request on a served decoder classifier was a 500."""
    r = post(servers["llama2"][0], path, body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "model_has_classification_head" and error["type"] == "invalid_request_error"
    assert "sequence-classification head (labels neg, pos)" in error["message"]
    assert "POST /classify" in error["message"] and "\n" not in error["message"]
    assert post(servers["llama2"][0], path, body, headers={}).status_code == 401  # the key is still asked for


def test_models_health_tokenize_and_metrics(servers):
    url, model = servers["bert3"]
    models = httpx.get(url + "/v1/models", headers=AUTH).json()
    assert [(m["id"], m["max_model_len"]) for m in models["data"]] == [("bert3", model.config.max_seq_len)]
    assert httpx.get(url + "/health").json() == {"status": "ok", "model": "bert3", "active": 0}
    tokens = post(url, "/tokenize", {"prompt": "the film"}).json()
    assert tokens["tokens"] == model.tokenizer.encode("the film")
    post(url, "/classify", {"input": "x"})
    assert 'llmkit_requests_total{route="/classify",status="200"}' in httpx.get(url + "/metrics", headers=AUTH).text


@pytest.mark.parametrize(
    "body, status, text",
    [
        ({"input": []}, 400, "input: must not be empty"),
        ({"input": ["ok", ""]}, 400, "input[1] is empty"),
        ({"input": "x", "model": "other"}, 404, "model 'other' does not exist"),
        ({"input": "x", "temperature": 1}, 400, "temperature"),
        ({"input": [1, 2]}, 400, "input"),
    ],
)
def test_bad_classify_requests(servers, body, status, text):
    r = post(servers["bert3"][0], "/classify", body)
    assert r.status_code == status and text in r.json()["error"]["message"]


def test_cli_serves_an_encoder_classifier(heads, monkeypatch, capsys):
    """`llmkit serve` on a BERT classifier starts (before: "continuous batching serves decoder-only models")."""
    from fastapi.testclient import TestClient

    from llmkit.cli import main

    served = {}
    monkeypatch.setattr("llmkit.cli.serve.serve_on", lambda server, sock: served.update(app=server.config.app))
    assert main(["serve", str(heads["tokens"]), "--port", "0", "--embedder", "none", "--quiet"]) == 0
    assert "(POST /classify)" in capsys.readouterr().err
    with TestClient(served["app"], base_url="http://127.0.0.1:8000") as c:
        r = c.post("/classify", json={"input": TEXTS[1]})
        assert r.status_code == 200 and "entities" in r.json()["data"][0]
