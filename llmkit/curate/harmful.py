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
    """One compiled alternation of all terms (longest first), matched between word boundaries."""

    def __init__(self, terms: list[str], min_matches: int = 1) -> None:
        self.min_matches = max(1, min_matches)
        pieces = [r"\s+".join(map(re.escape, t.split())) for t in sorted(terms, key=len, reverse=True)]
        self.pattern = re.compile(r"(?<!\w)(?:" + "|".join(pieces) + r")(?!\w)") if pieces else None

    @classmethod
    def from_config(cls, cfg: HarmfulConfig) -> WordList:
        return cls(load_terms(cfg), cfg.min_matches)

    def matches(self, text: str, limit: int | None = None) -> list[str]:
        """Listed terms found in ``text`` (lowercased), in order, at most ``limit``."""
        if self.pattern is None:
            return []
        found = []
        for match in self.pattern.finditer(text.lower()):
            found.append(match.group())
            if limit is not None and len(found) >= limit:
                break
        return found

    def check(self, text: str) -> str | None:
        """The rule name harmful.word_list when the text has ``min_matches`` listed terms or more, else None."""
        return "harmful.word_list" if len(self.matches(text, self.min_matches)) >= self.min_matches else None
