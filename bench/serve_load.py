"""Load on `llmkit serve`: 64 concurrent streaming clients against the same requests one at a time.

A tiny random-weight GPT-2 (byte-level BPE trained on a small built-in text) is saved to a temporary
directory and served by ``llmkit serve`` in its own process on a free loopback port, so the clients
(httpx, asyncio, this process) do not share a GIL with the server. Every client streams a greedy
completion of ``--tokens`` new tokens (EOS off) over /v1/completions; tokens are counted as the
streamed chunks arrive (one per token). Phase 1 sends the ``--clients`` requests at once, phase 2
the same requests one after another. Pass: no errors, both phases inside ``--time-limit``, and
concurrent tokens/s at least ``--min-speedup`` times the sequential figure (exit code 1 otherwise).

    .venv/bin/python bench/serve_load.py            # the figures in docs/benchmarks.md
    .venv/bin/python bench/serve_load.py --quick    # 16 clients, fewer tokens
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from llmkit import checkpoint
from llmkit.config import GenerationConfig, ModelConfig
from llmkit.data.tokenizer_train import train_tokenizer
from llmkit.models import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/'s shared helpers
from serve_common import free_port, run_phase  # noqa: E402

TEXT = [
    "The cat ate the cake. The dog ate the donut. A banana is yellow and the sky is blue.",
    "def add(x, y):\n    return x + y\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n",
] * 50
PROMPTS = ["The cat", "The dog ate", "def add(", "A banana is", "class Point:", "The sky", "return x", "yellow"]


def tiny_model(directory: Path) -> Path:
    """GPT-2 shape, 4 layers of width 128 (about 0.8M parameters), window 512, random weights."""
    bpe = train_tokenizer(TEXT, "bpe", vocab_size=512)
    torch.manual_seed(0)
    cfg = ModelConfig.from_name(
        "tiny-gpt-1m", vocab_size=bpe.vocab_size, d_model=128, n_layer=4, n_head=4, max_seq_len=512,
        bos_token_id=bpe.bos_token_id, eos_token_id=bpe.eos_token_id, pad_token_id=bpe.pad_token_id,
    )  # fmt: skip
    gen = GenerationConfig.for_model(cfg).replace(eos_token_id=[])  # every request makes all its tokens
    checkpoint.save(build_model(cfg), directory, tokenizer=bpe, generation_config=gen)
    return directory


def start_server(model: Path, port: int, max_batch: int, log) -> subprocess.Popen:
    """``llmkit serve`` with its log in the open file ``log``: a pipe nobody reads fills up under load and
    blocks the server's logging, and with it the event loop."""
    cmd = [sys.executable, "-m", "llmkit", "serve", str(model), "--port", str(port), "--name", "tiny",
           "--max-batch", str(max_batch)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=log)
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}: {Path(log.name).read_text()[-2000:]}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/health").raise_for_status()
            return proc
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise SystemExit("server did not start in 120 s") from None
            time.sleep(0.2)


async def one_client(client: httpx.AsyncClient, prompt: str, tokens: int) -> int:
    """Stream one completion; the number of tokens received (a failed request raises)."""
    ask = {"model": "tiny", "prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True}
    got = 0
    async with client.stream("POST", "/v1/completions", json=ask) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise RuntimeError(chunk["error"]["message"])
                got += 1
    if got != tokens:
        raise RuntimeError(f"{got} tokens streamed, {tokens} asked")
    return got


async def phase(url: str, prompts: list[str], tokens: int, concurrent: bool) -> tuple[int, int, float]:
    """(tokens, errors, seconds) for all prompts at once or one at a time."""
    done, errors, seconds = await run_phase(
        url, prompts, lambda client, p: one_client(client, p, tokens), concurrent, timeout=300
    )
    return sum(done), errors, seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    ap.add_argument("--time-limit", type=float, default=300, help="seconds per phase before it counts as failed")
    ap.add_argument("--min-speedup", type=float, default=3.0)
    ap.add_argument("--quick", action="store_true", help="16 clients, 32 tokens")
    args = ap.parse_args()
    if args.quick:
        args.clients, args.tokens = 16, 32
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.clients)]
    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_model(Path(tmp) / "tiny")
        port = free_port()
        log = (Path(tmp) / "server.log").open("w")
        server = start_server(model, port, args.clients, log)
        url = f"http://127.0.0.1:{port}"
        try:
            asyncio.run(phase(url, prompts[:2], 4, concurrent=False))  # warm-up, not timed
            figures = {}
            for name, concurrent in (("concurrent", True), ("one at a time", False)):
                run = phase(url, prompts, args.tokens, concurrent)
                try:
                    tokens, errors, seconds = asyncio.run(asyncio.wait_for(run, args.time_limit))
                except asyncio.TimeoutError:
                    print(f"{name}: did not finish in {args.time_limit:.0f} s")
                    return 1
                figures[name] = (tokens, errors, seconds)
                print(f"{name:>14}: {args.clients} requests x {args.tokens} tokens, {errors} errors, "
                      f"{seconds:6.2f} s, {tokens / seconds:7.1f} tokens/s")  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=10)
            log.close()
    speedup = (figures["concurrent"][0] / figures["concurrent"][2]) / (
        figures["one at a time"][0] / figures["one at a time"][2]
    )
    errors = figures["concurrent"][1] + figures["one at a time"][1]
    cpu = platform.processor() or platform.machine()
    print(f"speedup {speedup:.1f}x (need >= {args.min_speedup}x), errors {errors}; {cpu}, {os.cpu_count()} cores")
    return 0 if errors == 0 and speedup >= args.min_speedup else 1


if __name__ == "__main__":
    sys.exit(main())
