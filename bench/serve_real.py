"""Serving a real model: 64 concurrent streaming chat clients against the same requests one at a time.

``llmkit serve MODEL`` runs in its own process as a user would start it (loopback, a free port,
``--quiet``, no embedder), for SmolLM2-135M-Instruct in bf16 (the checkpoint ``make models`` converts,
served with ``--dtype bf16``) and in int4 (its Q4_1 blocks as stored; ``int4-bf16``: the same served with
``--dtype bf16``, so activations and batched products are bf16). Each client streams
/v1/chat/completions for its own question, greedy, ``max_tokens`` new tokens with vLLM's ``ignore_eos``
(so every request makes all of them); tokens are counted as the chunks arrive (one per token) and
checked against the final usage chunk. Time to first token is from sending the request to the first
chunk carrying a token. Phase 1 sends the ``--clients`` requests at once, phase 2 the same requests
one after another; the printed line per model gives both tokens/s, their ratio and TTFT p50/p99 of
each phase, with the machine's load average before and after.

    .venv/bin/python bench/serve_real.py                       # bf16 and int4, 64 clients x 64 tokens
    .venv/bin/python bench/serve_real.py --model bf16 --clients 8 --tokens 16   # a quick look
    .venv/bin/python bench/serve_real.py --threads 2 --prefill-tokens 1024      # the server's settings

Pass (exit 0): no errors, concurrent tokens/s >= ``--min-speedup`` x sequential and concurrent TTFT
p99 <= ``--max-ttft`` seconds, for every model.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/'s shared helpers
from serve_common import free_port, run_phase  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "bf16": ("models/smollm2-135m-instruct", ["--dtype", "bf16"]),
    "int4": ("models/smollm2-q4", []),  # int4 weights, fp32 activations
    "int4-bf16": ("models/smollm2-q4", ["--dtype", "bf16"]),  # int4 weights, bf16 activations
}
QUESTIONS = [
    "What is the capital of France?", "Write a haiku about the sea.", "Explain gravity to a child.",
    "List three fruits and their colours.", "How do I sort a list in Python?", "Why is the sky blue?",
    "Tell me a joke about computers.", "What is 12 times 7?", "Name a famous painter and one painting.",
    "Give me a tip for learning a language.", "What does a compiler do?", "Describe a cat in one sentence.",
    "How many legs does a spider have?", "Suggest a name for a bakery.", "What is photosynthesis?",
    "Translate 'good morning' into Spanish.",
]  # fmt: skip


def start_server(model: Path, extra: list[str], port: int, args, log) -> subprocess.Popen:
    """``llmkit serve`` as a user starts it; its log goes to the open file ``log`` (a pipe nobody reads would
    fill up and block it). ``--threads`` sets its OMP_NUM_THREADS (default: as the environment has it)."""
    cmd = [sys.executable, "-m", "llmkit", "serve", str(model), "--port", str(port), "--quiet", "--embedder", "none",
           "--max-batch", str(args.max_batch or args.clients), *extra]  # fmt: skip
    if args.prefill_tokens:
        cmd += ["--prefill-tokens", str(args.prefill_tokens)]
    if args.no_prefix_cache:
        cmd += ["--no-prefix-cache"]
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}: {Path(log.name).read_text()[-2000:]}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/health").raise_for_status()
            return proc
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise SystemExit("server did not start in 300 s") from None
            time.sleep(0.3)


async def one_client(client: httpx.AsyncClient, question: str, tokens: int) -> tuple[int, float]:
    """Stream one chat reply; (tokens received, seconds to the first token). A failed request raises."""
    ask = {"messages": [{"role": "user", "content": question}], "max_tokens": tokens, "temperature": 0,
           "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    got, first, reported = 0, None, None
    start = time.perf_counter()
    async with client.stream("POST", "/v1/chat/completions", json=ask) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if chunk.get("usage"):
                reported = chunk["usage"]["completion_tokens"]
            if not chunk["choices"] or chunk["choices"][0]["delta"].get("role"):
                continue  # the usage chunk, or the opening one that carries the role and no token
            got += 1
            first = first if first is not None else time.perf_counter() - start
    if got != tokens or reported != tokens:
        raise RuntimeError(f"{got} tokens streamed ({reported} in usage), {tokens} asked")
    return got, first


async def phase(url: str, questions: list[str], tokens: int, concurrent: bool):
    """(tokens, errors, seconds, time-to-first-token list) for all questions at once or one at a time."""
    done, errors, seconds = await run_phase(
        url, questions, lambda client, q: one_client(client, q, tokens), concurrent, timeout=900
    )
    return sum(n for n, _ in done), errors, seconds, sorted(t for _, t in done)


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of sorted ``values``."""
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values) + 0.5) - 1))] if values else float("nan")


