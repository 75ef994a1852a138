"""The `llmkit` command: help everywhere, inspect, init, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from llmkit.cli import COMMAND_MODULES, build_parser, main
from llmkit.errors import LlmkitError


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmkit", *args], capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_commands():
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("tokenizer", "convert", "inspect", "init"):
        assert command in out.stdout


def test_top_level_help_names_every_fine_tuning_task_and_method(capsys):
    from llmkit.finetune.config import METHODS, TASK_KINDS

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    line = text[text.index("finetune ") :]
    for name in (*TASK_KINDS, *METHODS):
        assert re.search(rf"\b{name}\b", line[: line.index(" generate ")]), name


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


def test_inspect_explains_the_head_in_the_count(capsys):
    """flan-T5's head is its own 32,128 x 512 matrix (counted, and what the total is without it);
    GPT-2's shares the token embeddings and is counted once."""
    assert main(["inspect", "flan-t5-small"]) == 0
    out = capsys.readouterr().out
    head = 32128 * 512
    assert "lm head: its own 32,128 x 512 matrix (16.45M, untied from the token embeddings)" in out
    assert f"without it 60.51M ({76_961_152 - head:,})" in out
    assert main(["inspect", "gpt2"]) == 0
    assert "lm head: shares the token embeddings' matrix (tied), counted once" in capsys.readouterr().out
    assert main(["inspect", "flan-t5-small", "--json"]) == 0
    assert "untied" in json.loads(capsys.readouterr().out)["head"]


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


# ---- the first hour (issue 17): flag mistakes, --version, defaults in --help, closed pipes ----------------------
def test_version_comes_from_the_package_metadata():
    from importlib.metadata import version

    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"llmkit {version('llmkit')}"


def test_the_command_freezes_the_heap_before_the_interpreter_exits(monkeypatch, capsys):
    """`llmkit` and `python -m llmkit` run ``program()``: main() on sys.argv, then gc.freeze(), so the
    exit's garbage collections skip what the command left (0.3-2 s after a fine-tuning run)."""
    import gc
    from pathlib import Path

    import tomllib

    from llmkit.cli import program

    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["llmkit"] == "llmkit.cli:program"
    assert "program()" in (Path(__file__).parents[1] / "llmkit/__main__.py").read_text()
    monkeypatch.setattr(sys, "argv", ["llmkit", "inspect", "gpt2"])
    gc.unfreeze()
    try:
        assert program() == 0
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()  # this test process goes on: give its objects back to the collector
    assert "124.44M parameters" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["llmkit", "inspect", "no-such-model"])
    assert program() == 2  # an error's exit code passes through
    gc.unfreeze()


@pytest.mark.parametrize("args, suggestion", [
    (["generate", "m", "--temprature", "0.5"], "unrecognized argument --temprature (did you mean --temperature?)"),
    (["pretrain", "--config", "c.toml", "--train.stesp", "50"], "--train.stesp (did you mean --train.steps?)"),
    (["init", "tiny-gpt-1m", "o", "--model.n_layr", "2"], "--model.n_layr (did you mean --model.n_layer?)"),
    (["tokenizer", "train", "--out", "o", "--vocab-sise", "5"], "--vocab-sise (did you mean --vocab-size?)"),
    (["serve", "m", "--prot", "1"], "--prot (did you mean --port?)"),
])  # fmt: skip
def test_a_mistyped_flag_is_one_line_with_the_closest_flag(capsys, args, suggestion):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and suggestion in err, err


def test_underscore_spellings_of_our_flags_are_accepted():
    parser = build_parser()
    args = parser.parse_args(["generate", "m", "p", "--max_new_tokens", "5", "--top_k=3", "--do_sample"])
    assert (args.max_new_tokens, args.top_k, args.do_sample) == (5, 3, True)
    args = parser.parse_args(["pretrain", "--config", "c.toml", "--train.warmup_steps", "7"])
    assert args.train__warmup_steps == 7  # dotted field names keep their underscores untouched
    args = parser.parse_args(["generate", "m", "--", "--max_new_tokens"])  # after --, words are not flags
    assert args.prompt == "--max_new_tokens"


