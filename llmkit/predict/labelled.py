"""`llmkit eval MODEL --labelled FILE`: a classifier scored on a labelled file of the fine-tuning format.

Sequence classifiers read ``llmkit.finetune.data.read_labelled``'s files (TSV with a header row, or
JSONL; ``text_field`` and ``label_field`` name the columns) and report accuracy and macro-F1 (the
fine-tuning dev metrics, ``finetune.tasks.classify.score_classify``), a per-class table (precision, recall,
F1, support, as scikit-learn's classification_report) and a confusion matrix. Token classifiers read
CoNLL files (``read_conll``): each word is tagged at its first sub-token, as fine-tuning's dev set is,
and scored by seqeval (default CoNLL mode; ``finetune.tasks.tokens.score_tokens``) overall and per entity type.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from llmkit.files import atomic_write
from llmkit.finetune import data as fdata
from llmkit.finetune.tasks.classify import score_classify
from llmkit.finetune.tasks.tokens import score_tokens
from llmkit.objectives import IGNORE_INDEX
from llmkit.predict.batches import DEFAULT_BATCH, logits_per_text
from llmkit.predict.classify import classify
from llmkit.predict.predictor import require_head


@dataclass
class LabelledReport:
    """Scores of one model on one labelled file; ``per_class`` rows are dicts of label, precision,
    recall, f1, support; ``confusion[i][j]`` counts gold ``labels[i]`` predicted as ``labels[j]``."""

    model: str
    path: str
    kind: str  # "sequence" or "token"
    count: int  # texts (sentences for token classifiers)
    metrics: dict[str, float]
    per_class: list[dict]
    labels: list[str] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)
    items: list[dict] = field(default_factory=list)  # per text: gold and predicted


def per_class(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> list[dict]:
    """Precision, recall, F1 and support of each label (0 where undefined, as scikit-learn's zero_division=0);
    labels of the head that neither the gold nor the predictions use are left out."""
    rows = []
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(gold, predicted, strict=True))
        n_pred, support = sum(p == label for p in predicted), sum(g == label for g in gold)
        if not n_pred and not support:
            continue
        precision, recall = tp / n_pred if n_pred else 0.0, tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"label": label, "precision": precision, "recall": recall, "f1": f1, "support": support})
    return rows


def confusion_matrix(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> list[list[int]]:
    """Counts of (gold, predicted) pairs: rows are gold labels, columns predictions, both in ``labels`` order."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, predicted, strict=True):
        matrix[index[g]][index[p]] += 1
    return matrix


def evaluate_sequences(
    model: nn.Module, path: str | os.PathLike, text_field: str, label_field: str, columns: Sequence[str] = (),
    batch_size: int = DEFAULT_BATCH, progress: bool = False, name: str = "",
) -> LabelledReport:  # fmt: skip
    """Order: read (text, label) rows -> check every label is the head's -> predict -> metrics, table, matrix."""
    rows = fdata.read_labelled(path, text_field, label_field, columns)
    labels = model.config.label_names()
    gold = [label for _, label in rows]
    fdata.check_labels(gold, labels, str(path))
    scores = classify(model, [text for text, _ in rows], batch_size, progress)
    predicted = [s.label for s in scores]
    items = [{"text": s.text, "gold": g, "predicted": s.label, "score": s.score}
             for s, g in zip(scores, gold, strict=True)]  # fmt: skip
    return LabelledReport(
        name, str(path), "sequence", len(rows), score_classify(gold, predicted), per_class(gold, predicted, labels),
        labels, confusion_matrix(gold, predicted, labels), items,
    )  # fmt: skip


def evaluate_tokens(
    model: nn.Module, path: str | os.PathLike, batch_size: int = DEFAULT_BATCH, progress: bool = False, name: str = ""
) -> LabelledReport:
    """Order: read CoNLL sentences -> check the tags -> encode the words (first sub-token carries each word's
    tag) -> predict -> words cut off by the window count as O -> seqeval overall and per type."""
    from seqeval.metrics import classification_report

    sentences = fdata.read_conll(path)
    labels = model.config.label_names()
    fdata.check_labels([t for _, tags in sentences for t in tags], labels, str(path))
    encoded = fdata.encode_tokens(model.tokenizer, sentences, labels, model.config.max_seq_len)
    logits = logits_per_text(model, [e.ids for e in encoded], batch_size, progress)
    gold, predicted = [tags for _, tags in sentences], []
    for e, row, tags in zip(encoded, logits, gold, strict=True):
        firsts = [i for i, label in enumerate(e.labels) if label != IGNORE_INDEX]
        words = [labels[int(row[i].argmax())] for i in firsts]
        predicted.append(words + ["O"] * (len(tags) - len(words)))
    report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    types = [
        {"label": kind, "precision": float(r["precision"]), "recall": float(r["recall"]), "f1": float(r["f1-score"]),
         "support": int(r["support"])}
        for kind, r in report.items() if not kind.endswith(" avg")
    ]  # fmt: skip
    items = [{"words": words, "gold": g, "predicted": p}
             for (words, _), g, p in zip(sentences, gold, predicted, strict=True)]  # fmt: skip
    return LabelledReport(name, str(path), "token", len(sentences), score_tokens(gold, predicted), types, labels,
                          items=items)  # fmt: skip


def evaluate_labelled(
    model: nn.Module, path: str | os.PathLike, text_field: str = "sentence", label_field: str = "label",
    columns: Sequence[str] = (), batch_size: int = DEFAULT_BATCH, progress: bool = False, name: str = "",
) -> LabelledReport:  # fmt: skip
    """``evaluate_sequences`` or ``evaluate_tokens``, by the model's head."""
    if require_head(model, name or "this model") == "sequence":
        return evaluate_sequences(model, path, text_field, label_field, columns, batch_size, progress, name)
    return evaluate_tokens(model, path, batch_size, progress, name)


def table(report: LabelledReport) -> str:
    """The overall metrics line, then the per-class (per-type) rows with a macro average."""
    unit = "texts" if report.kind == "sequence" else "sentences"
    head = f"{report.model or 'model'} on {report.path}: {report.count} {unit}"
    lines = [head, "  ".join(f"{k} {v:.4f}" for k, v in report.metrics.items())]
    header = ["label" if report.kind == "sequence" else "entity type", "precision", "recall", "f1", "support"]
    rows = [[r["label"], f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}", str(r["support"])]
            for r in report.per_class]  # fmt: skip
    if report.per_class:
        n = len(report.per_class)
        mean = [sum(r[k] for r in report.per_class) / n for k in ("precision", "recall", "f1")]
        rows.append(["macro avg", *(f"{m:.4f}" for m in mean), str(sum(r["support"] for r in report.per_class))])
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]
    for cells in [header, *rows]:
        lines.append(
            "  ".join([cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)])
        )
    return "\n".join(lines)


