"""Checkpoint directories: round trip, atomic writes, and one clear error per kind of damage."""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import llmkit
from llmkit import checkpoint
from llmkit.config import GenerationConfig, ModelConfig
from llmkit.data.tokenizer_train import train_tokenizer
from llmkit.errors import LlmkitError
from llmkit.models import build_model

TINY = dict(vocab_size=300, d_model=32, n_layer=2, n_head=4, max_seq_len=64)
TEXTS = ["the cat sat on the mat", "a dog ran in the park", "def f(x): return x + 1"] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, kind="bpe", vocab_size=300)


@pytest.fixture()
def saved(tmp_path, tokenizer):
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_name("tiny-gpt-1m", **TINY))
    out = checkpoint.save(model, tmp_path / "model", tokenizer=tokenizer)
    return model, out


def test_round_trip_is_exact(saved, tokenizer):
    model, out = saved
    assert sorted(os.listdir(out)) == [
        "README.md",  # the model card
        "config.json",
        "generation_config.json",
        "manifest.json",  # SHA-256 of the others
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    loaded = llmkit.load(out)
    assert loaded.config == model.config
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert loaded.lm_head.weight is loaded.embed.tokens.weight  # ties survive the trip
    assert loaded.tokenizer.encode("the cat sat") == tokenizer.encode("the cat sat")
    assert isinstance(loaded.generation_config, GenerationConfig)
    assert not loaded.training
    ids = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ids).logits, loaded(ids).logits, atol=0, rtol=0)


def test_tied_weights_are_stored_once(saved):
    _, out = saved
    keys = load_file(str(out / "model.safetensors")).keys()
    assert "embed.tokens.weight" in keys and "lm_head.weight" not in keys


def test_save_replaces_atomically_and_leaves_no_temp(saved, tmp_path):
    model, out = saved
    checkpoint.save(model, out)  # overwrite in place
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_failed_save_keeps_the_old_checkpoint(saved, tmp_path):
    model, out = saved
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(TypeError):
        checkpoint.save(model, out, extra_files={"bad.json": object()})  # fails midway
    assert (out / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_missing_directory_and_files(saved, tmp_path):
    _, out = saved
    with pytest.raises(LlmkitError, match="no such checkpoint directory"):
        llmkit.load(tmp_path / "nope")
    (out / "model.safetensors").unlink()
    with pytest.raises(LlmkitError, match=r"model\.safetensors: file not found"):
        llmkit.load(out)
    (out / "config.json").unlink()
    with pytest.raises(LlmkitError, match=r"config\.json: file not found"):
        llmkit.load(out)


def test_truncated_safetensors(saved):
    _, out = saved
    path = out / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(LlmkitError, match=r"model\.safetensors: corrupt or truncated"):
        llmkit.load(out, verify=False)  # the checks that guard an unverified load


def test_corrupt_safetensors_header(saved):
    _, out = saved
    path = out / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:40] = b"#" * 32  # garbage in the JSON header
    path.write_bytes(bytes(data))
    with pytest.raises(LlmkitError, match=r"model\.safetensors: corrupt or truncated"):
        llmkit.load(out, verify=False)  # the checks that guard an unverified load


def test_corrupt_config_json(saved):
    _, out = saved
    (out / "config.json").write_text("{not json")
    with pytest.raises(LlmkitError, match=r"config\.json: not valid JSON"):
        llmkit.load(out)


def test_shape_mismatch_names_tensor(saved):
    _, out = saved
    weights = load_file(str(out / "model.safetensors"))
    weights["stack.layers.0.attn.q.weight"] = torch.zeros(16, 32)
    save_file(weights, str(out / "model.safetensors"))
    with pytest.raises(LlmkitError, match=r"tensor 'stack\.layers\.0\.attn\.q\.weight' has shape \(16, 32\)"):
        llmkit.load(out, verify=False)  # the checks that guard an unverified load


def test_missing_and_unexpected_tensors(saved):
    _, out = saved
    weights = load_file(str(out / "model.safetensors"))
    del weights["stack.final_norm.weight"]
    save_file(weights, str(out / "model.safetensors"))
    with pytest.raises(LlmkitError, match=r"missing tensor 'stack\.final_norm\.weight'"):
        llmkit.load(out, verify=False)  # the checks that guard an unverified load
    weights["stack.final_norm.weight"] = torch.ones(32)
    weights["extra.weight"] = torch.ones(3)
    save_file(weights, str(out / "model.safetensors"))
    with pytest.raises(LlmkitError, match=r"unexpected tensor 'extra\.weight'"):
        llmkit.load(out, verify=False)  # the checks that guard an unverified load


