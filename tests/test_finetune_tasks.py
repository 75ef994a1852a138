"""Fine-tuning kinds as data: a new kind is one module and one registry line (docs/finetuning.md's
worked example, registered from here and fine-tuned), and the run and the loop stay free of kind
branches, private overrides and work before the base initializer."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import re
from pathlib import Path

import pytest

from llmkit import checkpoint
from llmkit.cli import build_parser, main
from llmkit.errors import LlmkitError
from llmkit.finetune import load_finetune_config, tasks
from llmkit.objectives import IGNORE_INDEX
from llmkit.train import loop

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "finetuning.md"
COLORS = ["red", "green", "blue", "gold"]


def _doc_blocks() -> list[str]:
    """The python blocks of docs/finetuning.md's "A new task kind" section."""
    text = DOC.read_text()
    section = text[text.index("### A new task kind") :]
    section = section[: section.index("\n## ")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.fixture
def completion_kind(tmp_path, monkeypatch):
    """The docs' `completion` kind: its module loaded from the page, registered in a copy of the registry."""
    module_code, registry_line = _doc_blocks()
    path = tmp_path / "completion_kind.py"
    path.write_text(module_code)
    spec = importlib.util.spec_from_file_location("completion_kind", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # the registry line names the class the page defines, under the path the new file would have
    line = ast.literal_eval(registry_line.strip().rstrip(",").split(":", 1)[0])
    assert line == "completion" and "llmkit.finetune.tasks.completion:CompletionTask" in registry_line
    monkeypatch.setattr(tasks, "KINDS", dict(tasks.KINDS))  # restored after the test
    tasks.register("completion", module.CompletionTask, "prompt completion")
    return module


def _pairs(n: int) -> list[tuple[str, str]]:
    return [(f"item {i % 4} is", f" {COLORS[i % 4]}") for i in range(n)]


def _write(path: Path, pairs) -> str:
    path.write_text("sentence\tlabel\n" + "".join(f"{p}\t{c}\n" for p, c in pairs))
    return str(path)


def test_a_new_kind_from_the_docs_fine_tunes_through_the_cli(completion_kind, tiny_checkpoint, tmp_path, capsys):
    base = tiny_checkpoint()
    config = tmp_path / "run.toml"
    config.write_text(
        f'[model]\ninit_from = "{base}"\n[task]\nkind = "completion"\n'
        f'train_file = "{_write(tmp_path / "train.tsv", _pairs(64))}"\n'
        f'dev_file = "{_write(tmp_path / "dev.tsv", _pairs(8))}"\n'
        f'[train]\nout_dir = "{tmp_path / "run"}"\nsteps = 40\nbatch_size = 8\nblock_size = 32\nlr = 0.01\n'
        'eval_interval = 20\nsave_interval = 40\ndevice = "cpu"\n'
    )
    # the registry line alone puts the kind in `llmkit --help`
    assert "completion (prompt completion)" in " ".join(build_parser().format_help().split())
    assert main(["finetune", "--config", str(config)]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "last" / loop.METRICS).read_text().splitlines()]
    evals = [r for r in records if "val_loss" in r]
    assert [e["step"] for e in evals] == [0, 20, 40]
    assert all(list(e) == ["step", "val_loss", "val_ppl"] for e in evals)  # the kind's own evaluation
    # ln(300) = 5.7 at init; a guess among the 4 colours would leave ln(4) = 1.4 on the colour's token
    assert evals[0]["val_loss"] > 5.0 and evals[-1]["val_loss"] < 0.5
    best = json.loads((tmp_path / "run" / "best" / "best.json").read_text())
    assert best["val_loss"] == min(e["val_loss"] for e in evals)  # the kind's rule: lower is better
    model = checkpoint.load(tmp_path / "run" / "best")
    assert not model.config.has_classifier  # the decoder kept its LM head
    # resume takes the kind from the saved run like any other
    assert main(["finetune", "--config", str(config), "--resume", "--train.steps", "44"]) == 0


def test_the_new_kind_masks_the_prompt(completion_kind, tiny_checkpoint, tmp_path):
    from llmkit.finetune.tasks.base import Setting

    base = checkpoint.load(tiny_checkpoint())
    tokenizer = base.tokenizer
    cfg = load_finetune_config(_minimal_config(tmp_path, tiny_checkpoint()), {"task": {"kind": "completion"}})
    setting = Setting(base.config, tokenizer, "x", None, cfg.train, 1)
    (example,) = completion_kind.encode(setting, [("item 1 is", " green")])
    prompt = tokenizer.encode("item 1 is", add_special_tokens=False)
    answer = tokenizer.encode(" green", add_special_tokens=False) + [tokenizer.eos_token_id]
    assert example.ids == prompt + answer[:-1]
    assert example.labels == [IGNORE_INDEX] * (len(prompt) - 1) + answer  # position t holds token t + 1


def _minimal_config(tmp_path: Path, base: Path) -> Path:
    path = tmp_path / "min.toml"
    path.write_text(f'[model]\ninit_from = "{base}"\n')
    return path


def test_an_unregistered_kind_is_refused_with_the_registered_ones(tmp_path):
    with pytest.raises(LlmkitError, match="unknown task kind 'completion'.*classify, tokens, continue"):
        load_finetune_config(_minimal_config(tmp_path, tmp_path), {"task": {"kind": "completion"}})


# ---- structure --------------------------------------------------------------------------------------
def test_the_finetune_run_holds_no_kind_branch():
    source = (ROOT / "llmkit" / "finetune" / "run.py").read_text()
    assert not re.search(r"\bkind\s*(==|!=|in\b|not in\b)|\bkind\]|BEST_METRIC|LOWER_IS_BETTER", source)
    for kind in tasks.kinds():
        assert f'"{kind}"' not in source and f"'{kind}'" not in source, kind


def _run_classes() -> list[type]:
    from llmkit.finetune.run import FinetuneRun

    return [loop.PretrainRun, FinetuneRun]


def test_no_run_overrides_a_private_method_of_the_loop():
    private = {name for name in vars(loop.Run) if name.startswith("_") and not name.startswith("__")}
    for cls in _run_classes():
        overridden = private & {name for name in vars(cls) if not name.startswith("__")}
        assert not overridden, f"{cls.__name__} overrides {sorted(overridden)}"


def test_the_loop_docstring_lists_exactly_its_hooks():
    listed = set(re.findall(r"``(\w+)\(", loop.Run.__doc__))
    hooks = {name for name, _ in inspect.getmembers(loop.Run, inspect.isfunction) if not name.startswith("_")}
    assert listed - {"train", "start"} == hooks - {"train", "start"}
    for cls in _run_classes():  # what the runs override is a listed hook
        public = {name for name in vars(cls) if inspect.isfunction(vars(cls)[name]) and not name.startswith("_")}
        assert public - hooks == set(), cls.__name__


def test_a_finetune_run_does_no_work_before_the_loop_starts(tmp_path):
    """Constructing the run only keeps its settings: a missing init_from is reported by start()."""
    from llmkit.finetune.run import FinetuneRun
    from llmkit.train import distributed

    cfg = load_finetune_config(_minimal_config(tmp_path, tmp_path / "absent"), {"train": {"device": "cpu"}})
    env = distributed.init("cpu")
    try:
        run = FinetuneRun(cfg, env, resume=False)
        assert run.state is None and run.best_metric == "accuracy" and not run.best_lower
        with pytest.raises(LlmkitError, match="absent: no such directory"):
            run.start()
    finally:
        distributed.cleanup()
