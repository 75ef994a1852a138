"""`llmkit models get ORG/NAME[@REVISION]` against a local stand-in for the Hub (tests/hub_server.py).

Each repository holds a tiny model built with transformers from a config and saved with save_pretrained
(or a GGUF written by llmkit's to_gguf), laid out and served as the Hub serves it; huggingface_hub is
pointed at the server with HF_ENDPOINT and at a fresh cache with HF_HOME. The converted checkpoint must
give transformers' logits; the revision's commit must be recorded; a dropped connection must resume; a
hash the metadata disagrees with must be refused; HF_HUB_OFFLINE=1 must work from the cache with the
server gone; gated, unknown and unsupported repositories must be one-line errors.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hf_utils import randomize
from hub_server import HubServer
from safetensors.torch import load_file

from llmkit import checkpoint, model_card
from llmkit.cli import main
from llmkit.errors import LlmkitError
from llmkit.hub import names

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
CARD = "---\nlicense: apache-2.0\nlanguage: en\n---\n# Tiny test model\n\nUpstream card text: use with care.\n"
LICENSE = "Apache License, Version 2.0 (a test's stand-in text)\n"
BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"the a cat dog sat on mat and ran".split()]
IDS = torch.tensor([[5, 17, 42, 7, 99, 3, 12, 64]])


# ---- repositories ---------------------------------------------------------------------------------
def with_card(folder: Path, tokenizer=None) -> Path:
    """A save_pretrained folder completed as on the Hub: card, license, tokenizer, and a file llmkit skips."""
    (folder / "README.md").write_text(CARD)
    (folder / "LICENSE").write_text(LICENSE)
    (folder / "pytorch_model.bin").write_bytes(b"never downloaded: llmkit reads the safetensors")
    if tokenizer is not None:
        tokenizer.save(folder)
    return folder


def decoder(kind: str, tok) -> torch.nn.Module:
    torch.manual_seed(0)
    ids = dict(vocab_size=tok.vocab_size, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, **ids)
        return randomize(transformers.GPT2LMHeadModel(cfg))
    cfg = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=64, tie_word_embeddings=False, **ids,
    )  # fmt: skip
    return randomize(transformers.LlamaForCausalLM(cfg))


def bert() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=len(BERT_VOCAB) + 90, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=48, max_position_embeddings=64,
    )  # fmt: skip
    return randomize(transformers.BertForMaskedLM(cfg))


@pytest.fixture(scope="module")
def models(tiny_tokenizer, tmp_path_factory) -> dict[str, tuple[torch.nn.Module, Path]]:
    """name -> (transformers model, its folder as uploaded)."""
    root = tmp_path_factory.mktemp("upstream")
    built = {}
    for kind in ("gpt2", "llama"):
        model = decoder(kind, tiny_tokenizer)
        # the llama is sharded: an index and several files, as large checkpoints come
        model.save_pretrained(root / kind, max_shard_size="40KB" if kind == "llama" else "5GB")
        built[kind] = (model, with_card(root / kind, tiny_tokenizer))
    model = bert()
    model.save_pretrained(root / "bert")
    (root / "bert" / "vocab.txt").write_text("\n".join(BERT_VOCAB) + "\n")  # the old vocabulary form
    built["bert"] = (model, with_card(root / "bert"))
    return built


@pytest.fixture(scope="module")
def hub(models, tmp_path_factory):
    server = HubServer(tmp_path_factory.mktemp("hub")).start()
    for kind, (_, folder) in models.items():
        server.add(f"acme/tiny-{kind}", folder)
    yield server
    server.stop()


@pytest.fixture
def home(hub, tmp_path):
    """A fresh Hugging Face cache (HF_HOME) with huggingface_hub pointed at the test server."""
    with hub.environment(tmp_path / "hf-home"):
        yield tmp_path / "hf-home"


def get(*argv: str, capsys=None) -> tuple[int, str, str]:
    code = main(["models", "get", *argv])
    out, err = capsys.readouterr() if capsys else ("", "")
    return code, out, err


# ---- names and file choice (no server) -------------------------------------------------------------
def test_names_parse_and_refuse_one_line():
    assert names.parse("HuggingFaceTB/SmolLM2-135M-Instruct") == names.HubName("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert names.parse("org/m@v1.0") == names.HubName("org/m", "v1.0")
    assert names.parse("org/m@refs/pr/3").revision == "refs/pr/3"
    assert names.parse("org/m").name == "m"
    for bad in ("org/", "/m", "a/b/c", "org/m@", "org/m x", "org/-m"):
        with pytest.raises(LlmkitError, match="is not a Hub model name"):
            names.parse(bad)
    assert names.is_hub_name("org/m") and not names.is_hub_name("smollm2-135m-instruct")


def test_gguf_quant_types_and_default_preference():
    files = [
        "SmolLM2-135M-Instruct-Q4_K_M.gguf", "SmolLM2-135M-Instruct.q8_0.gguf", "qwen2.5-0.5b-instruct-fp16.gguf",
        "big-Q4_K_M-00001-of-00002.gguf", "README.md",
    ]  # fmt: skip
    assert names.gguf_files(files) == {"Q4_K_M": files[0], "Q8_0": files[1], "F16": files[2]}  # no split parts
    assert names.choose_gguf(files, None, "r") == files[1]  # Q8_0 first
    assert names.choose_gguf(files, "q4_k_m", "r") == files[0]
    assert names.choose_gguf(files[:1], None, "r") == files[0]
    with pytest.raises(LlmkitError, match="no Q5_0 GGUF file; the repository has F16, Q4_K_M, Q8_0"):
        names.choose_gguf(files, "Q5_0", "r")


def test_weights_format_prefers_safetensors_and_refuses_pickles():
    hf = ["config.json", "model.safetensors", "tokenizer.json", "x.Q8_0.gguf"]
    assert names.weights_format(hf, None, "r") == "safetensors"
    assert names.weights_format(hf, "Q8_0", "r") == "gguf"
    assert names.weights_format(["x.Q8_0.gguf", "README.md"], None, "r") == "gguf"
    with pytest.raises(LlmkitError, match="only pickled PyTorch weights"):
        names.weights_format(["config.json", "pytorch_model.bin"], None, "r")
    with pytest.raises(LlmkitError, match="--quant asks for a GGUF file"):
        names.weights_format(hf[:3], "Q4_0", "r")
    # one vocabulary form only, card and licenses; never the SentencePiece model or subfolders
    files = ["config.json", "tokenizer.json", "vocab.json", "merges.txt", "spiece.model", "LICENSE.txt", "onnx/x"]
    assert names.support_files(files + ["README.md"], "r") == [
        "config.json",
        "tokenizer.json",
        "README.md",
        "LICENSE.txt",
    ]
    with pytest.raises(LlmkitError, match="only a SentencePiece tokenizer"):
        names.support_files(["config.json", "spiece.model"], "r")


# ---- download and convert ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gpt2", "llama", "bert"])
def test_model_by_name_gives_transformers_logits(kind, models, hub, home, tmp_path, capsys):
    hub.requests.clear()
    code, out, err = get(f"acme/tiny-{kind}", "--out", str(tmp_path / "m"), "--dtype", "fp32", capsys=capsys)
    assert code == 0, err
    theirs, folder = models[kind]
    ours = checkpoint.load(tmp_path / "m")
    with torch.no_grad():
        diff = (ours(IDS).logits - theirs(input_ids=IDS).logits).abs().max().item()
    assert diff <= 1e-5, diff
    # what came over the wire: the weights the index names, never the pickle
    fetched = {
        path.split("/resolve/main/")[1] for method, path, _ in hub.requests if method == "GET" and "/resolve/" in path
    }
    weights = {p.name for p in folder.glob("*.safetensors")}
    assert weights <= fetched and "pytorch_model.bin" not in fetched and (len(weights) > 1) == (kind == "llama")
    # the summary line, the provenance, the card and license
    commit = hub.ref(f"acme/tiny-{kind}", "main")
    assert f"acme/tiny-{kind} (commit {commit[:12]})" in out and str(tmp_path / "m") in out
    provenance = json.loads((tmp_path / "m" / "hub.json").read_text())
    assert provenance["commit"] == commit and provenance["revision"] == "main" and not provenance["offline"]
    for name in weights:
        sha = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        assert provenance["files"][name] == {"size": (folder / name).stat().st_size, "sha256": sha, "git_sha1": None}
    card = model_card.read(tmp_path / "m")
    assert model_card.front_matter_value(card, "license") == "apache-2.0"
    assert model_card.front_matter_value(card, "base_model") == f"acme/tiny-{kind}"
    from llmkit.inference.loading import model_aliases

    assert f"acme/tiny-{kind}" in model_aliases(tmp_path / "m")  # served under its Hub name too
    assert commit in card and "Upstream card text: use with care." in card
    assert (tmp_path / "m" / "LICENSE").read_text() == LICENSE


def test_tokenizer_comes_along(models, hub, home, tmp_path, tiny_tokenizer):
    assert get("acme/tiny-gpt2", "--out", str(tmp_path / "m"))[0] == 0
    ours = checkpoint.load(tmp_path / "m")
    text = "The cat ate the cake."
    assert ours.tokenizer.encode(text) == tiny_tokenizer.encode(text)
    stored = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}  # the default --dtype


def test_revision_by_tag_and_sha_is_recorded(hub, home, tmp_path, capsys):
    first = hub.add("acme/versions", {"config.json": b"{}", "README.md": b"# v1\n"}, tags=("v1",))
    second = hub.add("acme/versions", {"config.json": b"{}", "README.md": b"# v2\n"})
    snap = _resolve("acme/versions@v1")
    assert snap.commit == first and snap.revision == "v1"
    assert _resolve(f"acme/versions@{first}").commit == first
    assert _resolve("acme/versions").commit == second
    code, _, err = get("acme/versions@v9", capsys=capsys)
    assert code == 2 and "revision 'v9' does not exist" in err and len(err.strip().splitlines()) == 1


def _resolve(spec: str):
    from llmkit.hub import download

    return download.resolve(names.parse(spec))


def test_pinned_revision_downloads_that_commits_weights(models, hub, home, tmp_path, capsys):
    model, folder = models["gpt2"]
    old = hub.ref("acme/tiny-gpt2", "main")
    changed = dict({p.name: p.read_bytes() for p in folder.iterdir()})
    changed["README.md"] += b"An edit on main.\n"
    changed["config.json"] = changed["config.json"].replace(b'"n_layer": 2', b'"n_layer": 1')
    hub.add("acme/tiny-gpt2", changed)
    try:
        assert get(f"acme/tiny-gpt2@{old}", "--out", str(tmp_path / "m"), "--dtype", "fp32", capsys=capsys)[0] == 0
        assert checkpoint.load(tmp_path / "m").config.n_layer == 2
        assert json.loads((tmp_path / "m" / "hub.json").read_text())["commit"] == old
        # main's new commit shares the weights' blob: only its two changed files come over the network
        hub.add("acme/tiny-gpt2", {**changed, "config.json": (folder / "config.json").read_bytes()})
        code, out, err = get("acme/tiny-gpt2", "--out", str(tmp_path / "new"), capsys=capsys)
        assert code == 0, err
        assert f"({len(changed['README.md'])} B downloaded)" in out
    finally:
        hub.add("acme/tiny-gpt2", folder)  # main back to the original files (a new commit)


def test_cut_download_resumes_with_a_range_request(models, hub, home, tmp_path, monkeypatch):
    import huggingface_hub.constants

    # huggingface_hub writes what it receives in 10 MiB chunks and resumes after the last whole one: at 8 KiB
    # the test's 150 KB file spans many, as a real checkpoint spans many 10 MiB ones
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 8192)
    _, folder = models["gpt2"]
    size = (folder / "model.safetensors").stat().st_size
    hub.requests.clear()
    hub.cut["model.safetensors"] = size // 3  # the next GET drops the connection after a third of the bytes
    assert get("acme/tiny-gpt2", "--out", str(tmp_path / "m"))[0] == 0
    assert "model.safetensors" not in hub.cut  # the fault was used
    ranges = [r for method, path, r in hub.requests if method == "GET" and path.endswith("/model.safetensors")]
    assert ranges == [None, f"bytes={size // 3 // 8192 * 8192}-"]  # resumed after the last whole chunk
    blob = next((home / "hub").rglob("snapshots/*/model.safetensors")).resolve()
    assert (
        hashlib.sha256(blob.read_bytes()).digest()
        == hashlib.sha256((folder / "model.safetensors").read_bytes()).digest()
    )


def test_wrong_hash_is_refused_and_the_file_leaves_the_cache(hub, home, tmp_path, capsys):
    hub.wrong_sha256.add("model.safetensors")
    try:
        code, _, err = get("acme/tiny-gpt2", "--out", str(tmp_path / "m"), capsys=capsys)
    finally:
        hub.wrong_sha256.clear()
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "model.safetensors is corrupt (SHA-256" in err and "removed from the cache" in err
    assert not (tmp_path / "m").exists()
    assert not list((home / "hub").rglob("snapshots/*/model.safetensors"))
    assert get("acme/tiny-gpt2", "--out", str(tmp_path / "m"))[0] == 0  # the next run downloads it afresh


def test_gated_repository_asks_for_terms_and_token(models, hub, home, tmp_path, capsys):
    hub.add("acme/gated", models["gpt2"][1])
    hub.gated["acme/gated"] = {"hf_good"}
    code, _, err = get("acme/gated", capsys=capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"accept its terms on {hub.url}/acme/gated" in err and "HF_TOKEN" in err and "hf auth login" in err
    with hub.environment(home, token="hf_good"):
        assert get("acme/gated", "--out", str(tmp_path / "m"))[0] == 0
    code, _, err = get("acme/nothing-here", capsys=capsys)
    assert code == 2 and "no such model" in err and "private" in err


def test_unsupported_architecture_names_the_families_before_any_weights(hub, home, capsys):
    config = json.dumps({"model_type": "mamba", "architectures": ["MambaForCausalLM"]}).encode()
    hub.add("acme/snake", {"config.json": config, "model.safetensors": b"x" * 4096, "tokenizer.json": b"{}"})
    hub.requests.clear()
    code, _, err = get("acme/snake", capsys=capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "model_type 'mamba' (MambaForCausalLM) is not a family llmkit loads" in err
    assert all(f in err for f in ("gpt2", "llama", "mistral", "qwen2", "bert", "t5"))
    assert not [p for m, p, _ in hub.requests if m == "GET" and p.endswith("model.safetensors")]


def test_offline_without_cache_is_one_line(hub, tmp_path, capsys):
    with hub.environment(tmp_path / "empty", offline=True):
        code, _, err = get("acme/tiny-gpt2", capsys=capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "not in the Hugging Face cache" in err and "HF_HUB_OFFLINE=1" in err


@pytest.mark.slow  # a new Python process: about 6 s
def test_offline_run_uses_the_cache_with_the_server_stopped(models, tmp_path, capsys):
    """A second run with HF_HUB_OFFLINE=1 (in a new process, as users run it) needs no server."""
    server = HubServer(tmp_path / "hub").start()
    commit = server.add("acme/tiny-gpt2", models["gpt2"][1])
    with server.environment(tmp_path / "home"):
        assert get("acme/tiny-gpt2", "--out", str(tmp_path / "online"))[0] == 0
    env = server.env(tmp_path / "home", offline=True)
    server.stop()
    run = subprocess.run(
        [sys.executable, "-m", "llmkit", "models", "get", "acme/tiny-gpt2", "--out", str(tmp_path / "offline")],
        env=env, capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "from the cache (offline)" in run.stdout
    provenance = json.loads((tmp_path / "offline" / "hub.json").read_text())
    assert provenance["offline"] and provenance["commit"] == commit
    a, b = checkpoint.load(tmp_path / "online"), checkpoint.load(tmp_path / "offline")
    assert torch.equal(a(IDS).logits, b(IDS).logits)


def test_offline_second_run_is_served_and_checked_by_the_cache(hub, home, tmp_path, capsys):
    assert get("acme/tiny-gpt2", "--out", str(tmp_path / "m"))[0] == 0
    hub.requests.clear()
    with hub.environment(home, offline=True):
        code, out, err = get("acme/tiny-gpt2", "--out", str(tmp_path / "m1"), capsys=capsys)
    assert code == 0, err
    assert hub.requests == [] and "from the cache (offline)" in out  # nothing asked of the server
    assert json.loads((tmp_path / "m1" / "hub.json").read_text())["commit"] == hub.ref("acme/tiny-gpt2", "main")
    blob = next((home / "hub").rglob("snapshots/*/model.safetensors")).resolve()
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")  # the cached file changed after download
    with hub.environment(home, offline=True):
        code, _, err = get("acme/tiny-gpt2", "--out", str(tmp_path / "m2"), capsys=capsys)
    assert code == 2 and "model.safetensors is corrupt (SHA-256" in err


# ---- GGUF repositories --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gguf_repo(hub, tiny_checkpoint, tmp_path_factory):
    from llmkit.gguf import to_gguf

    src = tiny_checkpoint("tiny-llama-10m", window=64, n_kv_head=2, d_ff=64)
    folder = tmp_path_factory.mktemp("gguf-repo")
    for qtype, name in (
        ("f32", "tiny-llama-F32.gguf"),
        ("q8_0", "tiny-llama.Q8_0.gguf"),
        ("f16", "tiny-llama-f16.gguf"),
    ):
        to_gguf(src, folder / name, qtype)
    (folder / "README.md").write_text(CARD)
    hub.add("acme/tiny-llama-GGUF", folder)
    return src, folder


def test_gguf_repository_chosen_by_quant_type(gguf_repo, hub, home, tmp_path, capsys):
    src, folder = gguf_repo
    hub.requests.clear()
    code, out, err = get("acme/tiny-llama-GGUF", "--out", str(tmp_path / "q8"), capsys=capsys)
    assert code == 0, err
    gets = [p for m, p, _ in hub.requests if m == "GET" and p.endswith(".gguf")]
    assert gets == ["/acme/tiny-llama-GGUF/resolve/main/tiny-llama.Q8_0.gguf"]  # the default: Q8_0, and only it
    assert "tiny-llama.Q8_0.gguf converted" in out
    assert json.loads((tmp_path / "q8" / "hub.json").read_text())["source"] == "tiny-llama.Q8_0.gguf"
    # F32 is the source's weights exactly
    assert get("acme/tiny-llama-GGUF", "--quant", "f32", "--out", str(tmp_path / "f32"), "--dtype", "fp32")[0] == 0
    a, b = checkpoint.load(src), checkpoint.load(tmp_path / "f32")
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    assert model_card.front_matter_value(model_card.read(tmp_path / "f32"), "license") == "apache-2.0"
    code, _, err = get("acme/tiny-llama-GGUF", "--quant", "Q4_K_M", capsys=capsys)
    assert code == 2 and "no Q4_K_M GGUF file; the repository has F16, F32, Q8_0" in err


def test_gguf_of_another_architecture_names_the_families(hub, home, tmp_path, capsys):
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(tmp_path / "falcon-Q8_0.gguf", "falcon")  # a header and one tensor suffice
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    hub.add("acme/falcon-GGUF", {"falcon-Q8_0.gguf": (tmp_path / "falcon-Q8_0.gguf").read_bytes()})
    code, _, err = get("acme/falcon-GGUF", capsys=capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "GGUF architecture 'falcon' is not a family llmkit loads" in err and "llama, qwen2" in err


# ---- the command ----------------------------------------------------------------------------------------
def test_registry_names_still_go_to_the_registry(monkeypatch, tmp_path, capsys):
    from llmkit.gguf import registry

    calls = []
    monkeypatch.setattr(registry, "get", lambda name, out, dtype, install_missing: calls.append(name) or out)
    assert get("smollm2-135m-instruct", "--out", str(tmp_path / "s"), "--no-install")[0] == 0
    assert calls == ["smollm2-135m-instruct"]
    code, _, err = get("smollm2-135m-instruct", "--quant", "Q8_0", capsys=capsys)
    assert code == 2 and "--quant is for Hub names" in err


def test_help_explains_both_kinds_of_name(capsys):
    with pytest.raises(SystemExit):
        main(["models", "--help"])
    text = capsys.readouterr().out
    for needle in ("ORG/NAME[@REVISION]", "HuggingFaceTB/SmolLM2-135M-Instruct", "HF_TOKEN", "HF_ENDPOINT",
                   "HF_HUB_OFFLINE=1", "--quant", "llmkit models get smollm2-135m-instruct"):  # fmt: skip
        assert needle in text, needle