def test_unknown_architecture(saved):
    _, out = saved
    (out / "config.json").write_text(json.dumps({"model_type": "mamba", "d_model": 8}))
    with pytest.raises(LlmkitError, match="unknown architecture 'mamba'.*llmkit convert --from-hf"):
        llmkit.load(out)
    config = {"format": "llmkit", "format_version": 1, **ModelConfig(**TINY).to_dict(), "family": "rnn"}
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(LlmkitError, match="family='rnn' is not valid"):
        llmkit.load(out, verify=False)


def test_tokenizer_larger_than_embedding(saved, tmp_path):
    model, out = saved
    big = train_tokenizer(TEXTS * 5 + ["zebra quokka lynx xylophone jukebox"] * 5, kind="bpe", vocab_size=400)
    assert big.vocab_size > 300
    big.save(out)
    with pytest.raises(LlmkitError, match=r"tokenizer\.json: contents differ from the SHA-256"):
        llmkit.load(out)  # the manifest sees the swap first
    with pytest.raises(LlmkitError, match=r"tokenizer\.json: vocabulary of \d+ tokens is larger than the model's"):
        llmkit.load(out, verify=False)


def test_load_in_bfloat16(saved):
    _, out = saved
    model = llmkit.load(out, dtype=torch.bfloat16)
    assert model.embed.tokens.weight.dtype == torch.bfloat16
    assert model(torch.tensor([[1, 2, 3]])).logits.dtype == torch.bfloat16


def test_saved_files_get_the_umask_modes_not_owner_only(saved):
    _, out = saved
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~mask
    for path in out.iterdir():
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path.name


# ---- integrity: manifest, NaN, sizes, disk space, interrupted saves --------------------------
def test_flipped_weight_bytes_are_caught_by_the_manifest(saved):
    model, out = saved
    path = out / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x01  # one bit of the last tensor's data: the header still parses, the shapes still fit
    path.write_bytes(bytes(data))
    with pytest.raises(LlmkitError, match=r"model\.safetensors: contents differ from the SHA-256 in manifest\.json"):
        llmkit.load(out)
    loaded = llmkit.load(out, verify=False)  # the operator's choice
    state = loaded.state_dict()
    assert sum(not torch.equal(t, state[k]) for k, t in model.state_dict().items()) == 1


def test_nan_weights_are_refused_at_load(tmp_path, tokenizer):
    model = build_model(ModelConfig.from_name("tiny-gpt-1m", **TINY))
    with torch.no_grad():
        model.stack.layers[1].mlp.up.weight[3, 5] = float("nan")
    out = checkpoint.save(model, tmp_path / "nan", tokenizer=tokenizer)  # the manifest matches: only the check sees it
    with pytest.raises(LlmkitError, match=r"tensor 'stack\.layers\.1\.mlp\.up\.weight' holds NaN or infinite"):
        llmkit.load(out)


@pytest.mark.parametrize(
    "field,value", [("n_layer", 100_000), ("d_model", 10**9), ("vocab_size", 10**12), ("max_seq_len", 10**10)]
)
def test_absurd_config_sizes_get_one_line_naming_the_field(saved, field, value):
    _, out = saved
    config = json.loads((out / "config.json").read_text())
    config[field] = value
    if field == "d_model":
        config["n_head"] = config["n_kv_head"] = 1
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(LlmkitError, match=rf"config\.json: {field}={value:,} is implausibly large"):
        llmkit.load(out, verify=False)  # the checks that guard an unverified load


def test_config_is_checked_against_the_header_before_allocating(saved, monkeypatch):
    """One layer more than the weights hold: refused after building on the meta device only."""
    _, out = saved
    config = json.loads((out / "config.json").read_text())
    config["n_layer"] = 3
    (out / "config.json").write_text(json.dumps(config))
    devices, real = [], checkpoint.build_model

    def spy(cfg, device=None, init=True):
        devices.append(str(device))
        return real(cfg, device=device, init=init)

    monkeypatch.setattr(checkpoint, "build_model", spy)
    with pytest.raises(LlmkitError, match=r"missing tensor 'stack\.layers\.2\."):
        llmkit.load(out, verify=False)  # the checks that guard an unverified load
    assert devices == ["meta"]


