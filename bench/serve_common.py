"""What the serving benches share (bench/serve_load.py, bench/serve_real.py): a free loopback port, and one
phase of clients against a running server, all at once or one after another, with errors counted alike."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Awaitable, Callable

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def run_phase(
    url: str,
    items: list,
    client_call: Callable[[httpx.AsyncClient, object], Awaitable],
    concurrent: bool,
    timeout: float,
) -> tuple[list, int, float]:
    """``client_call(client, item)`` for every item, all at once or one at a time -> (the results that
    succeeded, how many failed, seconds). A failure is counted, never raised (the first three are printed),
    in both modes, so the two phases compare like for like."""
    limits = httpx.Limits(max_connections=len(items) + 1)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        start = time.perf_counter()
        if concurrent:
            results = await asyncio.gather(*(client_call(client, item) for item in items), return_exceptions=True)
        else:
            results = []
            for item in items:
                try:
                    results.append(await client_call(client, item))
                except Exception as err:  # counted, as in the concurrent phase
                    results.append(err)
        seconds = time.perf_counter() - start
    errors = [r for r in results if isinstance(r, BaseException)]
    for err in errors[:3]:
        print(f"  error: {err!r}", file=sys.stderr)
    return [r for r in results if not isinstance(r, BaseException)], len(errors), seconds
