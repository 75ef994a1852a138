"""One name per model: `inspect`, `chat`, `serve` and the model card show the name ``model_name`` derives, and the
server also answers to the name's aliases (listed by /v1/models, one entry each, as vLLM lists its
--served-model-name) and to a request that names no model (optional, as in vLLM).

The server is built by the `llmkit serve` command itself (its uvicorn run replaced by a seam that hands the app
over) and then run by tests/serve_utils.LiveServer, so the names come from the command's own code path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from serve_utils import LiveServer

from llmkit import checkpoint
from llmkit.cli import main
from llmkit.config import GenerationConfig, ModelConfig
from llmkit.model_card import ModelCard
from llmkit.models import build_model

NAME = "Tiny Chat v1"
ORIGIN = "someorg/Tiny-Chat"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def named_dir(tiny_tokenizer, tmp_path_factory) -> Path:
    tok = tiny_tokenizer
    torch.manual_seed(0)
    cfg = ModelConfig.from_name(
        "tiny-gpt-1m", vocab_size=tok.vocab_size, d_model=32, n_layer=2, n_head=4, max_seq_len=128,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    card = ModelCard("Converted for a test.", name=NAME, aliases=[ORIGIN])
    out = tmp_path_factory.mktemp("named") / "folder-name"  # the folder's name is not the model's
    gen = GenerationConfig.for_model(cfg)
    return checkpoint.save(build_model(cfg), out, tokenizer=tok, generation_config=gen, card=card)


@pytest.fixture(scope="module")
def served(named_dir):
    """The app `llmkit serve MODEL` builds, live on a free port."""
    apps = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("llmkit.cli.serve.serve_on", lambda server, sock: apps.append(server.config.app))
        assert main(["serve", str(named_dir), "--port", "0", "--quiet", "--embedder", "none", "--device", "cpu"]) == 0
    live = LiveServer(apps[0])
    yield live
    live.close()


def test_inspect_chat_serve_and_the_card_say_one_name(named_dir, served, capsys):
    assert main(["inspect", str(named_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["name"] == NAME and report["served also as"] == ["Tiny-Chat-v1", ORIGIN]
    title = next(line for line in (named_dir / "README.md").read_text().splitlines() if line.startswith("# "))
    assert title == f"# {NAME}"
    models = httpx.get(f"{served.url}/v1/models").json()["data"]
    assert models[0]["id"] == NAME
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "llmkit", "chat", str(named_dir), "--max-new-tokens", "2", "--history", "none"]
    done = subprocess.run(argv, input="", capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0 and done.stderr.startswith(f"llmkit chat: {NAME}, 128-token window"), done.stderr


def test_the_served_model_answers_to_its_aliases_and_to_no_name(served):
    ids = [m["id"] for m in httpx.get(f"{served.url}/v1/models").json()["data"]]
    assert ids == [NAME, "Tiny-Chat-v1", ORIGIN]  # one entry per name, the model's own name first
    ask = {"prompt": "The cat", "max_tokens": 3, "temperature": 0}
    texts = []
    for name in [*ids, None]:
        body = ask if name is None else {**ask, "model": name}
        r = httpx.post(f"{served.url}/v1/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == NAME  # responses carry the first name, as vLLM's
        texts.append(r.json()["choices"][0]["text"])
    assert len(set(texts)) == 1  # the same model under every name
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}
    assert httpx.post(f"{served.url}/v1/chat/completions", json=chat, timeout=60).status_code == 200
    card = httpx.get(f"{served.url}/v1/models/{ORIGIN}").json()
    assert card["id"] == ORIGIN and card["root"] == NAME
    wrong = httpx.post(f"{served.url}/v1/completions", json={**ask, "model": "gpt-4"}, timeout=60)
    assert wrong.status_code == 404 and wrong.json()["error"]["param"] == "model"
    enum = httpx.get(f"{served.url}/openapi.json").json()["components"]["schemas"]["CompletionRequest"]
    assert enum["properties"]["model"]["anyOf"][0]["enum"] == ids  # or null: the one model served


def test_name_flags_replace_the_names(named_dir, monkeypatch):
    """--name, repeatable as vLLM's --served-model-name: exactly the names given, the first in responses."""
    apps = []
    monkeypatch.setattr("llmkit.cli.serve.serve_on", lambda server, sock: apps.append(server.config.app))
    argv = ["serve", str(named_dir), "--port", "0", "--quiet", "--embedder", "none", "--name", "a", "--name", "b"]
    assert main(argv) == 0
    live = LiveServer(apps[0])
    try:
        assert [m["id"] for m in httpx.get(f"{live.url}/v1/models").json()["data"]] == ["a", "b"]
        ask = {"model": NAME, "prompt": "x", "max_tokens": 1}
        assert httpx.post(f"{live.url}/v1/completions", json=ask, timeout=60).status_code == 404
    finally:
        live.close()