def bench_model(name: str, args) -> bool:
    rel, extra = MODELS[name]
    model = Path(args.models_dir) / Path(rel).name if args.models_dir else ROOT / rel
    if not (model / "config.json").is_file():
        raise SystemExit(f"{model}: no checkpoint; `make models` converts it (or pass --models-dir)")
    questions = [QUESTIONS[i % len(QUESTIONS)] + " " * (i // len(QUESTIONS)) for i in range(args.clients)]
    with tempfile.TemporaryDirectory() as tmp:
        port, log = free_port(), (Path(tmp) / "server.log").open("w")
        server = start_server(model, extra, port, args, log)
        url = f"http://127.0.0.1:{port}"
        try:
            asyncio.run(phase(url, questions[:2], 4, concurrent=True))  # warm-up, not timed
            load = os.getloadavg()[0]
            figures = {}
            for label, concurrent in (("concurrent", True), ("one at a time", False)):
                figures[label] = asyncio.run(phase(url, questions, args.tokens, concurrent))
        finally:
            server.terminate()
            server.wait(timeout=30)
            log.close()
    (ct, ce, cs, cttft), (st, se, ss, sttft) = figures["concurrent"], figures["one at a time"]
    ratio = (ct / cs) / (st / ss) if st and ct else 0.0
    p99 = pct(cttft, 99)
    print(f"{name}: {args.clients} clients x {args.tokens} tokens | concurrent {ct / cs:6.1f} tok/s ({cs:.1f} s), "
          f"TTFT p50 {pct(cttft, 50):.2f} s p99 {p99:.2f} s | one at a time {st / ss:5.1f} tok/s ({ss:.1f} s), "
          f"TTFT p50 {pct(sttft, 50):.2f} s | ratio {ratio:.1f}x | errors {ce + se} | "
          f"load {load:.2f} -> {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    return ce + se == 0 and ratio >= args.min_speedup and p99 <= args.max_ttft


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model", choices=sorted(MODELS), action="append", help="bf16, int4, int4-bf16 (default: bf16 and int4)"
    )
    ap.add_argument("--models-dir", default=None, help="where the checkpoints are (default: models/ of the repo)")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    ap.add_argument("--threads", type=int, default=None, help="the server's OMP_NUM_THREADS (default: inherited)")
    ap.add_argument("--max-batch", type=int, default=None, help="the server's --max-batch (default: --clients)")
    ap.add_argument("--prefill-tokens", type=int, default=None, help="the server's --prefill-tokens (its default)")
    ap.add_argument("--no-prefix-cache", action="store_true", help="the server computes every prompt in full")
    ap.add_argument("--min-speedup", type=float, default=10.0)
    ap.add_argument("--max-ttft", type=float, default=5.0, help="seconds allowed for the concurrent TTFT p99")
    args = ap.parse_args()
    cpu = platform.processor() or platform.machine()
    print(f"{cpu}, {os.cpu_count()} cores, server threads {args.threads or os.environ.get('OMP_NUM_THREADS', 'all')}")
    ok = [bench_model(name, args) for name in args.model or ["bf16", "int4"]]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