def write_json(report: LabelledReport, path: str | os.PathLike) -> Path:
    """results.json: the whole report, per-item predictions included (atomic)."""
    return atomic_write(path, json.dumps(asdict(report), indent=2, ensure_ascii=False) + "\n")


def plot_confusion(report: LabelledReport, path: str | os.PathLike) -> Path:
    """The confusion matrix as a PNG: counts in each cell, shaded by the share of the gold row (viridis)."""
    from llmkit.viz.style import HEATMAP, new_figure, save_png

    n = len(report.labels)
    size = max(3.5, 0.6 * n + 2)
    fig = new_figure(size, size * 0.9, layout="constrained")
    ax = fig.add_subplot()
    shares = [[c / max(sum(row), 1) for c in row] for row in report.confusion]
    image = ax.imshow(shares, cmap=HEATMAP, vmin=0, vmax=1)
    for i, row in enumerate(report.confusion):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if shares[i][j] < 0.6 else "black")
    ax.set_xticks(range(n), report.labels, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), report.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    accuracy = report.metrics.get("accuracy")
    ax.set_title(f"{report.model or 'model'}: accuracy {accuracy:.3f}" if accuracy is not None else report.model)
    fig.colorbar(image, ax=ax, label="share of the gold row")
    return save_png(fig, path)


def save(report: LabelledReport, out: Path) -> list[Path]:
    """``out``/results.json, and for a sequence classifier ``out``/confusion.png; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [write_json(report, out / "results.json")]
    if report.kind == "sequence":
        written.append(plot_confusion(report, out / "confusion.png"))
    return written
