"""Shared by the serve tests: a live uvicorn server (the tiny checkpoint is conftest's ``tiny_checkpoint``)."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn


class LiveServer:
    """uvicorn in a thread on a socket bound to a free loopback port; ``close()`` stops it."""

    def __init__(self, app, **config) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", **config))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def slow_down_steps(server: LiveServer, monkeypatch, seconds: float):
    """Make each decoding step of ``server``'s batcher last ``seconds`` longer (until the test ends); the batcher."""
    batcher = server.app.state.batcher
    step = batcher._step

    def slow() -> None:
        time.sleep(seconds)
        step()

    monkeypatch.setattr(batcher, "_step", slow)
    return batcher
