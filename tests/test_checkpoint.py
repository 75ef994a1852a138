"""Checkpoint directories: round trip, atomic writes, and one clear error per kind of damage."""

from __future__ import annotations

import argparse
import errno
import json
import os
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
        llmkit.load(out)


def test_corrupt_safetensors_header(saved):
    _, out = saved
    path = out / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:40] = b"#" * 32  # garbage in the JSON header
    path.write_bytes(bytes(data))
    with pytest.raises(LlmkitError, match=r"model\.safetensors: corrupt or truncated"):
        llmkit.load(out)


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
        llmkit.load(out)


def test_missing_and_unexpected_tensors(saved):
    _, out = saved
    weights = load_file(str(out / "model.safetensors"))
    del weights["stack.final_norm.weight"]
    save_file(weights, str(out / "model.safetensors"))
    with pytest.raises(LlmkitError, match=r"missing tensor 'stack\.final_norm\.weight'"):
        llmkit.load(out)
    weights["stack.final_norm.weight"] = torch.ones(32)
    weights["extra.weight"] = torch.ones(3)
    save_file(weights, str(out / "model.safetensors"))
    with pytest.raises(LlmkitError, match=r"unexpected tensor 'extra\.weight'"):
        llmkit.load(out)


def test_unknown_architecture(saved):
    _, out = saved
    (out / "config.json").write_text(json.dumps({"model_type": "mamba", "d_model": 8}))
    with pytest.raises(LlmkitError, match="unknown architecture 'mamba'.*llmkit convert --from-hf"):
        llmkit.load(out)
    config = {"format": "llmkit", "format_version": 1, **ModelConfig(**TINY).to_dict(), "family": "rnn"}
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(LlmkitError, match="family='rnn' is not valid"):
        llmkit.load(out)


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
        llmkit.load(out)


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
        llmkit.load(out)
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
    assert os.environ.get(checkpoint.NO_VERIFY_ENV) is None  # the command's setting does not outlive it
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
