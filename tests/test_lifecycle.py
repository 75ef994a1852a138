"""docs/lifecycle.md runs: every llmkit, torchrun and curl line of its ```bash blocks, at tiny sizes.

The page's commands are read from the page itself, so the walk-through cannot drift from what the
commands do. Sizes shrink by substitution (steps, items, shots, a shorter text for perplexity); the
server line starts a live server that the page's curl line then talks to. Slow (about two minutes):
it converts the real SmolLM2-135M-Instruct, which `make install` installs.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "lifecycle.md"
TINY_TRAIN = "--train.steps 4 --train.eval_interval 2 --train.eval_batches 1 --train.save_interval 4 "
TINY_TRAIN += "--train.warmup_steps 1 --train.log_interval 1"
SHRINK = [  # (pattern, replacement) applied to each command line
    (r"--train\.steps \d+", TINY_TRAIN),
    (r"--limit \d+", "--limit 4"),
    (r"--shots 0,1,5", "--shots 0,1"),
    (r"--shots 5 ", "--shots 1 "),
    (r"--perplexity data/tinyshakespeare/input\.txt\.gz", "--perplexity short.txt.gz"),
    (r"^(llmkit models get \S+)$", r"\1 --no-install"),  # the package is installed; the test never runs pip
]


def page_commands() -> list[str]:
    """The command lines of the page's ```bash blocks, in order."""
    blocks = re.findall(r"```bash\n(.*?)```", PAGE.read_text(), flags=re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def shrink(command: str) -> str:
    for pattern, replacement in SHRINK:
        command = re.sub(pattern, replacement, command)
    return command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def argv(command: str, port: int) -> list[str]:
    words = shlex.split(command.replace("8000", str(port)))
    if words[0] == "llmkit":
        return [sys.executable, "-m", "llmkit", *words[1:]]
    if words[0] == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", *words[1:]]
    return words  # curl


def wait_for_health(port: int, server: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert server.poll() is None, server.stderr.read().decode()[-2000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("the server did not come up")


def test_every_stage_of_the_page_is_a_command_and_the_vllm_lines_are_not_run():
    commands = page_commands()
    verbs = [" ".join(c.split()[:2]) for c in commands]
    for needed in ("llmkit plan", "llmkit models", "llmkit inspect", "llmkit data", "llmkit tokenizer",
                   "llmkit prompt", "llmkit pretrain", "llmkit eval", "llmkit quantize", "llmkit serve",
                   "llmkit convert", "torchrun --nproc-per-node", "curl -s"):  # fmt: skip
        assert needed in verbs, needed
    assert not any(c.startswith(("vllm", "llama-cli")) for c in commands)  # shown as console, not run
    assert "--train.steps 4 " in shrink("llmkit pretrain --config x --train.steps 300")


@pytest.mark.slow
def test_the_lifecycle_page_runs(tmp_path):
    for name in ("data", "configs", "tasks"):
        (tmp_path / name).symlink_to(ROOT / name)
    with gzip.open(ROOT / "data/tinyshakespeare/input.txt.gz", "rt", encoding="utf-8") as f:
        (tmp_path / "short.txt.gz").write_bytes(gzip.compress(f.read(20_000).encode()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    port, server = free_port(), None
    try:
        for command in map(shrink, page_commands()):
            words = argv(command, port)
            if words[2:4] == ["llmkit", "serve"]:
                server = subprocess.Popen(words, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                wait_for_health(port, server)
                continue
            result = subprocess.run(words, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
            if words[0] == "curl":
                reply = json.loads(result.stdout)
                assert reply["choices"][0]["message"]["role"] == "assistant", reply
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    # what the stages left behind
    assert (
        "Converted by `llmkit convert --from-gguf`" in (tmp_path / "models/smollm2-135m-instruct/README.md").read_text()
    )
    card = (tmp_path / "runs/lifecycle/shakespeare/README.md").read_text()
    assert "Pretrained from scratch" in card and "data/tinyshakespeare/input.txt.gz" in card
    assert (tmp_path / "runs/lifecycle/smollm2-int8/README.md").read_text().count("Quantized by `llmkit quantize`") == 1
    assert (tmp_path / "runs/lifecycle/shakespeare.gguf").stat().st_size > 0
    assert (tmp_path / "runs/lifecycle/shakespeare-hf/config.json").is_file()
    assert list((tmp_path / "runs/eval").glob("sst2-*/results.json"))
