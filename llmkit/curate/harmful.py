"""The harmful-content word-list rule: a document with at least ``min_matches`` listed words or phrases is removed.

The lists ship beside this module (llmkit/curate/blocklists/: LDNOOBW's English, French and German
files, CC BY 4.0, origin and pin in SOURCE.md there). Matching is on lowercased whole words: a listed
word inside a longer word ("class" for "ass") does not count, and a listed phrase matches with any
whitespace between its words. Standard library only.
"""

from __future__ import annotations

import re
from pathlib import Path

from llmkit.curate.config import HarmfulConfig
from llmkit.errors import LlmkitError

LIST_DIR = Path(__file__).resolve().parent / "blocklists"
_WORD_RUN = re.compile(r"\w+")


def available_lists() -> list[str]:
    return sorted(p.stem for p in LIST_DIR.glob("*.txt"))


def load_terms(cfg: HarmfulConfig) -> list[str]:
    """The configured lists' entries, lowercased, without blanks and duplicates, sorted."""
    paths = []
    for name in cfg.lists:
        path = LIST_DIR / f"{name}.txt"
        if not path.is_file():
            raise LlmkitError(f"harmful.lists: no list named {name!r}", f"choose from {', '.join(available_lists())}")
        paths.append(path)
    if cfg.extra_list:
        if not Path(cfg.extra_list).is_file():
            raise LlmkitError(f"harmful.extra_list: {cfg.extra_list} not found", "give a file of one term per line")
        paths.append(Path(cfg.extra_list))
    terms = {line.strip().lower() for path in paths for line in path.read_text(encoding="utf-8").splitlines()}
    return sorted(t for t in terms if t)


class WordList:
    """One alternation of all terms (longest first), matched between word boundaries.

    A match starts and ends at a word boundary, so each run of word characters in a term is a whole word of
    the text too: a term whose words are not all among the text's words cannot match. So the text's words are
    collected in one pass of a plain word regex, and the alternation is run over the terms that can match only
    (most texts: none). The alternation of hundreds of terms tried at every position was the slow part; with
    the same terms in the same order, the narrowed alternation finds the same matches."""

    def __init__(self, terms: list[str], min_matches: int = 1) -> None:
        self.min_matches = max(1, min_matches)
        ordered = sorted(terms, key=len, reverse=True)
        self.pieces = [r"\s+".join(map(re.escape, t.split())) for t in ordered]
        self.pattern = self._compile(tuple(range(len(self.pieces)))) if self.pieces else None
        self.by_first_word: dict[str, list[tuple[int, tuple[str, ...]]]] = {}
        self.wordless: list[tuple[int, list[str]]] = []  # terms without word characters (an emoji): by substring
        for index, term in enumerate(ordered):
            if words := tuple(_WORD_RUN.findall(term)):
                self.by_first_word.setdefault(words[0], []).append((index, words))
            else:
                self.wordless.append((index, term.split()))
        self._narrowed: dict[tuple[int, ...], re.Pattern] = {}

    @classmethod
    def from_config(cls, cfg: HarmfulConfig) -> WordList:
        return cls(load_terms(cfg), cfg.min_matches)

    def _compile(self, indices: tuple[int, ...]) -> re.Pattern:
        return re.compile(r"(?<!\w)(?:" + "|".join(self.pieces[i] for i in indices) + r")(?!\w)")

    def _pattern_for(self, text: str) -> re.Pattern | None:
        """The alternation of the terms whose words all occur in ``text`` (None: no term can match)."""
        words = set(_WORD_RUN.findall(text))
        candidates = [
            index
            for first in words & self.by_first_word.keys()
            for index, term in self.by_first_word[first]
            if all(w in words for w in term)
        ]
        candidates += [index for index, parts in self.wordless if all(part in text for part in parts)]
        indices = tuple(sorted(candidates))
        if not indices:
            return None
        if indices not in self._narrowed:
            if len(self._narrowed) > 4096:  # bounded: one pattern per set of candidate terms seen
                self._narrowed.clear()
            self._narrowed[indices] = self._compile(indices)
        return self._narrowed[indices]

    def matches(self, text: str, limit: int | None = None) -> list[str]:
        """Listed terms found in ``text`` (lowercased), in order, at most ``limit``."""
        if self.pattern is None:
            return []
        text = text.lower()
        pattern = self._pattern_for(text)
        if pattern is None:
            return []
        found = []
        for match in pattern.finditer(text):
            found.append(match.group())
            if limit is not None and len(found) >= limit:
                break
        return found

    def check(self, text: str) -> str | None:
        """The rule name harmful.word_list when the text has ``min_matches`` listed terms or more, else None."""
        return "harmful.word_list" if len(self.matches(text, self.min_matches)) >= self.min_matches else None
