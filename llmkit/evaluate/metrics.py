"""Task metrics: accuracy and macro-F1 (computed here), ROUGE (``rouge-score``), BLEU and chrF (``sacrebleu``).

Each function takes plain lists, so the tests compare them with the reference libraries called
directly. Scales follow each metric's own convention: accuracy, F1 and ROUGE in [0, 1], BLEU and
chrF in [0, 100] (as sacrebleu prints them).
"""

from __future__ import annotations

from collections.abc import Sequence


def accuracy(gold: Sequence[str], predicted: Sequence[str | None]) -> float:
    """Share of items whose prediction equals the gold label (an unparsed prediction, None, is wrong)."""
    _same_length(gold, predicted)
    return sum(g == p for g, p in zip(gold, predicted, strict=True)) / len(gold)


def macro_f1(gold: Sequence[str], predicted: Sequence[str | None]) -> float:
    """Mean over classes of F1 = 2 TP / (2 TP + FP + FN); 0 for a class with no TP.

    The classes are those in the gold labels or the predictions (as scikit-learn's default), so a
    class the model never predicts counts with F1 0. An unparsed prediction (None) is a false
    negative for the gold class and a false positive for none.
    """
    _same_length(gold, predicted)
    classes = sorted(set(gold) | {p for p in predicted if p is not None})
    scores = []
    for c in classes:
        tp = sum(g == c and p == c for g, p in zip(gold, predicted, strict=True))
        fp = sum(g != c and p == c for g, p in zip(gold, predicted, strict=True))
        fn = sum(g == c and p != c for g, p in zip(gold, predicted, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


def rouge(
    predictions: Sequence[str], references: Sequence[Sequence[str]], use_stemmer: bool = True
) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures; with several references an item scores against the
    best (``score_multi``). Porter stemming on, as in the summarization literature since Lin (2004)."""
    from rouge_score import rouge_scorer

    _same_length(predictions, references)
    keys = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=use_stemmer)
    totals = dict.fromkeys(keys, 0.0)
    for prediction, refs in zip(predictions, references, strict=True):
        scores = scorer.score_multi(list(refs), prediction)
        for key in keys:
            totals[key] += scores[key].fmeasure
    return {key: total / len(predictions) for key, total in totals.items()}


def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU with sacrebleu's defaults (13a tokenization, "exp" smoothing, 4-grams, brevity penalty)."""
    import sacrebleu

    return sacrebleu.corpus_bleu(list(predictions), _reference_streams(predictions, references)).score


def chrf(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus chrF (character 6-grams, beta 2) with sacrebleu's defaults."""
    import sacrebleu

    return sacrebleu.corpus_chrf(list(predictions), _reference_streams(predictions, references)).score


def _reference_streams(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """sacrebleu wants one stream per reference position; items with fewer references pad with None."""
    _same_length(predictions, references)
    width = max(len(refs) for refs in references)
    return [[refs[j] if j < len(refs) else None for refs in references] for j in range(width)]


def _same_length(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b) or not a:
        raise ValueError(f"need the same, non-zero number of items on both sides ({len(a)} and {len(b)})")
