"""Sequence classifiers: a probability per label for each text, as transformers' text-classification pipeline.

The pipeline's default ``function_to_apply`` (transformers/pipelines/text_classification.py): sigmoid
when the model has a single label (``num_labels == 1``, or problem_type "multi_label_classification",
which llmkit's single-label fine-tuning never writes), softmax over the labels otherwise. The head
reads the pooled [CLS] state (encoders) or the last real token (decoders): the model does that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from llmkit.config import ModelConfig
from llmkit.predict.batches import DEFAULT_BATCH, encode, logits_per_text


def score_function(cfg: ModelConfig) -> str:
    """``"sigmoid"`` for a single-label head, else ``"softmax"`` (the pipeline's default rule)."""
    return "sigmoid" if cfg.num_labels == 1 else "softmax"


def to_scores(logits: torch.Tensor, function: str) -> torch.Tensor:
    """Logits (..., L) -> scores by ``function`` (softmax over the last dimension, or element-wise sigmoid)."""
    return torch.sigmoid(logits) if function == "sigmoid" else torch.softmax(logits, dim=-1)


@dataclass
class ClassScores:
    """One text's scores: ``scores[i]`` belongs to ``labels[i]`` (the head's order)."""

    text: str
    labels: list[str]
    scores: list[float]
    tokens: int  # tokens the model read (special tokens included, after truncation)

    def top(self, k: int | None = None) -> list[tuple[str, float]]:
        """The ``k`` best (label, score) pairs, best first (all with None); ties keep the head's order."""
        ranked = sorted(zip(self.labels, self.scores, strict=True), key=lambda pair: -pair[1])
        return ranked if k is None else ranked[:k]

    @property
    def label(self) -> str:
        return self.top(1)[0][0]

    @property
    def score(self) -> float:
        return self.top(1)[0][1]


def classify(
    model: nn.Module, texts: Sequence[str], batch_size: int = DEFAULT_BATCH, progress: bool = False
) -> list[ClassScores]:
    """The scores of every label for each text, in input order (see the module docstring for the rule)."""
    encodings = encode(model, texts)
    logits = logits_per_text(model, [e.ids for e in encodings], batch_size, progress)
    function, labels = score_function(model.config), model.config.label_names()
    return [
        ClassScores(text, labels, to_scores(row, function).tolist(), len(e.ids))
        for text, row, e in zip(texts, logits, encodings, strict=True)
    ]