def test_a_save_that_cannot_fit_is_refused_before_writing(saved, tmp_path, monkeypatch):
    model, out = saved
    before = (out / "model.safetensors").read_bytes()
    real = shutil.disk_usage
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: real(path)._replace(free=50_000))
    with pytest.raises(LlmkitError, match=r"cannot save .*model: it needs about [\d.]+ MB and .* has 0\.1 MB free"):
        checkpoint.save(model, out)
    assert (out / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_full_disk_mid_save_is_one_line_and_keeps_the_old_checkpoint(saved, tmp_path, monkeypatch):
    model, out = saved
    before = (out / "model.safetensors").read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(LlmkitError, match=r"cannot save .*model: No space left on device; free disk space"):
        checkpoint.save(model, out)
    assert (out / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def _leftover(tmp_path, kind: str, step: str, nested: bool = True):
    """A directory as atomic_directory leaves it: ``.model.KIND-xyz`` (holding ``model`` when nested)."""
    holder = tmp_path / f".model.{kind}-{step}"
    copy = holder / "model" if nested else holder
    copy.mkdir(parents=True)
    (copy / "step.txt").write_text(step)
    return copy


def test_recover_puts_back_the_newest_complete_copy(tmp_path):
    target = tmp_path / "model"
    _leftover(tmp_path, "old", "4")
    _leftover(tmp_path, "new", "8")  # the save had finished writing: newer and complete
    _leftover(tmp_path, "tmp", "9", nested=False)  # still being written: no manifest
    assert checkpoint.recover(target) == target
    assert (target / "step.txt").read_text() == "8"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # the rest was stale


def test_recover_falls_back_to_the_moved_aside_copy_and_accepts_a_verified_tmp(tmp_path):
    target = tmp_path / "model"
    _leftover(tmp_path, "old", "4")
    assert checkpoint.recover(target) == target and (target / "step.txt").read_text() == "4"
    shutil.rmtree(target)
    _leftover(tmp_path, "old", "4")
    tmp = _leftover(tmp_path, "tmp", "8", nested=False)
    checkpoint.write_manifest(tmp)  # an older version's save interrupted before its renames
    assert checkpoint.recover(target) == target and (target / "step.txt").read_text() == "8"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_recover_with_the_target_in_place_only_cleans_up(saved, tmp_path):
    _, out = saved
    _leftover(tmp_path, "old", "4")
    assert checkpoint.recover(out) is None
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    llmkit.load(out)


def test_every_loading_command_checks_the_manifest_and_no_verify_skips_it(tmp_path, capsys):
    from llmkit.cli import main

    assert main(["init", "tiny-gpt-1m", str(tmp_path / "m"), "--model.n_layer", "1"]) == 0
    config = tmp_path / "m" / "generation_config.json"
    config.write_text(config.read_text().replace("\n", "\n "))  # same settings, other bytes: not what was saved
    capsys.readouterr()
    assert main(["quantize", str(tmp_path / "m"), "--to", "int8", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err
    assert "generation_config.json: contents differ from the SHA-256 in manifest.json" in err and err.count("\n") == 1
    assert main(["quantize", str(tmp_path / "m"), "--to", "int8", str(tmp_path / "q"), "--no-verify"]) == 0
    assert checkpoint.load(tmp_path / "q") is not None  # the new checkpoint has its own, right manifest
    with pytest.raises(LlmkitError, match="contents differ"):
        checkpoint.load(tmp_path / "m")
    for command in ("generate", "fill-mask", "serve", "eval", "prompt", "quantize", "convert", "tokenize"):
        assert "--no-verify" in subprocess_free_help(command), command


def subprocess_free_help(command: str) -> str:
    from llmkit.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command].format_help()


# ---- loading is never silent (issue 34): every command passes --no-verify down as an argument ----------------
def _commands(m: str, tmp) -> dict[str, list[str]]:
    """argv of every command that loads a checkpoint's weights, each reaching checkpoint.load with M."""
    docs = tmp / "docs.txt"
    docs.write_text("one line of text\n")
    return {
        "generate": ["generate", m, "hi"],
        "fill-mask": ["fill-mask", m, "a [MASK]"],
        "predict": ["predict", m, "hi"],
        "eval": ["eval", m, "--perplexity", str(docs)],
        "eval --labelled": ["eval", m, "--labelled", str(docs)],
        "quantize": ["quantize", m, "--to", "int8", str(tmp / "q")],
        "convert --to-hf": ["convert", "--to-hf", m, str(tmp / "hf")],
        "convert --to-gguf": ["convert", "--to-gguf", m, str(tmp / "x.gguf")],
        "embeddings": ["embeddings", m, "cat", "dog"],
        "attention": ["attention", m, "the cat", "--out", str(tmp / "a.png")],
        "embed": ["embed", m, str(docs)],
        "index build": ["index", "build", str(docs), "--out", str(tmp / "ix"), "--embedder", m],
        "chat": ["chat", m],
        "serve": ["serve", m, "--port", "0", "--embedder", "none"],
    }


@pytest.mark.parametrize("no_verify", [False, True])
def test_every_loading_command_passes_its_no_verify_to_checkpoint_load(saved, tmp_path, monkeypatch, capsys, no_verify):
    """--no-verify reaches checkpoint.load as verify=False (no environment variable), and its absence as True."""
    from llmkit.cli import LOADS_CHECKPOINTS, main

    _, out = saved
    calls = []

    def load(directory, device="cpu", dtype=None, verify=True):
        calls.append(verify)
        raise LlmkitError("stopped at checkpoint.load", "")

    monkeypatch.setattr(checkpoint, "load", load)
    monkeypatch.setattr("sys.stdin", open(os.devnull))
    commands = _commands(str(out), tmp_path)
    for name, argv in commands.items():
        calls.clear()
        assert main(argv + ["--no-verify"] * no_verify) == 2, name
        assert "stopped at checkpoint.load" in capsys.readouterr().err, name
        assert calls == [not no_verify], name
    assert not os.environ.get("LLMKIT_NO_VERIFY")
    # every command that takes --no-verify is above, but those that read no weights (tokenize, prompt: the
    # tokenizer and config only) and those that need an index or an adapter first (ask, index search, lora)
    assert {argv[0] for argv in commands.values()} | {"tokenize", "prompt", "ask", "lora", "index"} >= LOADS_CHECKPOINTS


def test_a_checkpoint_without_a_manifest_is_refused_unless_no_verify(saved, capsys):
    """Deleting manifest.json no longer turns verification off; `llmkit manifest --write` records the files."""
    from llmkit.cli import main

    _, out = saved
    (out / "manifest.json").unlink()
    with pytest.raises(LlmkitError, match=rf"{out}: no manifest\.json, so its files cannot be checked.*"
                       rf"llmkit manifest {out} --write \(or load it unchecked with --no-verify\)"):  # fmt: skip
        llmkit.load(out)
    assert main(["generate", str(out), "the cat", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert "no manifest.json" in err and err.count("\n") == 1
    assert main(["generate", str(out), "the cat", "--max-new-tokens", "2", "--no-verify"]) == 0
    assert main(["manifest", str(out)]) == 2  # checking says what is missing
    assert "no manifest.json" in capsys.readouterr().err
    assert main(["manifest", str(out), "--write"]) == 0
    assert f"wrote {out}/manifest.json: SHA-256 of 6 files" in capsys.readouterr().out
    llmkit.load(out)
    assert main(["manifest", str(out)]) == 0
    assert f"{out}: 6 files match manifest.json" in capsys.readouterr().out


def test_manifest_write_refuses_a_checkpoint_that_would_not_load(saved):
    _, out = saved
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "n_layer": 3}))
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(LlmkitError, match=r"missing tensor 'stack\.layers\.2\."):
        checkpoint.seal(out)
    assert (out / "manifest.json").read_bytes() == before  # not sealed


def _header_length(path) -> int:
    return int.from_bytes(path.read_bytes()[:8], "little")


def test_a_flipped_header_byte_is_named_as_damage_not_as_a_config_mismatch(saved, tmp_path):
    """Every byte of the header flipped in turn: a verified load names the file as changed (the manifest is
    checked before the header is compared with the config); never "do not belong together"."""
    _, out = saved
    path = out / "model.safetensors"
    original = path.read_bytes()
    for position in range(0, 8 + _header_length(path), 5):
        data = bytearray(original)
        data[position] ^= 0x01
        path.write_bytes(bytes(data))
        with pytest.raises(LlmkitError) as caught:
            llmkit.load(out)
        assert "model.safetensors: contents differ from the SHA-256" in str(caught.value), position
    path.write_bytes(original)
    llmkit.load(out)


def _safetensors_accepts(path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                f.get_slice(key)
        return True
    except Exception:
        return False


def test_header_integrity_check_agrees_with_safetensors_before_the_config_comparison(saved, tmp_path):
    """read_header (llmkit's own reading of the header, before any comparison with the config) refuses
    exactly the flipped files safetensors itself refuses, as damage; the rest parse to the same entries."""
    _, out = saved
    path = out / "model.safetensors"
    original = path.read_bytes()
    refused = 0
    for position in range(0, 8 + _header_length(path), 3):
        data = bytearray(original)
        data[position] ^= 0x04
        flipped = tmp_path / "flipped.safetensors"
        flipped.write_bytes(bytes(data))
        accepted = _safetensors_accepts(flipped)
        try:
            checkpoint.read_header(flipped)
            ours = True
        except LlmkitError as err:
            assert "corrupt or truncated safetensors file" in str(err) and "not a config mismatch" in str(err)
            ours = False
        assert ours == accepted, (position, bytes(data[max(0, position - 20) : position + 20]))
        refused += not ours
    assert refused > 100  # most flips break the JSON, a number or an offset


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda d: (1 << 40).to_bytes(8, "little") + d[8:], r"header length 1,099,511,627,776 does not fit"),
        (lambda d: d[:-10], r"tensor '.*' lies at bytes .* past the .* bytes of data"),
        (lambda d: d + b"\0" * 16, r"the tensors end at byte .* of the .* bytes of data"),
        (
            lambda d: d[:8] + d[8:].replace(b'"F32"', b'"F99"', 1),
            r"tensor '.*' has no valid dtype, shape and data_offsets",
        ),
        (
            lambda d: d[:8] + d[8:].replace(b'"data_offsets":[0,', b'"data_offsets":[4,', 1),
            r"tensor '.*' spans .* bytes; its shape",
        ),
    ],
)
def test_each_kind_of_header_damage_is_named(saved, damage, message):
    _, out = saved
    path = out / "model.safetensors"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(LlmkitError, match=r"model\.safetensors: corrupt or truncated safetensors file \(" + message):
        llmkit.load(out, verify=False)


