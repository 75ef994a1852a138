"""Checkpoint directories: round trip, atomic writes, and one clear error per kind of damage."""

from __future__ import annotations

import json
import os

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
    with pytest.raises(LlmkitError, match=r"tokenizer\.json: vocabulary of \d+ tokens is larger than the model's"):
        llmkit.load(out)


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
