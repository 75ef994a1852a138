"""Fine-tuning: ``finetune(load_finetune_config(FILE))`` adapts an existing checkpoint to a task
(classify, tokens, continue) through the shared training loop (llmkit.train.loop.Run).

- ``config``: the [model] / [task] / [method] / [train] tables.
- ``data``: readers (TSV/JSONL, CoNLL), encoding with label alignment, deterministic batches.
- ``tasks``: each task's head and metrics.
- ``run``: ``FinetuneRun`` (the loop's hooks) and ``freeze``.
"""

from llmkit.finetune.config import FinetuneConfig, load_finetune_config
from llmkit.finetune.run import finetune

__all__ = ["FinetuneConfig", "finetune", "load_finetune_config"]
