"""CurateConfig: every rule of `llmkit data curate`, each switchable, with the published thresholds as defaults.

A TOML file (``--config FILE.toml``) has one table per section below; a key it leaves out keeps its
default, an unknown table or key is a one-line error naming the closest one. The defaults and their
sources:

- ``gopher_quality`` and ``gopher_repetition``: Rae et al. 2021, "Scaling Language Models: Methods,
  Analysis & Insights from Training Gopher", appendix A.1.1 and table A1 (the same numbers as
  datatrove's GopherQualityFilter and GopherRepetitionFilter).
- ``c4``: Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
  Transformer", section 2.2, as implemented in TensorFlow Datasets' c4_utils (min 3 words per line,
  5 sentences per page, words of at most 1000 characters, the cookie/terms-of-use line filter).
- ``language``: keep English at a normalized probability of at least 0.65 (FineWeb's threshold for
  its language filter, Penedo et al. 2024).
- ``near_dedup``: Jaccard 0.8 of word-set shingles; why word sets (``ngram = 1``) rather than 5-grams,
  see docs/curation.md ("Near duplicates").
- ``harmful``: C4's rule, a page with any word of the "List of Dirty, Naughty, Obscene and Otherwise
  Bad Words" (CC BY 4.0, llmkit/curate/blocklists/SOURCE.md) is removed.

Standard library only.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields

from llmkit.errors import LlmkitError
from llmkit.files import read_toml

GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")


@dataclass
class NormalizeConfig:
    """Unicode NFC and whitespace: runs of spaces/tabs to one space, lines stripped, 3+ newlines to 2."""

    enabled: bool = True


@dataclass
class EncodingConfig:
    """Mojibake (UTF-8 read as Latin-1/cp1252: "Ã©", "â€™") and U+FFFD replacement characters.

    Not a published rule: web text mis-decoded once is common, and neither Gopher nor C4 catches it
    in English text (the broken characters are few); ftfy repairs such text where it can."""

    enabled: bool = True
    # broken sequences per character; 0: any one removes the document (in English text mis-decoded once, the
    # broken characters are the few curly quotes and dashes: a fraction threshold would let most through)
    max_bad_fraction: float = 0.0


@dataclass
class LanguageConfig:
    enabled: bool = True
    languages: list[str] = field(default_factory=lambda: ["en"])  # ISO 639-1 codes to keep
    min_score: float = 0.65  # FineWeb's language-filter threshold
    # the first characters are classified (0: all): on the raw corpus of bench/raw_corpus.py 1000 and 2000 gave the
    # same decision on all 2,280 documents (600 changed 4), and the classifier costs time per character
    sample_chars: int = 1000


@dataclass
class GopherQualityConfig:
    enabled: bool = True
    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1  # "#" and "..." / "…" each, per word
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    min_alpha_words_ratio: float = 0.8  # words with at least one alphabetic character
    # what "words" are for that ratio: "whitespace" (the text's space-separated words, punctuation attached) or
    # "tokens" (words and punctuation runs apart, as datatrove's spaCy tokens: every "." and "," is a word without
    # a letter, so punctuation-heavy prose falls below 0.8)
    alpha_words: str = "whitespace"
    min_stop_words: int = 2
    stop_words: list[str] = field(default_factory=lambda: list(GOPHER_STOP_WORDS))


@dataclass
class GopherRepetitionConfig:
    enabled: bool = True
    max_duplicate_line_fraction: float = 0.30
    max_duplicate_paragraph_fraction: float = 0.30
    max_duplicate_line_char_fraction: float = 0.20
    max_duplicate_paragraph_char_fraction: float = 0.20
    # the most frequent n-gram's characters over the document's, for n = 2, 3, 4
    max_top_2gram_char_fraction: float = 0.20
    max_top_3gram_char_fraction: float = 0.18
    max_top_4gram_char_fraction: float = 0.16
    # characters in repeated n-grams over the document's, for n = 5 .. 10
    max_duplicate_5gram_char_fraction: float = 0.15
    max_duplicate_6gram_char_fraction: float = 0.14
    max_duplicate_7gram_char_fraction: float = 0.13
    max_duplicate_8gram_char_fraction: float = 0.12
    max_duplicate_9gram_char_fraction: float = 0.11
    max_duplicate_10gram_char_fraction: float = 0.10


@dataclass
class C4Config:
    """C4's rules. Line rules drop the line, page rules drop the document."""

    enabled: bool = True
    terminal_punctuation: bool = True  # line: keep lines ending in . ! ? " ' (not "...")
    min_words_per_line: int = 3  # line; 0 turns it off
    max_word_length: int = 1000  # line: a word longer than this drops the line; 0 turns it off
    javascript: bool = True  # line: drop lines that mention "javascript"
    policy: bool = True  # line: drop "terms of use", "privacy policy", "uses cookies", ... lines
    lorem_ipsum: bool = True  # page
    curly_brace: bool = True  # page: any "{"
    min_sentences: int = 5  # page, counted in the kept lines; 0 turns it off


@dataclass
class HarmfulConfig:
    enabled: bool = True
    lists: list[str] = field(default_factory=lambda: ["en"])  # llmkit/curate/blocklists/<name>.txt
    extra_list: str = ""  # a file of one word or phrase per line, added to the lists
    min_matches: int = 1  # C4: a single listed word removes the page


@dataclass
class PiiConfig:
    enabled: bool = True
    email: bool = True
    phone: bool = True
    ip: bool = True
    email_replacement: str = "<EMAIL>"
    phone_replacement: str = "<PHONE>"
    ip_replacement: str = "<IP>"


