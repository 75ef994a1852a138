"""Document quality rules: Gopher's quality filter, C4's line and page rules, and the mojibake check.

Each rule takes the normalized text and its section of CurateConfig and returns the name of the
first check that failed ("gopher_quality.min_words") or None. C4 also returns the text without
the lines it drops. Thresholds and their sources: llmkit/curate/config.py. Standard library only.
"""

from __future__ import annotations

import re

from llmkit.curate.config import C4Config, EncodingConfig, GopherQualityConfig
from llmkit.curate.text import real_words, sentences, words

_BULLETS = ("•", "-", "*", "·", "‣", "◦", "▪")  # Gopher: "lines starting with a bullet point"
_ELLIPSES = ("...", "…")
# C4's terminal punctuation; a line ending in "..." is not a sentence end (TFDS c4_utils)
_TERMINAL = (".", "?", "!", '"', "'", "”", "’")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
_NO_ALPHA = re.compile(r"[\W\d_]*")  # no alphabetic character
_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")  # C4 removes these before the checks
# UTF-8 bytes decoded as Latin-1 or cp1252: a lead byte (Ã, Â, â, Å, Ð, ...) then a continuation-range character
_MOJIBAKE = re.compile(r"[ÂÃÄÅÆÇÐÑØÙâ][\u0080-\u00bf€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ]|\ufffd")


def encoding(text: str, cfg: EncodingConfig) -> str | None:
    """Too many mojibake sequences or replacement characters per character."""
    if text and len(_MOJIBAKE.findall(text)) / len(text) > cfg.max_bad_fraction:
        return "encoding.mojibake"
    return None


def gopher_quality(text: str, cfg: GopherQualityConfig) -> str | None:
    """Gopher's quality filter (Rae et al. 2021, A.1.1), checks in the paper's order."""
    tokens = words(text)
    real = real_words(text)
    if len(real) < cfg.min_words:
        return "gopher_quality.min_words"
    if cfg.max_words and len(real) > cfg.max_words:
        return "gopher_quality.max_words"
    mean = sum(map(len, real)) / len(real)
    if mean < cfg.min_mean_word_length:
        return "gopher_quality.min_mean_word_length"
    if cfg.max_mean_word_length and mean > cfg.max_mean_word_length:
        return "gopher_quality.max_mean_word_length"
    if text.count("#") / len(tokens) > cfg.max_symbol_word_ratio:
        return "gopher_quality.hash_ratio"
    if (text.count("...") + text.count("…")) / len(tokens) > cfg.max_symbol_word_ratio:
        return "gopher_quality.ellipsis_ratio"
    all_lines = text.splitlines()
    if sum(line.lstrip().startswith(_BULLETS) for line in all_lines) / len(all_lines) > cfg.max_bullet_lines_ratio:
        return "gopher_quality.bullet_lines"
    if sum(line.rstrip().endswith(_ELLIPSES) for line in all_lines) / len(all_lines) > cfg.max_ellipsis_lines_ratio:
        return "gopher_quality.ellipsis_lines"
    # by default "words" here are the text's whitespace-separated words: a comma is not a word without letters
    counted = text.split() if cfg.alpha_words == "whitespace" else tokens
    if sum(not _NO_ALPHA.fullmatch(w) for w in counted) / len(counted) < cfg.min_alpha_words_ratio:
        return "gopher_quality.alpha_words"
    if len(set(cfg.stop_words).intersection(w.lower() for w in real)) < cfg.min_stop_words:
        return "gopher_quality.stop_words"
    return None


def c4(text: str, cfg: C4Config) -> tuple[str, str | None]:
    """C4's rules (Raffel et al. 2020, 2.2): drop lines without terminal punctuation, with fewer than
    ``min_words_per_line`` words, with a word over ``max_word_length`` characters, mentioning javascript,
    or cookie/terms-of-use lines; drop the page for "lorem ipsum", a curly brace, or fewer than
    ``min_sentences`` sentences in the lines kept. Returns (kept lines joined by newlines, reason or None)."""
    kept, n_sentences = [], 0
    for raw in text.splitlines():
        line = raw.strip()
        parts = line.split()
        if cfg.max_word_length and len(line) > cfg.max_word_length and any(len(w) > cfg.max_word_length for w in parts):
            continue
        if "[" in line:  # every citation mark has one
            line = _CITATION.sub("", line)
        if cfg.terminal_punctuation and (not line.endswith(_TERMINAL) or line.endswith("...")):
            continue
        if len(parts) < cfg.min_words_per_line:
            continue
        lower = line.lower()
        if cfg.lorem_ipsum and "lorem ipsum" in lower:
            return text, "c4.lorem_ipsum"
        if cfg.javascript and "javascript" in lower:
            continue
        if cfg.curly_brace and "{" in line:
            return text, "c4.curly_brace"
        if cfg.policy and any(p in lower for p in _POLICY):
            continue
        n_sentences += len(sentences(line))
        kept.append(line)
    if not kept:
        return text, "c4.no_lines_kept"
    if n_sentences < cfg.min_sentences:
        return text, "c4.min_sentences"
    return "\n".join(kept), None
