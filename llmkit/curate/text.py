"""Text helpers every rule shares: normalization, words, lines, paragraphs, sentences, the exact-dedup key.

One word splitter for all rules, so thresholds mean the same thing everywhere: a word is a run of
word characters (apostrophes and hyphens inside it kept: "don't", "well-known") or a run of
punctuation; Gopher's "symbol" words are the punctuation runs. Standard library only.
"""

from __future__ import annotations

import functools
import re
import unicodedata

_WORD = re.compile(r"\w+(?:[-'’]\w+)*|[^\w\s]+")
_REAL_WORD = re.compile(r"\w+(?:[-'’]\w+)*")
_SPACES = re.compile(r"[^\S\n]+")  # whitespace but newlines
_BLANK_LINES = re.compile(r"\n{3,}")
_PARAGRAPH = re.compile(r"\n{2,}")
_LINES = re.compile(r"\n+")
# a sentence ends at . ! ? (and closing quotes or brackets after them) followed by whitespace
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"'”’)\]])\s+")
_KEY_DROP = re.compile(r"[\W_]+")


def normalize(text: str) -> str:
    """Unicode NFC; spaces and tabs runs to one space; each line stripped; 3+ newlines to 2; ends stripped.
    Windows and old Mac line ends become "\\n" first."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = "\n".join(line.strip() for line in _SPACES.sub(" ", text).split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


@functools.lru_cache(maxsize=2)
def words(text: str) -> tuple[str, ...]:
    """Words and punctuation runs, in order. Cached for the last texts: the repetition and quality rules
    both split the same document (a tuple, so no caller can change the cached copy)."""
    return tuple(_WORD.findall(text))


def is_symbol(word: str) -> bool:
    """A punctuation run (no letter, digit or underscore)."""
    return not any(ch.isalnum() or ch == "_" for ch in word)


def lines(text: str) -> list[str]:
    """Non-empty lines (runs of newlines split), as Gopher's repetition rules count them."""
    return [line for line in _LINES.split(text) if line]


def paragraphs(text: str) -> list[str]:
    """Blocks separated by blank lines."""
    return _PARAGRAPH.split(text.strip())


def sentences(text: str) -> list[str]:
    """Sentences of one line by a punctuation rule (no model): enough to count them as C4 does."""
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def dedup_key(text: str) -> str:
    """The text exact dedup compares: lowercased, punctuation and whitespace runs to one space."""
    return _KEY_DROP.sub(" ", text.lower()).strip()


def real_words(text: str) -> list[str]:
    """The words of ``words`` without the punctuation runs."""
    return _REAL_WORD.findall(text)


def shingle_words(text: str) -> list[str]:
    """Lowercased words without punctuation: what near-dedup shingles are made of."""
    return _REAL_WORD.findall(text.lower())
