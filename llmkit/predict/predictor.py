"""``predict(model, texts)``: the head of the checkpoint decides between label scores and entities."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from llmkit.errors import LlmkitError
from llmkit.inference.loading import head_kind
from llmkit.predict.batches import DEFAULT_BATCH
from llmkit.predict.classify import ClassScores, classify
from llmkit.predict.entities import TokenTags, tag_entities


def require_head(model: nn.Module, name: str = "this model") -> str:
    """``"sequence"`` or ``"token"``; a model without a classification head is a one-line error."""
    kind = head_kind(model.config)
    if kind is None:
        cfg = model.config
        head = cfg.encoder_head if cfg.family == "encoder" else "language-model"
        raise LlmkitError(
            f"{name} has no classification head ({cfg.family}, {head} head); predict needs a fine-tuned classifier",
            "fine-tune one (llmkit finetune, [task] kind classify or tokens); for text use llmkit generate",
        )
    return kind


def predict(
    model: nn.Module, texts: Sequence[str], batch_size: int = DEFAULT_BATCH, progress: bool = False
) -> list[ClassScores] | list[TokenTags]:
    """Label scores per text (sequence classifiers) or entities per text (token classifiers), in input order."""
    if not texts:
        raise LlmkitError("no texts to predict", "give TEXT arguments or --file")
    kind = require_head(model)
    run = classify if kind == "sequence" else tag_entities
    return run(model, texts, batch_size, progress)