def _edit_json(path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(
    "file,changes,message",
    [
        ("generation_config.json", {"temperature": -1.0}, r"temperature=-1\.0 must be >= 0"),
        ("generation_config.json", {"num_beams": 0}, r"num_beams=0 must be an integer >= 1"),
        ("generation_config.json", {"top_k": "x"}, r"top_k='x' must be an integer >= 0"),
        ("config.json", {"vocab_size": -5}, r"vocab_size=-5 must be >= 1"),
        ("config.json", {"pos": "spiral"}, r"pos='spiral' is not valid"),
    ],
)
def test_config_errors_name_their_file_and_a_fix_the_command_has(saved, capsys, file, changes, message):
    """A bad value in a checkpoint's JSON names that file, and the fix is an edit plus `llmkit manifest
    --write` (a command that exists), not a flag such as --model.vocab_size, which generate does not have."""
    from llmkit.cli import build_parser, main

    _, out = saved
    _edit_json(out / file, **changes)
    assert main(["generate", str(out), "the cat", "--no-verify"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out / file}: " in err and re.search(message, err), err
    hint = err.split("; ", 1)[1]
    assert f"correct it in {file}, then llmkit manifest {out} --write" in hint
    generate = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["generate"]
    for flag in re.findall(r"(?<![\w-])--[\w.-]+", hint.replace(f"llmkit manifest {out} --write", "")):
        assert flag in generate._option_string_actions, flag
    with pytest.raises(LlmkitError, match=re.escape(str(out / file))):
        checkpoint.seal(out)  # nor can it be sealed as it is


# ---- one device and dtype resolution (llmkit.devices), for every command ------------------------------------
def test_device_and_dtype_names_resolve_in_one_place(monkeypatch):
    from llmkit import devices
    from llmkit.train import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.resolve_device("auto") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve_device("auto") == "cpu" and devices.resolve_device("cuda:1") == "cuda:1"
    assert distributed.init("auto").device == torch.device("cpu")  # training resolves "auto" the same way
    assert [devices.resolve_dtype(n) for n in ("fp32", "bf16", "fp16", None)] == [
        torch.float32, torch.bfloat16, torch.float16, None
    ]  # fmt: skip


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_serve_loads_through_the_shared_loader(saved, monkeypatch, dtype):
    """`llmkit serve --device/--dtype` (which once repeated the device and dtype tables) loads as load_model does."""
    from llmkit.cli import main
    from llmkit.devices import DTYPES
    from llmkit.serve import app as serve_app

    _, out = saved
    models = []
    real = serve_app.create_app
    monkeypatch.setattr(serve_app, "create_app", lambda model, settings: models.append(model) or real(model, settings))
    monkeypatch.setattr("llmkit.cli.serve.serve_on", lambda server, sock: None)
    assert main(["serve", str(out), "--port", "0", "--embedder", "none", "--device", "auto", "--dtype", dtype]) == 0
    assert next(models[0].parameters()).dtype == DTYPES[dtype] and next(models[0].parameters()).device.type == "cpu"


def test_plan_names_the_config_file_of_a_bad_value_and_its_own_override(saved, capsys):
    from llmkit.cli import main

    _, out = saved
    _edit_json(out / "config.json", vocab_size=-5)
    assert main(["plan", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'config.json'}: vocab_size=-5 must be >= 1; change --model.vocab_size" in err  # plan has it
    assert main(["plan", str(out), "--model.vocab_size", "300"]) == 0
