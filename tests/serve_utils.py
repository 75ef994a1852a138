"""Shared by the serve tests and the load benchmark: a tiny checkpoint and a live uvicorn server."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import torch
import uvicorn
from hf_utils import randomize

from llmkit import checkpoint
from llmkit.config import GenerationConfig, ModelConfig
from llmkit.models import build_model

CORPUS = [
    "The cat ate the cake. The dog ate the donut. A banana is yellow.",
    "User: hello\nAssistant: hi there. def f(x):\n    return x + 1\n",
] * 20


def tiny_checkpoint(out: Path, window: int = 256, **overrides) -> Path:
    """A random-weight GPT-2 (2 layers, 32 wide) with a byte-level BPE tokenizer, saved at ``out``."""
    from llmkit.data.tokenizer_train import train_tokenizer

    bpe = train_tokenizer(CORPUS, "bpe", vocab_size=300)
    torch.manual_seed(0)
    cfg = ModelConfig.from_name(
        "tiny-gpt-1m", vocab_size=bpe.vocab_size, d_model=32, n_layer=2, n_head=4, max_seq_len=window,
        bos_token_id=bpe.bos_token_id, eos_token_id=bpe.eos_token_id, pad_token_id=bpe.pad_token_id, **overrides,
    )  # fmt: skip
    checkpoint.save(randomize(build_model(cfg)), out, tokenizer=bpe, generation_config=GenerationConfig.for_model(cfg))
    return out


class LiveServer:
    """uvicorn in a thread on a socket bound to a free loopback port; ``close()`` stops it."""

    def __init__(self, app) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
