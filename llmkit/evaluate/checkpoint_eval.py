"""`llmkit eval` end to end: a checkpoint directory and a task in, the report and its files out; or the
perplexity of a text file under the checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

from llmkit.chat.template import ChatTemplate
from llmkit.errors import LlmkitError
from llmkit.evaluate.evaluator import EvalReport, evaluate_task
from llmkit.evaluate.perplexity import Perplexity, perplexity
from llmkit.evaluate.readers import load_data
from llmkit.evaluate.report import plot, write_json
from llmkit.evaluate.tasks import Task
from llmkit.files import open_text
from llmkit.inference.loading import load_model, model_name, name_slug, require_lm_head


def parse_shots(text: str) -> list[int]:
    """``"0,1,5"`` -> [0, 1, 5]: distinct shot counts >= 0, at least one."""
    try:
        shots = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise LlmkitError(f"--shots {text!r} is not a comma-separated list of integers", "e.g. --shots 0,1,5") from None
    if not shots or min(shots) < 0 or len(set(shots)) != len(shots):
        raise LlmkitError(f"--shots {text!r} needs distinct counts >= 0", "e.g. --shots 0,1,5")
    return shots


def evaluate_checkpoint(
    directory: str | os.PathLike,
    task: Task,
    shots: list[int],
    limit: int | None = None,
    method: str | None = None,
    batch_size: int = 8,
    progress: bool = True,
    device: str = "auto",
    dtype: str | None = None,
    verify: bool = True,
) -> EvalReport:
    """``evaluate_task`` of the checkpoint at ``directory`` (named by its folder) on ``task``.

    Order: read the task's data (a seeded sample of ``limit`` items) -> load the model on ``device`` in
    ``dtype`` (its files checked against the manifest unless ``verify`` is False) -> evaluate at each shot count.
    """
    data = load_data(task, limit=limit)
    require_lm_head(directory, "eval with a task", "eval MODEL --labelled FILE")
    model = load_model(directory, device, dtype, verify)
    name = model_name(directory)
    template = ChatTemplate.for_model(directory, model.tokenizer) if task.chat else None
    return evaluate_task(model, task, data, shots, method, batch_size, progress, name, template)


def default_out(task: Task, directory: str | os.PathLike) -> Path:
    """runs/eval/TASK-NAME (the name the checkpoint carries), where results go unless the user names a folder."""
    return Path("runs") / "eval" / f"{task.name}-{name_slug(model_name(directory))}"


def save_report(report: EvalReport, out: Path) -> tuple[Path, Path]:
    """``out``/results.json (per-item predictions included) and ``out``/shots.png; their paths."""
    out.mkdir(parents=True, exist_ok=True)
    return write_json(report, out / "results.json"), plot(report, out / "shots.png")


def checkpoint_perplexity(
    directory: str | os.PathLike,
    path: Path,
    stride: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
    device: str = "auto",
    dtype: str | None = None,
    verify: bool = True,
) -> Perplexity:
    """Sliding-window perplexity of the UTF-8 text file (or .gz) at ``path`` under the checkpoint at ``directory``.

    Order: load the model -> check the file and the model's tokenizer -> encode -> score every token once.
    """
    require_lm_head(directory, "eval --perplexity", "eval MODEL --labelled FILE")
    model = load_model(directory, device, dtype, verify)
    if not path.is_file():
        raise LlmkitError(f"{path}: file not found", "pass a UTF-8 text file")
    if model.tokenizer is None:
        raise LlmkitError(f"{directory} has no tokenizer", "save one beside it (tokenizer.json)")
    ids = model.tokenizer.encode(read_text_file(path))
    return perplexity(model, ids, stride, batch_size, progress)


def read_text_file(path: Path) -> str:
    """A UTF-8 text file, or a gzip'd one (``.gz``, as the data sets in data/ are), or a one-line error."""
    try:
        with open_text(path) as file:  # a damaged .gz is open_text's own one-line error
            return file.read()
    except UnicodeDecodeError as err:
        raise LlmkitError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})", "pass a text file") from None
    except OSError as err:
        raise LlmkitError(f"{path}: unreadable ({err})", "restore the file or pass another") from None


def perplexity_line(result: Perplexity, path: Path) -> str:
    """One line: perplexity, mean NLL, tokens scored, and the windows that scored them."""
    return (
        f"perplexity {result.perplexity:.3f} (mean NLL {result.nll:.4f} nats/token) over {result.tokens:,} tokens "
        f"of {path}: {result.windows} windows of {result.window}, stride {result.stride}"
    )
