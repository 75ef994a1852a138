"""``classify``: sequence classification. TSV or JSONL rows of (text, label); an encoder's
``classifier`` on the pooled [CLS] state (BertForSequenceClassification) or a decoder's on its last
real token (LlamaForSequenceClassification); dev accuracy and macro-F1, the best by accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llmkit.config import ModelConfig
from llmkit.data.tokenizer import Tokenizer
from llmkit.evaluate.metrics import accuracy, macro_f1
from llmkit.finetune import data as fdata
from llmkit.finetune.tasks.base import LabelTask, no_head_error, with_dropout
from llmkit.objectives import Batch
from llmkit.train.step import TrainState


class ClassifyTask(LabelTask):
    best_metric = "accuracy"

    def read(self, path: str) -> list[tuple[str, str]]:
        return fdata.read_labelled(path, self.cfg.text_field, self.cfg.label_field, self.cfg.columns)

    def tags(self, rows: list[tuple[str, str]]) -> list[str]:
        return [label for _, label in rows]

    def encode(self, tokenizer: Tokenizer, rows: list, labels: Sequence[str], block: int) -> list[fdata.Encoded]:
        return fdata.encode_classify(tokenizer, rows, labels, block)

    def head(self, base: ModelConfig, labels: list[str], dropout: float | None) -> ModelConfig:
        fields = {"num_labels": len(labels), "labels": list(labels)}
        if base.family == "encoder":  # BertForSequenceClassification reads the pooler
            return with_dropout(base, dropout, encoder_head="classifier", pooler=True, **fields)
        if base.family == "decoder":
            return with_dropout(base, dropout, decoder_head="classifier", **fields)
        raise no_head_error("classify", base.family, "classify: an encoder (BERT) or a decoder")

    def predict(self, logits: torch.Tensor, batch: Batch) -> list[str]:
        return [self.labels[i] for i in logits.argmax(-1).cpu().tolist()]

    def score(self, predictions: list[str], state: TrainState) -> dict[str, float]:
        return score_classify(self.dev_gold, predictions)


def score_classify(gold: Sequence[str], predicted: Sequence[str]) -> dict[str, float]:
    """Accuracy and macro-F1 of predicted labels."""
    return {"accuracy": accuracy(gold, predicted), "macro_f1": macro_f1(gold, predicted)}
