"""Runs always restart (issue 34): a run killed at any stage can go on, with ``--resume`` or without it.

A kill before the first checkpoint (after the step-0 evaluation, or inside the first save) leaves a run
directory with nothing to resume: under ``--resume`` it starts over with a one-line notice, and a new
start there is allowed too. A kill after a checkpoint resumes from it. Every path ends with the weights
of a run that was never killed, in one more command (never a loop of refusals). The slow test kills
real processes with SIGKILL at each stage of a tiny pretraining and fine-tuning run; the fast ones
stop a run in-process at the same places (nothing in the loop cleans up after an exception either).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmkit import checkpoint
from llmkit.cli import main
from llmkit.config import ModelConfig
from llmkit.data.builtin import python_docs_texts
from llmkit.data.shards import tokenize_corpus
from llmkit.data.tokenizer_train import train_tokenizer
from llmkit.models import build_model
from llmkit.train import loop

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4  # checkpoints at steps 2 and 4, evaluations at 0, 2 and 4


@pytest.fixture(scope="module")
def setups(tmp_path_factory, docs_corpus) -> dict[str, Path]:
    """A pretraining config (tiny GPT on a Python-docs passage) and a fine-tuning config (a tiny BERT
    classifier on two kinds of sentence), each a TOML file whose out_dir the commands below override."""
    root = tmp_path_factory.mktemp("restart")
    tokenizer = train_tokenizer(list(python_docs_texts())[:20], "bpe", 300)
    data = root / "data"
    cwd = os.getcwd()
    os.chdir(docs_corpus.parent)  # the train/val split hashes the source as written: the same every run
    try:
        tokenize_corpus([("docs", None)], tokenizer, data, val_fraction=0.25, progress=False)
    finally:
        os.chdir(cwd)
    train = f"steps = {STEPS}\nsave_interval = 2\neval_interval = 2\neval_batches = 1\nlog_interval = 1\n"
    train += 'batch_size = 4\nblock_size = 16\nwarmup_steps = 1\ndtype = "fp32"\ndevice = "cpu"\n'
    pretrain = root / "pretrain.toml"
    pretrain.write_text(f'[model]\npreset = "tiny-gpt-1m"\nn_layer = 1\n\n[train]\ndata = "{data}"\n{train}')

    sentences = [("the cat sat on the mat", "0"), ("a dog ran in the park", "1")] * 12
    tsv = "sentence\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in sentences)
    (root / "train.tsv").write_text(tsv)
    tokenizer = train_tokenizer([text for text, _ in sentences] * 4, "wordpiece", 80, min_frequency=1)
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("tiny-bert-1m", n_layer=1, vocab_size=tokenizer.vocab_size, max_seq_len=32,
                                pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    base = checkpoint.save(build_model(cfg), root / "bert", tokenizer=tokenizer)
    finetune = root / "finetune.toml"
    finetune.write_text(
        f'[model]\ninit_from = "{base}"\n\n[task]\nkind = "classify"\ntrain_file = "{root / "train.tsv"}"\n'
        f'dev_file = "{root / "train.tsv"}"\n\n[train]\n{train}'.replace("block_size = 16", "block_size = 24")
    )
    return {"pretrain": pretrain, "finetune": finetune}


def _argv(kind: str, setups, out: Path, *extra: str) -> list[str]:
    return [kind, "--config", str(setups[kind]), "--train.out_dir", str(out), "--threads", "1", *extra]


def _checkpoint_dir(kind: str, out: Path) -> Path:
    return out / "last" if kind == "finetune" else out


def _weights(kind: str, out: Path) -> dict[str, dict[str, torch.Tensor]]:
    dirs = {"last": _checkpoint_dir(kind, out)} | ({"best": out / "best"} if kind == "finetune" else {})
    return {name: checkpoint.read_weights(d / checkpoint.WEIGHTS) for name, d in dirs.items()}


def _losses(kind: str, out: Path) -> list[tuple[int, str, float]]:
    records = [json.loads(line) for line in (_checkpoint_dir(kind, out) / loop.METRICS).read_text().splitlines()]
    return [(r["step"], k, r[k]) for r in records for k in ("train_loss", "val_loss") if k in r]


@pytest.fixture(scope="module")
def straight(setups, tmp_path_factory) -> dict[str, Path]:
    """Each run, never killed."""
    root = tmp_path_factory.mktemp("straight")
    for kind in setups:
        assert main(_argv(kind, setups, root / kind)) == 0
    return {kind: root / kind for kind in setups}


def _assert_like_straight(kind: str, out: Path, straight) -> None:
    a, b = _weights(kind, straight[kind]), _weights(kind, out)
    for name in a:
        assert a[name].keys() == b[name].keys() and all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name
    assert _losses(kind, out) == _losses(kind, straight[kind])  # one log, as if never interrupted
    checkpoint.load(_checkpoint_dir(kind, out))  # its manifest verifies
    hidden = [p for folder in (out.parent, out) for p in folder.iterdir() if p.name.startswith(".")]
    assert hidden == []  # no temporaries left


class Stop(BaseException):
    """An in-process stand-in for a kill: no `except Exception` in the loop catches it."""


def _stop_after_step0_eval(monkeypatch) -> None:
    real = loop.Run._log_eval

    def log_eval(self, bar):
        loss = real(self, bar)
        if self.state.step == 0:
            raise Stop
        return loss

    monkeypatch.setattr(loop.Run, "_log_eval", log_eval)


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_a_run_stopped_after_its_step0_evaluation_restarts_with_or_without_resume(
    kind, setups, straight, tmp_path, monkeypatch, capsys
):
    """The issue's case: "train_state.pt not found; start without --resume" and "out_dir already exists
    and is not empty; pass --resume" for the same directory. Now both go on, with a one-line notice."""
    for flags in (["--resume"], []):
        out = tmp_path / f"run{len(flags)}" / "out"
        with monkeypatch.context() as patch:
            _stop_after_step0_eval(patch)
            with pytest.raises(Stop):
                main(_argv(kind, setups, out))
        assert (_checkpoint_dir(kind, out) / loop.METRICS).is_file()
        assert not (_checkpoint_dir(kind, out) / loop.TRAIN_STATE).exists()
        capsys.readouterr()
        assert main(_argv(kind, setups, out, *flags)) == 0
        notices = [line for line in capsys.readouterr().err.splitlines() if "starting the run from step 0" in line]
        why = "nothing to resume in" if flags else "holds a run stopped before its first checkpoint"
        assert len(notices) == 1 and why in notices[0], notices
        _assert_like_straight(kind, out, straight)


