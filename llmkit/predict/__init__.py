"""Predictions of a fine-tuned classification head, as transformers' pipelines give them (layer L3).

- ``batches``: texts -> token encodings (truncated to the window, special tokens kept) -> logits per text,
  run in length-sorted batches and returned in input order; ``read_texts`` for ``--file``.
- ``classify``: sequence classifiers (encoder [CLS]/pooled, decoder last real token): probabilities per
  label by the text-classification pipeline's rule (softmax, or sigmoid for a single label), top-k.
- ``entities``: token classifiers: per-token probabilities grouped into entities with character spans by
  the token-classification pipeline's ``aggregation_strategy="simple"``.
- ``predictor``: ``predict(model, texts)``, either of the two by the checkpoint's head.
- ``output``: predictions as terminal lines or JSON lines.
- ``labelled``: ``llmkit eval MODEL --labelled FILE``: the fine-tuning data format scored (accuracy,
  macro-F1, per-class table, confusion matrix; seqeval entity P/R/F1 for token classifiers).

Here rather than in ``llmkit.evaluate``: labelled evaluation reads files with ``llmkit.finetune``'s
readers and scores with its metrics, and ``finetune`` already imports ``evaluate`` (one direction only).
"""

from __future__ import annotations

from llmkit.predict.predictor import predict

__all__ = ["predict"]
