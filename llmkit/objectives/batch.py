"""The Batch every objective returns, the loss over it, and the small tensor helpers they share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llmkit.errors import LlmkitError

IGNORE_INDEX = -100  # labels with this value take no loss (torch's cross_entropy default, as in transformers)

Rows = torch.Tensor | Sequence[torch.Tensor]  # (B, L), or B rows of their own lengths


@dataclass
class Batch:
    """Keyword arguments for ``model(**batch.inputs)`` and the target ids (``IGNORE_INDEX`` where no loss)."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor on ``device``. ``non_blocking`` to a GPU copies from pinned (page-locked)
        host memory: only such a copy runs asynchronously, so the host goes on preparing the next batch."""

        def move(t: torch.Tensor) -> torch.Tensor:
            if non_blocking and torch.device(device).type == "cuda" and t.device.type == "cpu":
                t = t.pin_memory()
            return t.to(device, non_blocking=non_blocking)

        return Batch({name: move(t) for name, t in self.inputs.items()}, move(self.labels))

    @property
    def n_target_tokens(self) -> int:
        """Positions that take a loss (labels != -100): for tokens/s and for weighting losses."""
        return int((self.labels != IGNORE_INDEX).sum())


# ---- loss -----------------------------------------------------------------------------------
def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the positions where ``labels != -100``.

    Order: logits (..., V) cast to fp32 (log-softmax over a large vocabulary loses digits in bf16)
    -> flattened with the labels to (N, V) and (N,) -> summed over the kept positions -> divided by
    their count. With no kept position the loss is 0 rather than torch's nan, so an empty micro-batch
    cannot poison an accumulated gradient.
    """
    logits = logits.float().reshape(-1, logits.shape[-1])
    labels = labels.reshape(-1)
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


# ---- helpers --------------------------------------------------------------------------------
def as_ids(tokens: torch.Tensor) -> torch.Tensor:
    """A (B, L) long tensor; token streams are often stored as uint16 or int32."""
    if tokens.dim() != 2:
        raise LlmkitError(f"expected token windows of shape (batch, length), got {tuple(tokens.shape)}")
    return tokens.long()


def as_rows(tokens: Rows) -> list[torch.Tensor]:
    """B 1-D long tensors on the CPU, from a (B, L) tensor or a list of rows."""
    if isinstance(tokens, torch.Tensor):
        tokens = as_ids(tokens)
    return [torch.as_tensor(row).long().cpu() for row in tokens]


def rand(shape: torch.Size, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) drawn on the generator's device, then moved to ``device``."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def randint(high: int, shape: torch.Size, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Uniform integers in [0, high) drawn on the generator's device, then moved to ``device``."""
    return torch.randint(high, shape, generator=generator, device=generator.device).to(device)