@dataclass
class ExactDedupConfig:
    enabled: bool = True  # same text after lowercasing and collapsing whitespace and punctuation


@dataclass
class NearDedupConfig:
    enabled: bool = True
    threshold: float = 0.8  # Jaccard similarity of the shingle sets
    ngram: int = 1  # words per shingle
    num_perm: int = 128  # MinHash permutations
    seed: int = 1


SECTIONS = {
    "normalize": NormalizeConfig,
    "encoding": EncodingConfig,
    "language": LanguageConfig,
    "gopher_repetition": GopherRepetitionConfig,
    "gopher_quality": GopherQualityConfig,
    "c4": C4Config,
    "harmful": HarmfulConfig,
    "pii": PiiConfig,
    "exact_dedup": ExactDedupConfig,
    "near_dedup": NearDedupConfig,
}


@dataclass
class CurateConfig:
    """All sections; the document-level rules run in this order (the first that fails names the removal):
    encoding, language, gopher_repetition, gopher_quality, c4, harmful; then pii redacts what is kept,
    and exact_dedup and near_dedup run over all shards together."""

    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    encoding: EncodingConfig = field(default_factory=EncodingConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    gopher_repetition: GopherRepetitionConfig = field(default_factory=GopherRepetitionConfig)
    gopher_quality: GopherQualityConfig = field(default_factory=GopherQualityConfig)
    c4: C4Config = field(default_factory=C4Config)
    harmful: HarmfulConfig = field(default_factory=HarmfulConfig)
    pii: PiiConfig = field(default_factory=PiiConfig)
    exact_dedup: ExactDedupConfig = field(default_factory=ExactDedupConfig)
    near_dedup: NearDedupConfig = field(default_factory=NearDedupConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Thresholds in range, lists not empty: the error names the key and the fix."""
        near = self.near_dedup
        if not 0 < near.threshold <= 1:
            raise LlmkitError(f"near_dedup.threshold must be in (0, 1], got {near.threshold}", "e.g. 0.8")
        if near.ngram < 1 or near.num_perm < 2:
            raise LlmkitError("near_dedup.ngram must be >= 1 and num_perm >= 2", "e.g. ngram = 1, num_perm = 128")
        if self.language.enabled and not self.language.languages:
            raise LlmkitError("language.languages is empty", 'name the languages to keep, e.g. ["en"]')
        if self.gopher_quality.alpha_words not in ("whitespace", "tokens"):
            raise LlmkitError(
                f"gopher_quality.alpha_words must be whitespace or tokens, got {self.gopher_quality.alpha_words!r}",
                'e.g. alpha_words = "whitespace"',
            )
        if not 0 <= self.language.min_score <= 1:
            raise LlmkitError(f"language.min_score must be in [0, 1], got {self.language.min_score}", "e.g. 0.65")
        for name in SECTIONS:
            for f in fields(getattr(self, name)):
                value = getattr(getattr(self, name), f.name)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                    raise LlmkitError(f"{name}.{f.name} must not be negative, got {value}", "0 turns a limit off")

    @classmethod
    def from_dict(cls, data: dict, where: str = "config") -> CurateConfig:
        """Build from ``{section: {key: value}}``; unknown names and wrong types are one-line errors."""
        sections = {}
        for name, table in data.items():
            if name not in SECTIONS:
                raise LlmkitError(f"{where}: unknown table [{name}]", _closest(name, SECTIONS))
            if not isinstance(table, dict):
                raise LlmkitError(f"{where}: [{name}] must be a table", f"write [{name}] with key = value lines")
            sections[name] = _section(SECTIONS[name], table, f"{where}: [{name}]")
        return cls(**sections)

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> CurateConfig:
        hint = "see docs/curation.md for the tables and keys"
        return cls.from_dict(read_toml(path, hint), str(path))

    def to_dict(self) -> dict:
        return asdict(self)

    def fingerprint(self) -> str:
        """SHA-256 of the settings: a resumed run must use the same ones."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def enabled_rules(self) -> list[str]:
        return [name for name in SECTIONS if getattr(self, name).enabled]


def _section(kind: type, table: dict, where: str):
    known = {f.name: f for f in fields(kind)}
    values = {}
    for key, value in table.items():
        if key not in known:
            raise LlmkitError(f"{where}: unknown key {key!r}", _closest(key, known))
        default = getattr(kind(), key)
        if isinstance(default, bool) != isinstance(value, bool) or (
            not isinstance(value, type(default)) and not (isinstance(default, float) and isinstance(value, int))
        ):
            raise LlmkitError(
                f"{where}: {key} must be {type(default).__name__}, got {value!r}", f"default: {key} = {default!r}"
            )
        if isinstance(default, list) and not all(isinstance(v, str) for v in value):
            raise LlmkitError(f"{where}: {key} must be a list of strings", f"default: {key} = {default!r}")
        values[key] = float(value) if isinstance(default, float) else value
    return kind(**values)


def _closest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}?" if close else f"known: {', '.join(choices)}"


def to_toml(cfg: CurateConfig) -> str:
    """The config as a TOML file ``from_toml`` reads back (strings, numbers, booleans, lists of strings)."""

    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(json.dumps(x) for x in v) + "]"
        return repr(v)

    out = []
    for name in SECTIONS:
        out.append(f"[{name}]")
        out += [f"{key} = {value(v)}" for key, v in asdict(getattr(cfg, name)).items()]
        out.append("")
    return "\n".join(out)