def _all_parsers(parser, path=("llmkit",)):
    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, __import__("argparse")._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _all_parsers(sub, (*path, name))


def test_every_flag_of_every_command_says_what_it_does_and_its_default():
    import argparse

    missing = []
    for name, parser in _all_parsers(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue  # positionals are named in the usage; the dotted config flags are listed in their group
            flag = f"{name} {action.option_strings[-1]}"
            if not action.help:
                missing.append(f"{flag}: no help")
            elif action.nargs != 0 and action.default is not None and "default" not in formatter._expand_help(action):
                missing.append(f"{flag}: default {action.default!r} not stated")
    assert not missing, "\n".join(missing)
    out = run_cli("generate", "--help").stdout
    assert "--temperature TEMPERATURE" in out and "greedily by default" in out and "samples by default" in out


@pytest.mark.parametrize("args", [["inspect", "gpt2"], ["plan", "gpt2", "--json"]])
def test_a_closed_pipe_ends_quietly(args):
    """`llmkit inspect gpt2 | head -1`: the reader is gone before llmkit writes; no BrokenPipeError."""
    proc = subprocess.Popen([sys.executable, "-m", "llmkit", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and err == "", err


def test_sampling_flags_turn_sampling_on(tiny_checkpoint, capsys):
    model = str(tiny_checkpoint())
    base = ["generate", model, "The cat", "--max-new-tokens", "8", "--json"]
    assert main([*base, "--temperature", "5", "--seed", "1"]) == 0
    out = capsys.readouterr()
    assert "--temperature turns sampling on" in out.err
    sampled = json.loads(out.out)["token_ids"]
    assert main([*base, "--temperature", "5", "--greedy"]) == 0
    out = capsys.readouterr()
    assert "--temperature ignored: --greedy" in out.err
    assert main(base) == 0
    greedy = json.loads(capsys.readouterr().out)["token_ids"]
    assert json.loads(out.out)["token_ids"] == greedy != sampled


def test_tokenizer_flags_take_the_tokenizer_json_file(tiny_tokenizer, tmp_path, capsys):
    """`--tokenizer path/tokenizer.json` said "tokenizer directory not found": the file now means its folder,
    for init, data tokenize and the commands that take a tokenizer path; a file of another name says to pass
    its folder."""
    tok = tmp_path / "tok"
    tiny_tokenizer.save(tok)
    file = str(tok / "tokenizer.json")
    assert main(["init", "tiny-gpt-1m", str(tmp_path / "m"), "--tokenizer", file, "--model.n_layer", "1"]) == 0
    assert (tmp_path / "m" / "tokenizer.json").is_file()
    corpus = tmp_path / "c.txt"
    corpus.write_text("The cat ate the cake. " * 50)
    assert main(["data", "tokenize", str(corpus), "--tokenizer", file, "--out", str(tmp_path / "d")]) == 0
    assert main(["tokenizer", "encode", file, "The cat"]) == 0
    capsys.readouterr()
    other = tmp_path / "vocab.json"
    other.write_text("{}")
    with pytest.raises(SystemExit) as exit_:
        main(["init", "tiny-gpt-1m", str(tmp_path / "n"), "--tokenizer", str(other)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "pass the folder that holds tokenizer.json" in err


def test_tokenizer_train_into_a_pipe_counts_in_words_and_draws_no_bars(tmp_path):
    """Piped, `tokenizer train` printed '1 texts' and blank progress lines: now '1 text' and no bar."""
    corpus = tmp_path / "one.txt"
    corpus.write_text("The cat ate the cake, and the dog ate the bone. " * 40)
    out = run_cli("tokenizer", "train", str(corpus), "--vocab-size", "300", "--out", str(tmp_path / "tok"))
    assert out.returncode == 0, out.stderr
    assert ", 1 text, " in out.stdout and "1 texts" not in out.stdout
    assert out.stderr == ""  # no progress bar (nor the blank lines it leaves) when stderr is not a terminal


def test_quickstart_generate_lines_parse_and_decode_without_repeating():
    """The quickstart's generate commands use flags that exist, and the greedy one a repetition penalty: without
    one the tiny model's greedy completions were lines of '#'."""
    import shlex
    from pathlib import Path

    script = (Path(__file__).parents[1] / "examples" / "quickstart.sh").read_text()
    commands = [line for line in script.replace("\\\n", " ").splitlines() if line.startswith("$LLMKIT generate")]
    assert len(commands) == 2
    parser = build_parser()
    greedy, sampled = (parser.parse_args(shlex.split(c.replace("$LLMKIT ", ""))) for c in commands)
    assert not greedy.do_sample and greedy.repetition_penalty > 1 and greedy.file and greedy.echo
    assert sampled.do_sample and sampled.seed is not None


def _sample(annotation: str) -> tuple[str, object]:
    """A command-line value for a field of this annotation and what argparse must hand the config."""
    if annotation.startswith("list[float]"):
        return "0.7,0.3", "0.7,0.3"  # lists stay text: the config splits them
    if annotation.startswith("list"):
        return "a,b", "a,b"
    if "bool" in annotation:
        return "true", True
    if "int" in annotation:
        return "3", 3
    if "float" in annotation:
        return "0.5", 0.5
    return "freeze", "freeze"


@pytest.mark.parametrize("command", ["finetune", "pretrain"])
def test_every_field_of_every_config_table_is_a_flag(command):
    """--TABLE.FIELD VALUE parses for every field a config file may hold, with the value the config
    reads (`--task.weights 0.7,0.3` was refused as one float, and `--method.name freeze`, the example
    `llmkit finetune --help` prints, was unrecognized)."""
    from dataclasses import fields

    from llmkit.cli._options import config_overrides
    from llmkit.config import ModelConfig, TrainConfig
    from llmkit.finetune.config import MethodConfig, ModelTable, TaskConfig

    tables = {"finetune": {"model": ModelTable, "task": TaskConfig, "method": MethodConfig, "train": TrainConfig},
              "pretrain": {"model": ModelConfig, "train": TrainConfig}}[command]  # fmt: skip
    parser = build_parser()
    for table, config in tables.items():
        for f in fields(config):
            if command == "pretrain" and table == "model" and f.name == "name":
                continue  # pretrain names its model with --name
            text, value = _sample(str(f.type))
            args = parser.parse_args([command, "--config", "x.toml", f"--{table}.{f.name}", text])
            assert config_overrides(args, table) == {f.name: value}, f"--{table}.{f.name}"


def test_the_finetune_flags_the_help_shows_reach_the_config(tmp_path):
    from llmkit.cli._options import config_overrides
    from llmkit.finetune.config import load_finetune_config

    files = [tmp_path / "a.toml", tmp_path / "b.toml"]
    config = tmp_path / "run.toml"
    config.write_text(
        f'[model]\ninit_from = "m"\n[task]\nkind = "instruct"\nfiles = {[str(f) for f in files]!r}\n'.replace("'", '"')
    )
    args = build_parser().parse_args(
        ["finetune", "--config", str(config), "--task.weights", "0.7,0.3", "--method.name", "freeze",
         "--method.train_layers", "2"]
    )  # fmt: skip
    cfg = load_finetune_config(config, {name: config_overrides(args, name) for name in ("model", "task", "method")})
    assert cfg.task.weights == [0.7, 0.3] and cfg.method.name == "freeze" and cfg.method.train_layers == 2
    bad = build_parser().parse_args(["finetune", "--config", str(config), "--task.weights", "0.7,x"])
    with pytest.raises(LlmkitError, match="weights '0.7,x' are not numbers"):
        load_finetune_config(config, {"task": config_overrides(bad, "task")})
