"""Predictions as lines: readable ones for a terminal, or JSON lines (one object per text) for programs."""

from __future__ import annotations

import json

from llmkit.predict.classify import ClassScores
from llmkit.predict.entities import TokenTags


def class_line(p: ClassScores, top_k: int = 1) -> str:
    """``positive 0.9871<TAB>the text``; with ``top_k`` > 1 the k best, comma-separated, best first."""
    best = ", ".join(f"{label} {score:.4f}" for label, score in p.top(top_k))
    return f"{best}\t{p.text}"


def class_json(p: ClassScores, top_k: int | None = None) -> str:
    """``{"text", "label", "score", "scores": [{"label", "score"}, ...]}``: every label, best first (the
    pipeline's ``top_k=None`` list), or the ``top_k`` best."""
    scores = [{"label": label, "score": score} for label, score in p.top(top_k)]
    return json.dumps({"text": p.text, "label": p.label, "score": p.score, "scores": scores}, ensure_ascii=False)


def entity_lines(p: TokenTags) -> list[str]:
    """The text, then one indented line per entity: type, word, character span and score."""
    lines = [p.text]
    if not p.entities:
        return lines + ["  (no entities)"]
    width = max(len(e.entity_group) for e in p.entities)
    for e in p.entities:
        lines.append(f"  {e.entity_group:<{width}}  {e.word!r}  {e.start}-{e.end}  {e.score:.4f}")
    return lines


def entity_json(p: TokenTags, tokens: bool = True) -> str:
    """``{"text", "entities": [{"entity_group", "score", "word", "start", "end"}], "tokens": [...]}``; each
    token with its span, best label, score and every label's probability (``scores``, the head's order)."""
    record = {"text": p.text, "entities": [e.to_dict() for e in p.entities]}
    if tokens:
        record["labels"] = p.labels
        record["tokens"] = [{"token": t.token, "start": t.start, "end": t.end, "label": t.label, "score": t.score,
                             "scores": t.scores} for t in p.tokens]  # fmt: skip
    return json.dumps(record, ensure_ascii=False)


def prediction_lines(predictions, as_json: bool, top_k: int = 1) -> list[str]:
    """Every prediction as lines, in order (JSON: one line per text)."""
    lines: list[str] = []
    for p in predictions:
        if isinstance(p, ClassScores):
            lines.append(class_json(p) if as_json else class_line(p, top_k))
        else:
            lines += [entity_json(p)] if as_json else entity_lines(p)
    return lines
