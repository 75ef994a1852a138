"""A keyless `llmkit serve` keeps web pages out (issue 34 item 5): a request naming another Host (DNS rebinding) or
sent by a page of another origin is refused, --allowed-origins lets listed pages in (with CORS headers), /metrics
follows the API key unless --public-metrics, and a public --host without a key needs an explicit flag."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient
from serve_utils import LiveServer

from llmkit import checkpoint
from llmkit.cli import main
from llmkit.serve.app import ServeSettings, create_app

ASK = {"prompt": "The cat", "max_tokens": 2, "temperature": 0}


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return checkpoint.load(tiny_checkpoint())


@pytest.fixture(scope="module")
def keyless(model):
    """What `llmkit serve MODEL` runs: loopback, no key, no origins allowed."""
    live = LiveServer(create_app(model, ServeSettings(name="tiny", host="127.0.0.1")))
    yield live
    live.close()


def post(live, headers: dict, path: str = "/v1/completions", **kw) -> httpx.Response:
    import json

    # text/plain: what a page can send cross-origin without a CORS preflight
    return httpx.post(f"{live.url}{path}", content=json.dumps(ASK), headers=headers, timeout=30, **kw)


def test_a_page_of_another_site_cannot_drive_a_keyless_server(keyless):
    """The issue's request: a text/plain POST with Host and Origin of evil.example was answered 200."""
    attack = {"content-type": "text/plain", "host": "evil.example", "origin": "http://evil.example"}
    refused = post(keyless, attack)
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "host_not_allowed"
    # DNS rebinding without an Origin (a GET the page can read once evil.example resolves to 127.0.0.1)
    assert httpx.get(f"{keyless.url}/v1/models", headers={"host": "evil.example:8000"}).status_code == 403
    # the right Host but a cross-origin page (a simple POST needs no preflight): refused too
    cross = post(keyless, {"content-type": "text/plain", "origin": "http://evil.example"})
    assert cross.status_code == 403 and cross.json()["error"]["code"] == "origin_not_allowed"
    assert "--allowed-origins" in cross.json()["error"]["message"]


@pytest.mark.parametrize("host", [None, "localhost", "127.0.0.1", "[::1]", "app.localhost", "127.0.0.2"])
def test_clients_naming_this_server_are_served(keyless, host):
    port = keyless.url.rsplit(":", 1)[1]
    headers = {} if host is None else {"host": f"{host}:{port}"}
    assert post(keyless, headers).status_code == 200
    # the playground's own page: same origin as the Host it asks
    same = {"origin": f"http://{host or '127.0.0.1'}:{port}", **headers}
    assert post(keyless, same).status_code == 200


def test_allowed_origins_get_cors_headers_and_preflights(model):
    app = create_app(model, ServeSettings(name="tiny", host="127.0.0.1", allowed_origins=("http://localhost:3000",)))
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        page = {"origin": "http://localhost:3000"}
        ok = client.post("/v1/completions", json=ASK, headers=page)
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://localhost:3000"
        asks = {"access-control-request-method": "POST", "access-control-request-headers": "content-type"}
        pre = client.options("/v1/completions", headers={**page, **asks})
        assert pre.status_code == 204 and "POST" in pre.headers["access-control-allow-methods"]
        assert "Content-Type" in pre.headers["access-control-allow-headers"]
        other = client.post("/v1/completions", json=ASK, headers={"origin": "http://localhost:3001"})
        assert other.status_code == 403 and "access-control-allow-origin" not in other.headers
    anyone = create_app(model, ServeSettings(name="tiny", host="127.0.0.1", allowed_origins=("*",)))
    with TestClient(anyone, base_url="http://127.0.0.1:8000") as client:
        assert client.post("/v1/completions", json=ASK, headers={"origin": "https://x.example"}).status_code == 200


def test_a_key_replaces_the_host_check_but_not_the_origin_check(model):
    app = create_app(model, ServeSettings(name="tiny", host="127.0.0.1", api_key="k"))
    key = {"authorization": "Bearer k"}
    with TestClient(app, base_url="http://gpu-box.lan:8000") as client:  # a page cannot know the key
        assert client.post("/v1/completions", json=ASK, headers=key).status_code == 200
        refused = client.post("/v1/completions", json=ASK, headers={**key, "origin": "http://evil.example"})
        assert refused.status_code == 403


def test_bound_to_every_address_any_ip_or_the_machine_name_is_this_server(model):
    import socket

    app = create_app(model, ServeSettings(name="tiny", host="0.0.0.0"))
    with TestClient(app) as client:
        for host, status in (("192.168.1.5:8000", 200), (f"{socket.gethostname()}:8000", 200),
                             ("evil.example", 403), ("testserver", 403)):  # fmt: skip
            assert client.get("/v1/models", headers={"host": host}).status_code == status, host


def test_metrics_follow_the_api_key_unless_public(model):
    with TestClient(create_app(model, ServeSettings(name="tiny", api_key="k"))) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"authorization": "Bearer k"}).status_code == 200
        assert client.get("/health").status_code == 200  # liveness probes need no key
    with TestClient(create_app(model, ServeSettings(name="tiny", api_key="k", public_metrics=True))) as client:
        assert client.get("/metrics").status_code == 200


def test_a_public_host_without_a_key_needs_the_flag(tiny_checkpoint, monkeypatch, capsys):
    served = {}
    monkeypatch.setattr("llmkit.cli.serve.serve_on", lambda server, sock: served.update(app=server.config.app))
    assert main(["serve", str(tiny_checkpoint()), "--host", "0.0.0.0", "--port", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--api-key" in err and "--allow-public-without-key" in err, err
    assert not served
    argv = ["serve", str(tiny_checkpoint()), "--host", "0.0.0.0", "--port", "0", "--quiet", "--embedder", "none",
            "--allow-public-without-key", "--allowed-origins", "http://a.example,http://b.example",
            "--allowed-origins", "http://c.example", "--public-metrics"]  # fmt: skip
    assert main(argv) == 0
    assert "warning: serving on 0.0.0.0 without --api-key" in capsys.readouterr().err
    with TestClient(served["app"]) as client:
        assert client.get("/v1/models", headers={"host": "evil.example"}).status_code == 403
        for origin, status in (("http://b.example", 200), ("http://c.example", 200), ("http://d.example", 403)):
            response = client.get("/v1/models", headers={"host": "10.0.0.2:8000", "origin": origin})
            assert response.status_code == status, origin
    assert main(["serve", str(tiny_checkpoint()), "--host", "0.0.0.0", "--port", "0", "--quiet", "--embedder",
                 "none", "--api-key", "k"]) == 0  # fmt: skip


def test_llmkit_serve_refuses_the_issues_request(tiny_checkpoint, monkeypatch):
    """`llmkit serve MODEL` as a user starts it (loopback, no key): the probe's request was a 200."""
    import json

    served = {}
    monkeypatch.setattr("llmkit.cli.serve.serve_on", lambda server, sock: served.update(app=server.config.app))
    assert main(["serve", str(tiny_checkpoint()), "--port", "0", "--quiet", "--embedder", "none"]) == 0
    attack = {"content-type": "text/plain", "host": "evil.example", "origin": "http://evil.example"}
    with TestClient(served["app"]) as client:
        assert client.post("/v1/completions", content=json.dumps(ASK), headers=attack).status_code == 403
        assert client.post("/v1/completions", json=ASK, headers={"host": "127.0.0.1:8000"}).status_code == 200
