"""Training: ``pretrain`` runs a whole pretraining job; ``make_state`` + ``train_step`` are its step,
reusable by benchmarks and other loops.

- ``optim``: AdamW (decay on matrices only) and ``lr_at`` (linear warmup, cosine decay).
- ``distributed``: torchrun processes, ``wrap(model, "ddp")`` (the one place a model is wrapped).
- ``metrics``: metrics.jsonl and the loss-curve PNG.
- ``loop``: the step, evaluation, checkpoints with ``train_state.pt``, and the loop.
"""

from llmkit.train.loop import TrainState, evaluate, flops_per_token, make_state, pretrain, train_step
from llmkit.train.optim import lr_at, make_optimizer

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
