"""Fine-tuning: ``finetune(load_finetune_config(FILE))`` adapts an existing checkpoint to a task
(classify, tokens, continue, seq2seq, instruct) through the shared training loop (llmkit.train.loop.Run).

- ``config``: the [model] / [task] / [method] / [train] tables.
- ``data``: readers (TSV/JSONL, CoNLL), encoding with label alignment, deterministic batches.
- ``text2text``: seq2seq pairs (teacher forcing, greedy dev outputs) and instruct conversations
  (chat template, loss on assistant turns, packing, task-file mixes).
- ``tasks``: the registry of task kinds, one module per kind (classify, tokens, continued, seq2seq,
  instruct), each a ``Task`` owning its data preparation, head, batches, evaluation and best metric.
- ``run``: ``FinetuneRun`` (the loop's hooks: init_from, the method, OUT/best and OUT/last) and ``freeze``.
"""

from __future__ import annotations

from typing import Any

from llmkit.finetune.config import FinetuneConfig, load_finetune_config

__all__ = ["FinetuneConfig", "finetune", "load_finetune_config"]


def __getattr__(name: str) -> Any:
    # `finetune` pulls in torch; the config (what `llmkit finetune --help` and `plan` need) does not
    if name == "finetune":
        from llmkit.finetune.run import finetune

        return finetune
    raise AttributeError(f"module 'llmkit.finetune' has no attribute {name!r}")
