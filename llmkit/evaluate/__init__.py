"""Evaluation: k-shot in-context learning on task files, task metrics, and perplexity (layer L3).

- ``tasks``: the TOML task format; an item's prompt.
- ``readers``: a task's data (jsonl, tsv, lines; gzip by suffix) -> items and the demonstration pool.
- ``scoring``: label log-likelihood (lm-evaluation-harness style) and greedy generation.
- ``metrics``: accuracy, macro-F1, ROUGE (rouge-score), BLEU and chrF (sacrebleu).
- ``evaluator``: ``evaluate_task`` over shot counts -> ``EvalReport``.
- ``report``: the shots x metrics table, JSON, and the metric-against-shots PNG.
- ``perplexity``: sliding-window perplexity of a text (``from llmkit.evaluate.perplexity import
  perplexity``: not re-exported here, where the function would be shadowed by its module).

Names are imported lazily, so reading a task file (``llmkit prompt``) does not load torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Task": "llmkit.evaluate.tasks",
    "TaskData": "llmkit.evaluate.readers",
    "load_task": "llmkit.evaluate.tasks",
    "load_data": "llmkit.evaluate.readers",
    "evaluate_task": "llmkit.evaluate.evaluator",
    "build_prompts": "llmkit.evaluate.evaluator",
    "EvalReport": "llmkit.evaluate.evaluator",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'llmkit.evaluate' has no attribute '{name}'")