def test_resume_with_nothing_saved_starts_a_new_run(setups, straight, tmp_path, capsys):
    """A retry script that always passes --resume works from the first try."""
    out = tmp_path / "new"
    assert main(_argv("pretrain", setups, out, "--resume")) == 0
    assert "nothing to resume in" in capsys.readouterr().err
    _assert_like_straight("pretrain", out, straight)


def test_resume_never_deletes_files_no_run_writes(setups, tmp_path, capsys):
    """A directory that holds other files (a checkpoint from llmkit init, the user's notes) is refused, untouched."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.jsonl").write_text("{}\n")
    (out / "notes.txt").write_text("mine")
    for flags in (["--resume"], []):
        assert main(_argv("pretrain", setups, out, *flags)) == 2
        err = capsys.readouterr().err
        assert "notes.txt" in err and err.count("\n") == 1, err
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl", "notes.txt"]


def test_a_finished_checkpoint_still_needs_resume(setups, straight, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(straight["pretrain"], out)
    assert main(_argv("pretrain", setups, out)) == 2
    assert "already exists and is not empty" in capsys.readouterr().err


def test_a_log_line_cut_by_a_kill_is_dropped_on_resume(setups, straight, tmp_path, monkeypatch):
    """Killed while appending to metrics.jsonl after the first checkpoint: the half line does not stop --resume."""
    from llmkit.train.metrics import MetricsLog

    out = tmp_path / "run"
    real = MetricsLog.write

    def write(self, record):
        if record.get("step") == 3 and "train_loss" in record:
            with self.path.open("a") as f:
                f.write(json.dumps(record)[:20])
            raise Stop
        real(self, record)

    with monkeypatch.context() as patch:
        patch.setattr(MetricsLog, "write", write)
        with pytest.raises(Stop):
            main(_argv("pretrain", setups, out))
    assert not (out / loop.METRICS).read_text().endswith("\n")
    assert main(_argv("pretrain", setups, out, "--resume")) == 0
    _assert_like_straight("pretrain", out, straight)


# ---- real kill -9 at every stage -----------------------------------------------------------------
# The child runs the command with one function wrapped to SIGKILL it at its stage: no Python cleanup runs.
_KILLER = """
import os, signal, sys
from pathlib import Path
from llmkit import checkpoint, files
from llmkit.cli import main
from llmkit.train import loop
from llmkit.train.metrics import MetricsLog

