"""``tokens``: token classification (NER). CoNLL files of (words, BIO tags); an encoder's
``token_classifier`` (BertForTokenClassification: each word's label on its first sub-token); dev
entity-level precision, recall and F1 as seqeval computes them (default CoNLL mode), the best by F1."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llmkit.config import ModelConfig
from llmkit.data.tokenizer import Tokenizer
from llmkit.finetune import data as fdata
from llmkit.finetune.tasks.base import LabelTask, no_head_error, with_dropout
from llmkit.objectives import IGNORE_INDEX, Batch
from llmkit.train.step import TrainState


class TokensTask(LabelTask):
    best_metric = "f1"

    def read(self, path: str) -> list[tuple[list[str], list[str]]]:
        return fdata.read_conll(path)

    def tags(self, rows: list[tuple[list[str], list[str]]]) -> list[str]:
        return [tag for _, tags in rows for tag in tags]

    def encode(self, tokenizer: Tokenizer, rows: list, labels: Sequence[str], block: int) -> list[fdata.Encoded]:
        return fdata.encode_tokens(tokenizer, rows, labels, block)

    def head(self, base: ModelConfig, labels: list[str], dropout: float | None) -> ModelConfig:
        if base.family != "encoder":
            raise no_head_error("tokens", base.family, "tokens: an encoder (BERT)")
        # BertForTokenClassification has no pooler
        fields = {"num_labels": len(labels), "labels": list(labels)}
        return with_dropout(base, dropout, encoder_head="token_classifier", pooler=False, **fields)

    def predict(self, logits: torch.Tensor, batch: Batch) -> list[list[str]]:
        """Each row's tags at the tokens that carry a label (the words' first sub-tokens)."""
        predicted, labels = logits.argmax(-1).cpu(), batch.labels.cpu()
        return [[self.labels[i] for i in predicted[row][labels[row] != IGNORE_INDEX].tolist()]
                for row in range(len(labels))]  # fmt: skip

    def score(self, predictions: list[list[str]], state: TrainState) -> dict[str, float]:
        # words cut off by truncation get no prediction: they count as O (missed entities)
        padded = [p + ["O"] * (len(g) - len(p)) for g, p in zip(self.dev_gold, predictions, strict=True)]
        return score_tokens(self.dev_gold, padded)


def score_tokens(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level P/R/F1 (seqeval, default mode: an entity counts when type and span match; I- tags
    after O start an entity as in conlleval) and the share of words tagged right."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    gold_lists, predicted_lists = list(map(list, gold)), list(map(list, predicted))
    words = sum(len(s) for s in gold)
    right = sum(g == p for gs, ps in zip(gold, predicted, strict=True) for g, p in zip(gs, ps, strict=True))
    return {
        "precision": float(precision_score(gold_lists, predicted_lists, zero_division=0)),
        "recall": float(recall_score(gold_lists, predicted_lists, zero_division=0)),
        "f1": float(f1_score(gold_lists, predicted_lists, zero_division=0)),
        "word_accuracy": right / max(words, 1),
    }
