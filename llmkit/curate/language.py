"""Language identification with py3langid (a maintained fork of Lui & Baldwin's langid.py; its
naive-Bayes model over byte n-grams, 97 languages, ships inside the package: nothing is downloaded).

Why py3langid: on the project's own English, French and German text (bench/langid_compare.py,
docs/curation.md) it was as accurate as lingua-language-detector on documents and paragraphs and
several times faster, from a 4.6 MB wheel against lingua's 96 MB; lingua is better only on very short
strings (a few words), which the quality rules remove anyway. Probabilities are py3langid's
normalized ones (``norm_probs``), calibrated by the text's length.
"""

from __future__ import annotations

import functools

from llmkit.curate.config import LanguageConfig


@functools.lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def identify(text: str, sample_chars: int = 0) -> tuple[str, float]:
    """(ISO 639-1 code, probability) of the text's language, over its first ``sample_chars`` characters
    (all when 0)."""
    lang, score = _identifier().classify(text[:sample_chars] if sample_chars else text)
    return lang, float(score)


def check(text: str, cfg: LanguageConfig) -> tuple[str | None, str, float]:
    """("language", lang, score) when the text is not in ``cfg.languages`` with at least ``cfg.min_score``,
    else (None, lang, score)."""
    lang, score = identify(text, cfg.sample_chars)
    if lang not in cfg.languages or score < cfg.min_score:
        return "language.not_kept", lang, score
    return None, lang, score
