"""`llmkit serve` under concurrent requests on the paged batcher: a small KV cache (requests wait for room
and rows are evicted), a small prefill budget (prompts read together and in chunks), vLLM's ``ignore_eos``,
and a request larger than the cache refused with a 400. Greedy texts are checked against ``generate``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import httpx
import pytest
import torch
from serve_utils import LiveServer

from llmkit import checkpoint
from llmkit.inference import generate
from llmkit.inference.paged import bytes_per_token
from llmkit.serve.app import ServeSettings, create_app

POOL = 96  # KV positions (6 blocks): fewer than three of the concurrent requests below need at once


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint):
    return tiny_checkpoint("tiny-llama-10m", window=256, n_kv_head=2)


@pytest.fixture(scope="module")
def model(model_dir):
    return checkpoint.load(model_dir)


@pytest.fixture(scope="module")
def server(model):
    mb = POOL * bytes_per_token(model.config, torch.float32) / 2**20
    settings = ServeSettings(name="tiny", max_batch=8, max_tokens=100, kv_cache_mb=mb, prefill_tokens=32)
    live = LiveServer(create_app(model, settings))
    yield live
    live.close()


def stream_text(lines) -> tuple[str, str | None]:
    text, reason = "", None
    for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            choice = json.loads(line[6:])["choices"][0]
            text += choice["text"]
            reason = choice["finish_reason"] or reason
    return text, reason


def test_concurrent_streams_wait_for_room_and_equal_generate(server, model):
    """12 streams of 30-40 tokens on 8 rows and 96 positions: some wait for a row or for blocks,
    some are evicted and re-run; each stream's text is generate's of its prompt alone."""
    prompts = [f"{w} " * (1 + i % 4) + "the" for i, w in enumerate(["The cat", "A dog", "def f", "x ="] * 3)]
    news = [30 + (i * 7) % 11 for i in range(len(prompts))]
    batcher = server.app.state.batcher

    async def one(client, prompt, n):
        ask = {"prompt": prompt, "max_tokens": n, "temperature": 0, "stream": True, "ignore_eos": True}
        async with client.stream("POST", "/v1/completions", json=ask) as r:
            assert r.status_code == 200
            return stream_text([line async for line in r.aiter_lines()])

    async def main():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.gather(*(one(client, p, n) for p, n in zip(prompts, news, strict=True)))

    before = len(batcher.prefill_sizes)
    for p, n, (text, reason) in zip(prompts, news, asyncio.run(main()), strict=True):
        assert text == generate(model, p, max_new_tokens=n, eos_token_id=[])[0].text and reason == "length"
    assert max(batcher.prefill_sizes[before:]) > 1 and max(batcher.step_sizes) > 1
    assert batcher.evictions > 0 and not batcher.slots


def test_ignore_eos(server, model):
    """EOS made certain by logit_bias ends a request at once; with ignore_eos it runs to max_tokens."""
    eos = model.generation_config.eos_token_id[0]
    ask = {"prompt": "The cat", "max_tokens": 12, "temperature": 0, "logit_bias": {str(eos): 100}}
    plain = httpx.post(f"{server.url}/v1/completions", json=ask).json()
    assert plain["usage"]["completion_tokens"] == 1 and plain["choices"][0]["finish_reason"] == "stop"
    forced = httpx.post(f"{server.url}/v1/completions", json={**ask, "ignore_eos": True}).json()
    assert forced["usage"]["completion_tokens"] == 12 and forced["choices"][0]["finish_reason"] == "length"


def test_a_request_larger_than_the_kv_cache_is_a_400(server):
    ask = {"prompt": "The cat " * 10, "max_tokens": 90}  # 40 + 90 tokens: inside the window of 256, over 96 positions
    r = httpx.post(f"{server.url}/v1/completions", json=ask)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and "KV cache of 96 positions" in err["message"]
    assert httpx.post(f"{server.url}/v1/completions", json={**ask, "max_tokens": 5}).status_code == 200


@pytest.mark.slow  # two processes that import torch: about 10 s
def test_cli_checks_the_batching_flags(model_dir):
    run = lambda *a: subprocess.run([sys.executable, "-m", "llmkit", "serve", *a], capture_output=True, text=True)
    r = run(str(model_dir), "--prefill-tokens", "0")
    assert r.returncode == 2 and "--prefill-tokens 0 must be >= 1" in r.stderr and len(r.stderr.splitlines()) == 1
    r = run(str(model_dir), "--kv-cache-mb", "0.001", "--port", "0", "--embedder", "none")
    assert r.returncode == 2 and "--kv-cache-mb 0.001 holds" in r.stderr and len(r.stderr.splitlines()) == 1
