"""Training: ``pretrain`` runs a whole pretraining job; ``make_state`` + ``train_step`` are its step,
reusable by benchmarks and other loops.

- ``optim``: AdamW (decay on matrices only) and ``lr_at`` (linear warmup, cosine decay).
- ``distributed``: torchrun processes, ``wrap(model, "ddp")`` (the one place a model is wrapped).
- ``metrics``: metrics.jsonl and the loss-curve PNG.
- ``step``: the step (``make_state``, ``train_step``, ``train_batches``) and its throughput (FLOPs per
  token, the measured matmul peak).
- ``loop``: evaluation, checkpoints with ``train_state.pt``, and the loop.
"""

from llmkit.train.loop import evaluate, pretrain
from llmkit.train.optim import lr_at, make_optimizer
from llmkit.train.step import TrainState, flops_per_token, make_state, train_step

__all__ = [
    "TrainState",
    "evaluate",
    "flops_per_token",
    "lr_at",
    "make_optimizer",
    "make_state",
    "pretrain",
    "train_step",
]
