"""Gopher's repetition filter (Rae et al. 2021, appendix A.1.1, table A1).

Repeated lines and paragraphs (as a fraction of their count and of the characters), the characters
of the most frequent 2-, 3- and 4-gram, and the characters covered by repeated 5- to 10-grams, each
over the document's characters. The n-gram counts follow datatrove's GopherRepetitionFilter (a
repeated n-gram's words are skipped, so overlapping repeats are not counted twice). Standard library only.
"""

from __future__ import annotations

from collections import Counter

from llmkit.curate.config import GopherRepetitionConfig
from llmkit.curate.text import lines, paragraphs, words


def _duplicates(items: list[str]) -> tuple[int, int]:
    """How many items repeat an earlier one, and their characters."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return list(zip(*(tokens[i:] for i in range(n)), strict=False))  # the shorter tails end it


def _top_ngram_chars(tokens: list[str], n: int) -> int:
    """Characters of the most frequent n-gram (words joined by spaces) times its count; 0 when none repeats."""
    grams = _ngrams(tokens, n)
    if len(set(grams)) == len(grams):
        return 0
    gram, count = Counter(grams).most_common(1)[0]
    return (sum(map(len, gram)) + n - 1) * count


def _repeated_ngram_chars(tokens: list[str], n: int, grams: list[tuple[str, ...]], prefix: list[int]) -> int:
    """Characters (words joined without spaces) in n-grams that repeat an earlier one; after a repeat the
    scan jumps past it, so overlapping repeats count once."""
    seen: set[tuple[str, ...]] = set()
    chars = i = 0
    while i < len(grams):
        gram = grams[i]
        if gram in seen:
            chars += prefix[i + n] - prefix[i]
            i += n
        else:
            seen.add(gram)
            i += 1
    return chars


def gopher_repetition(text: str, cfg: GopherRepetitionConfig) -> str | None:
    """The name of the first repetition check that fails, or None."""
    if not text:
        return "gopher_repetition.empty"
    size = len(text)
    paras = paragraphs(text)
    count, chars = _duplicates(paras)
    if count / len(paras) > cfg.max_duplicate_paragraph_fraction:
        return "gopher_repetition.duplicate_paragraphs"
    if chars / size > cfg.max_duplicate_paragraph_char_fraction:
        return "gopher_repetition.duplicate_paragraph_chars"
    all_lines = lines(text)
    count, chars = _duplicates(all_lines)
    if count / len(all_lines) > cfg.max_duplicate_line_fraction:
        return "gopher_repetition.duplicate_lines"
    if chars / size > cfg.max_duplicate_line_char_fraction:
        return "gopher_repetition.duplicate_line_chars"
    tokens = words(text)
    for n in (2, 3, 4):
        if _top_ngram_chars(tokens, n) / size > getattr(cfg, f"max_top_{n}gram_char_fraction"):
            return f"gopher_repetition.top_{n}gram"
    prefix = [0]
    for token in tokens:
        prefix.append(prefix[-1] + len(token))
    for n in range(5, 11):
        grams = _ngrams(tokens, n)
        if len(set(grams)) == len(grams):
            return None  # no n-gram repeats, so no longer one does either
        limit = getattr(cfg, f"max_duplicate_{n}gram_char_fraction")
        if _repeated_ngram_chars(tokens, n, grams, prefix) / size > limit:
            return f"gopher_repetition.duplicate_{n}grams"
    return None
