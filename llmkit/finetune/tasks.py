"""What each task kind adds to a checkpoint and how it is scored.

``head_config(base_cfg, kind, labels)`` gives the model config with the task's head: an encoder's
``classifier`` (on the pooled [CLS] state) or ``token_classifier``, a decoder's ``classifier`` (on
the last real token). ``score_classify`` and ``score_tokens`` turn dev-set predictions into the
task's metrics: accuracy and macro-F1; entity-level precision, recall and F1 as seqeval computes
them in its default (CoNLL) mode.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmkit.config import ModelConfig
from llmkit.errors import LlmkitError
from llmkit.evaluate.metrics import accuracy, macro_f1

BEST_METRIC = {"classify": "accuracy", "tokens": "f1", "continue": "val_loss", "instruct": "val_loss"}
LOWER_IS_BETTER = ("continue", "instruct")  # seq2seq's best is its [task] metric (higher is better)
NEEDS_FAMILY = {"seq2seq": "encoder_decoder", "instruct": "decoder"}


def head_config(base: ModelConfig, kind: str, labels: Sequence[str], dropout: float | None) -> ModelConfig:
    """``base`` with the head ``kind`` needs (``continue`` keeps the model as it is)."""
    changes: dict = {} if dropout is None else {"dropout": dropout}
    if kind == "continue":
        if base.has_classifier or (base.family == "encoder" and base.encoder_head == "none"):
            raise LlmkitError(
                "continued pretraining needs a language-model head, and init_from has none",
                "start from a checkpoint with its LM head (a decoder, an encoder with an MLM head, or a T5)",
            )
        return base.replace(**changes)
    if kind in NEEDS_FAMILY:
        if base.family != NEEDS_FAMILY[kind] or base.has_classifier:
            raise LlmkitError(
                f"task '{kind}' needs a {NEEDS_FAMILY[kind]} model with its LM head, and init_from is a "
                f"{base.family}{' with a classifier' if base.has_classifier else ''}",
                "seq2seq: a T5-family checkpoint; instruct: a decoder (Llama, GPT-2, SmolLM2)",
            )
        return base.replace(**changes)
    label_fields = {"num_labels": len(labels), "labels": list(labels)}
    if base.family == "encoder":
        head = "classifier" if kind == "classify" else "token_classifier"
        # BertForSequenceClassification reads the pooler; BertForTokenClassification has none
        return base.replace(encoder_head=head, pooler=kind == "classify", **label_fields, **changes)
    if base.family == "decoder" and kind == "classify":
        return base.replace(decoder_head="classifier", **label_fields, **changes)
    raise LlmkitError(
        f"task '{kind}' has no head for a {base.family} model",
        "classify: an encoder (BERT) or a decoder; tokens: an encoder",
    )


def score_classify(gold: Sequence[str], predicted: Sequence[str]) -> dict[str, float]:
    return {"accuracy": accuracy(gold, predicted), "macro_f1": macro_f1(gold, predicted)}


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
