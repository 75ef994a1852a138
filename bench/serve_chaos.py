"""Chaos on `llmkit serve`: well-formed streaming clients keep working while another client attacks.

The tiny random GPT-2 of bench/serve_load.py is served by ``llmkit serve`` in its own process.
``--clients`` (64) clients stream greedy completions of ``--tokens`` tokens, one after another, for
``--seconds`` (60). Beside them one attacker loops over poison requests: a temperature of 2.856e-39,
a seed of 2**64, a 1 MB prompt, n=8 x max_tokens past the limit, a stream abandoned after its first
token, a /v1/explain call and an abandoned one, a body that never finishes. Printed: the well-formed
requests, their errors, time to first token (p50, p99), the poison requests by kind with their
status codes, and the server's resident memory before and after. Pass (exit code 0): no error for
the well-formed clients and no 5xx for any request.

    .venv/bin/python bench/serve_chaos.py            # the figures in docs/benchmarks.md
    .venv/bin/python bench/serve_chaos.py --quick    # 16 clients for 15 s
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import PROMPTS, free_port, start_server, tiny_model  # noqa: E402


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux /proc), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def well_formed(client: httpx.AsyncClient, prompt: str, tokens: int, stop: float, out: dict) -> None:
    """Stream completions until ``stop``; record each one's time to first token, or its error."""
    ask = {"model": "tiny", "prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True}
    while time.monotonic() < stop:
        start, first, got = time.perf_counter(), None, 0
        try:
            async with client.stream("POST", "/v1/completions", json=ask) as r:
                if r.status_code != 200:
                    raise RuntimeError(f"status {r.status_code}: {(await r.aread())[:200]!r}")
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        raise RuntimeError(chunk["error"]["message"])
                    first = first or time.perf_counter() - start
                    got += 1
            if got != tokens:
                raise RuntimeError(f"{got} tokens streamed, {tokens} asked")
            out["ttft"].append(first)
        except Exception as err:  # counted: the figure this benchmark exists for
            out["errors"].append(repr(err))


async def poison(url: str, stop: float, out: collections.Counter) -> None:
    """Loop over the attacks until ``stop``; count (kind, status) pairs."""
    host, port = url.removeprefix("http://").split(":")
    base = {"model": "tiny", "max_tokens": 8}
    simple = {
        "tiny temperature": {**base, "prompt": "The", "temperature": 2.856e-39},
        "seed 2**64": {**base, "prompt": "The", "seed": 2**64, "temperature": 1.0},
        "1 MB prompt": {**base, "prompt": "The cat ate. " * 80_000},
        "n=8 x max_tokens": {"model": "tiny", "prompt": "The", "n": 8, "max_tokens": 400},
        "n=8.0": {**base, "prompt": "The", "n": 8.0, "temperature": 1.0},
    }
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        while time.monotonic() < stop:
            for kind, body in simple.items():
                r = await client.post("/v1/completions", json=body)
                out[(kind, r.status_code)] += 1
            ask = {**base, "prompt": "The", "max_tokens": 200, "stream": True}
            async with client.stream("POST", "/v1/completions", json=ask) as r:
                async for _ in r.aiter_lines():
                    break  # hang up after the first event
            out[("abandoned stream", r.status_code)] += 1
            r = await client.post("/v1/explain", json={"prompt": "The cat", "max_tokens": 8, "top": 5})
            out[("explain", r.status_code)] += 1
            try:
                await client.post("/v1/explain", json={"prompt": "The", "max_tokens": 200}, timeout=0.2)
                out[("abandoned explain", "finished")] += 1
            except httpx.TimeoutException:
                out[("abandoned explain", "hung up")] += 1
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            await writer.drain()
            writer.close()  # half a body, then gone
            out[("half a body", "sent")] += 1


async def run(url: str, clients: int, tokens: int, seconds: float) -> tuple[dict, collections.Counter]:
    stop = time.monotonic() + seconds
    good: dict = {"ttft": [], "errors": []}
    bad: collections.Counter = collections.Counter()
    limits = httpx.Limits(max_connections=clients + 1)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        tasks = [well_formed(client, PROMPTS[i % len(PROMPTS)], tokens, stop, good) for i in range(clients)]
        await asyncio.gather(*tasks, poison(url, stop, bad))
    return good, bad


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per well-formed request")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="16 clients for 15 s")
    ap.add_argument("--keep-log", type=Path, default=None, help="copy the server's log here")
    args = ap.parse_args()
    if args.quick:
        args.clients, args.seconds = 16, 15
    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_model(Path(tmp) / "tiny")
        port = free_port()
        log_path = Path(tmp) / "server.log"
        log = log_path.open("w")
        server = start_server(model, port, args.max_batch, log)
        url = f"http://127.0.0.1:{port}"
        try:
            httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "The", "max_tokens": 4}, timeout=60)
            before = rss_mb(server.pid)
            good, bad = asyncio.run(run(url, args.clients, args.tokens, args.seconds))
            time.sleep(1)  # abandoned work winds down
            health = httpx.get(f"{url}/health", timeout=10).json()
            after = rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=10)
            log.close()
        lines = log_path.read_text(errors="replace").splitlines()
        if args.keep_log:
            args.keep_log.write_text("\n".join(lines) + "\n")
    tracebacks = sum(line.startswith("Traceback") for line in lines)
    ttft = good["ttft"]
    print(f"well-formed: {args.clients} streaming clients x {args.seconds:.0f} s, {len(ttft)} requests of "
          f"{args.tokens} tokens, {len(good['errors'])} errors")  # fmt: skip
    for err in good["errors"][:5]:
        print(f"  error: {err}")
    print(f"time to first token: p50 {percentile(ttft, 0.5) * 1000:.0f} ms, p99 {percentile(ttft, 0.99) * 1000:.0f} ms")
    print("poison requests:")
    for (kind, status), count in sorted(bad.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        print(f"  {kind:<20} {status!s:>9}  x{count}")
    server_errors = sum(count for (_, status), count in bad.items() if isinstance(status, int) and status >= 500)
    print(f"server RSS: {before:.0f} MB before, {after:.0f} MB after; rows active at the end: {health['active']}")
    print(f"server log: {len(lines)} lines, {tracebacks} tracebacks")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    return 0 if not good["errors"] and server_errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
