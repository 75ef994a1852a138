"""`llmkit data stats`: how a tokenizer splits a corpus, as tokens per word and the words it splits most.

A word is a run of word characters (with inner apostrophes and hyphens), as in llmkit.curate.text.
Tokens per word = the corpus's tokens (documents encoded whole, without special tokens) over its
words. A word's pieces are its tokens when it stands mid-sentence (after a space, as byte-level BPE
sees most words); the most-split words are the frequent ones (``min_count``) with the most pieces,
which shows why a general tokenizer spends more tokens on domain text ("hepatosplenomegaly" in many
pieces, "the" in one).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from llmkit.curate.text import real_words
from llmkit.data.sources import read_source, resolve_source, split_pieces
from llmkit.data.tokenizer import Tokenizer

_BATCH = 1024


@dataclass
class CorpusStats:
    documents: int = 0
    characters: int = 0
    words: int = 0
    tokens: int = 0
    counts: Counter = field(default_factory=Counter)
    pieces: dict[str, int] = field(default_factory=dict)

    @property
    def tokens_per_word(self) -> float:
        return self.tokens / self.words if self.words else 0.0

    def most_split(self, top: int = 20, min_count: int = 5) -> list[tuple[str, int, int]]:
        """(word, pieces, count) of words seen at least ``min_count`` times, most pieces first, then most frequent."""
        rows = [(w, self.pieces[w], c) for w, c in self.counts.items() if c >= min_count]
        return sorted(rows, key=lambda r: (-r[1], -r[2], r[0]))[:top]

    def to_dict(self, top: int = 20, min_count: int = 5) -> dict:
        return {
            "documents": self.documents,
            "characters": self.characters,
            "words": self.words,
            "tokens": self.tokens,
            "tokens_per_word": round(self.tokens_per_word, 4),
            "distinct_words": len(self.counts),
            "most_split": [{"word": w, "pieces": p, "count": c} for w, p, c in self.most_split(top, min_count)],
        }


def word_pieces(tokenizer: Tokenizer, words: list[str]) -> dict[str, int]:
    """Tokens of each word as it appears mid-sentence: encoded after a space; where the space is a token
    of its own (not merged into the word's first piece, as byte-level BPE does), it is not counted."""
    space = tokenizer.encode(" ", add_special_tokens=False)
    space_id = space[0] if len(space) == 1 else None
    out = {}
    for i in range(0, len(words), _BATCH):
        batch = words[i : i + _BATCH]
        encoded = tokenizer.encode_batch([" " + w for w in batch], add_special_tokens=False)
        for word, ids in zip(batch, encoded, strict=True):
            out[word] = len(ids) - (1 if len(ids) > 1 and ids[0] == space_id else 0)
    return out


def corpus_stats(
    spec: str, tokenizer: Tokenizer, text_field: str = "text", line_documents: bool = False, max_documents: int = 0
) -> CorpusStats:
    """Count documents, characters, words and tokens of a source (a file, folder, .jsonl or builtin:NAME)."""
    stats = CorpusStats()
    source = resolve_source(spec)
    for _key, blocks in read_source(source, text_field, line_documents):
        stats.documents += 1
        for piece in split_pieces(blocks):
            stats.characters += len(piece)
            found = real_words(piece)
            stats.words += len(found)
            stats.counts.update(found)
            stats.tokens += len(tokenizer.encode(piece, add_special_tokens=False))
        if max_documents and stats.documents >= max_documents:
            break
    stats.pieces = word_pieces(tokenizer, sorted(stats.counts))
    return stats
