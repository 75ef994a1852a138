"""The `llmkit` command: help everywhere, inspect, init, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llmkit.cli import COMMAND_MODULES, build_parser, main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmkit", *args], capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_commands():
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("tokenizer", "convert", "inspect", "init"):
        assert command in out.stdout


@pytest.mark.parametrize("command", COMMAND_MODULES)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert len(capsys.readouterr().out) > 200  # a description, not just usage


def test_every_subcommand_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, subparser in sub.choices.items():
        assert subparser.description, f"{name} has no description"


def test_inspect_gpt2(capsys):
    assert main(["inspect", "gpt2"]) == 0
    out = capsys.readouterr().out
    assert "124.44M parameters (124,439,808)" in out
    assert "context window 1024" in out and "fp32 474.7 MiB" in out


def test_inspect_json(capsys):
    assert main(["inspect", "bert-base-uncased", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["parameters"] == sum(report["parameters_by_component"].values())
    assert report["weights_bytes"]["int8"] == report["parameters"]


def test_inspect_unknown_model_is_one_line_exit_2():
    out = run_cli("inspect", "no-such-model")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "neither a checkpoint directory nor a preset" in out.stderr


def test_init_then_inspect(tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["init", "tiny-t5-1m", str(out), "--model.n_layer", "2", "--model.vocab_size", "500"]) == 0
    assert main(["inspect", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert report["vocab_size"] == 500 and "2 encoder" in report["architecture"]
    assert report["stored dtype"] == "float32"


def test_bad_override_is_one_line_exit_2(tmp_path):
    out = run_cli("init", "tiny-gpt-1m", str(tmp_path / "m"), "--model.n_head", "3")
    assert out.returncode == 2
    assert "d_model=64 not divisible by n_head=3" in out.stderr and "Traceback" not in out.stderr


def test_convert_both_ways(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            n_embd=32, n_layer=1, n_head=4, vocab_size=64, n_positions=16, bos_token_id=0, eos_token_id=0
        )
    )
    hf.save_pretrained(tmp_path / "hf")
    assert main(["convert", "--from-hf", str(tmp_path / "hf"), str(tmp_path / "ours")]) == 0
    assert "decoder model" in capsys.readouterr().out
    assert main(["convert", "--to-hf", str(tmp_path / "ours"), str(tmp_path / "back")]) == 0
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "back")
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(hf.eval()(ids).logits, back.eval()(ids).logits)


def test_convert_missing_source_is_one_line_exit_2(tmp_path):
    out = run_cli("convert", "--from-hf", str(tmp_path / "nope"), str(tmp_path / "out"))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "no such directory" in out.stderr
    assert not (tmp_path / "out").exists()
