"""Gopher's repetition filter (Rae et al. 2021, appendix A.1.1, table A1).

Repeated lines and paragraphs (as a fraction of their count and of the characters), the characters
of the most frequent 2-, 3- and 4-gram, and the characters covered by repeated 5- to 10-grams, each
over the document's characters. The n-gram counts follow datatrove's GopherRepetitionFilter (a
repeated n-gram's words are skipped, so overlapping repeats are not counted twice). The n-grams are
numbered exactly with numpy (no hashing) so the counting runs in C; tests check the figures against a
plain tuple-of-words count.
"""

from __future__ import annotations

import numpy as np

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


def _ngram_ids(previous: np.ndarray, ids: np.ndarray, n: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense ids of the n-grams from those of the (n-1)-grams, and each id's first position.

    The pair (id of the (n-1)-gram at i, word at i + n - 1) names the n-gram at i exactly; np.unique turns
    the pairs into dense ids again, so the numbers stay below len * vocab (no overflow, no hashing)."""
    pairs = previous[: len(ids) - n + 1] * vocab + ids[n - 1 :]
    _, first, inverse = np.unique(pairs, return_index=True, return_inverse=True)
    return inverse.reshape(-1), first


def _top_ngram_chars(grams: np.ndarray, first: np.ndarray, n: int, prefix: np.ndarray) -> int:
    """Characters of the most frequent n-gram (words joined by spaces) times its count; 0 when none repeats.
    Among equally frequent n-grams the first to appear wins (as Counter.most_common over the n-grams in order)."""
    counts = np.bincount(grams)
    top = int(counts.max(initial=0))
    if top < 2:
        return 0
    i = int(first[counts == top].min())
    return int(prefix[i + n] - prefix[i] + n - 1) * top


def _repeated_ngram_chars(grams: np.ndarray, n: int, prefix: np.ndarray) -> int:
    """Characters (words joined without spaces) in n-grams that repeat an earlier one; after a repeat the
    scan jumps past it, so overlapping repeats count once.

    Only positions whose n-gram occurs more than once can repeat or be repeated, so the scan visits those
    alone: a once-seen n-gram between them changes nothing (it is never met again)."""
    counts = np.bincount(grams)
    multi = np.flatnonzero(counts[grams] > 1)
    seen: set[int] = set()
    chars = resume = 0
    for i, gram in zip(multi.tolist(), grams[multi].tolist(), strict=True):
        if i < resume:
            continue  # inside a repeat the scan jumped over
        if gram in seen:
            chars += int(prefix[i + n] - prefix[i])
            resume = i + n
        else:
            seen.add(gram)
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
    if len(tokens) < 2:
        return None
    numbers: dict[str, int] = {}
    ids = np.array([numbers.setdefault(token, len(numbers)) for token in tokens], dtype=np.int64)
    prefix = np.concatenate(([0], np.cumsum([len(token) for token in tokens])))
    grams = ids
    for n in range(2, min(10, len(tokens)) + 1):
        grams, first = _ngram_ids(grams, ids, n, len(numbers))
        if n <= 4:
            if _top_ngram_chars(grams, first, n, prefix) / size > getattr(cfg, f"max_top_{n}gram_char_fraction"):
                return f"gopher_repetition.top_{n}gram"
            continue
        if len(first) == len(grams):
            return None  # no n-gram repeats, so no longer one does either
        limit = getattr(cfg, f"max_duplicate_{n}gram_char_fraction")
        if _repeated_ngram_chars(grams, n, prefix) / size > limit:
            return f"gopher_repetition.duplicate_{n}grams"
    return None