stage, argv = sys.argv[1], sys.argv[2:]
run_dir = Path(argv[argv.index("--train.out_dir") + 1])
name = "last" if argv[0] == "finetune" else run_dir.name  # the run's checkpoint directory
die = lambda: os.kill(os.getpid(), signal.SIGKILL)

def after(cls, method, when):
    real = getattr(cls, method)
    def wrapped(self, *args):
        result = real(self, *args)
        if when(self):
            die()
        return result
    setattr(cls, method, wrapped)

if stage == "after step-0 evaluation":
    after(loop.Run, "_log_eval", lambda run: run.state.step == 0)
elif stage == "after the first checkpoint":
    after(loop.Run, "_save", lambda run: True)
elif stage == "inside step 0's best save":
    real_manifest = checkpoint.write_manifest
    def write_manifest(directory):
        if directory.name.startswith(".best.tmp-"):
            die()
        return real_manifest(directory)
    checkpoint.write_manifest = write_manifest
elif stage == "inside the first save, before its manifest":
    real_manifest = checkpoint.write_manifest
    def write_manifest(directory):
        if directory.name.startswith(f".{name}.tmp-"):
            die()
        return real_manifest(directory)
    checkpoint.write_manifest = write_manifest
else:  # between the renames of the first save: after the first ("renamed to .new") or second ("moved aside")
    renames, real_replace = [], os.replace
    last = {"inside the first save, renamed to .new": 1, "inside the first save, moved aside": 2}[stage]
    def replace(src, dst, *args, **kwargs):
        result = real_replace(src, dst, *args, **kwargs)
        if name in (Path(src).name, Path(dst).name) and not str(dst).endswith(".json"):
            renames.append(dst)
            if len(renames) == last:
                die()
        return result
    files.os.replace = replace
main(argv)
"""

STAGES = {
    "pretrain": [
        "after step-0 evaluation",
        "inside the first save, before its manifest",
        "inside the first save, renamed to .new",
        "inside the first save, moved aside",
        "after the first checkpoint",
    ],
    "finetune": [
        "inside step 0's best save",
        "after step-0 evaluation",
        "inside the first save, before its manifest",
        "inside the first save, moved aside",
        "after the first checkpoint",
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_kill_9_at_every_stage_resumes_or_restarts_in_one_command(kind, setups, straight, tmp_path):
    """SIGKILL at each stage of a tiny run; from each state both `--resume` and a plain rerun (after a
    refusal that names --resume, once) end with the never-killed run's weights and log."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for stage in STAGES[kind]:
        killed = tmp_path / stage.replace(" ", "-") / "killed"
        argv = _argv(kind, setups, killed)
        proc = subprocess.run([sys.executable, "-c", _KILLER, stage, *argv], env=env, capture_output=True, timeout=600)
        assert proc.returncode == -9, (stage, proc.stderr.decode()[-2000:])
        for flags in (["--resume"], []):
            # a copy of the folder, with pretraining's interrupted saves that sit beside the run, same names
            out = tmp_path / f"{killed.parent.name}{'-resume' if flags else '-plain'}" / "killed"
            shutil.copytree(killed.parent, out.parent)
            attempts = [main(_argv(kind, setups, out, *flags))]
            if attempts[0] != 0:  # a plain rerun over a saved checkpoint is refused: the hint says --resume
                assert not flags, stage
                attempts.append(main(_argv(kind, setups, out, "--resume")))
            assert attempts[-1] == 0 and len(attempts) <= 2, (stage, flags, attempts)
            _assert_like_straight(kind, out, straight)


def test_an_out_dir_that_is_a_file_is_refused_untouched(setups, tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("not a directory")
    for flags in (["--resume"], []):
        assert main(_argv("pretrain", setups, out, *flags)) == 2
        assert "is not a directory" in capsys.readouterr().err
    assert out.read_text() == "not a directory"
