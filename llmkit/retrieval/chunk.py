"""Documents -> overlapping chunks of at most N tokens, each with its character offsets in the source.

Chunks are cut by the embedder's own tokenizer, so every chunk fits the encoder's window exactly; the
text of a chunk is the source slice from its first token's start to its last token's end, so a
citation (file, start, end) points at the very characters that were embedded.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmkit.data.tokenizer import Tokenizer
from llmkit.errors import LlmkitError


@dataclass(frozen=True)
class Chunk:
    """``text == document[start:end]`` of the document named ``source``."""

    source: str
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class ChunkConfig:
    """``tokens`` per chunk (special tokens excluded), ``overlap`` tokens shared by neighbours."""

    tokens: int = 200
    overlap: int = 40

    def __post_init__(self) -> None:
        if self.tokens < 1:
            raise LlmkitError(f"chunk size {self.tokens} must be >= 1 token", "pass --chunk-tokens 200, say")
        if not 0 <= self.overlap < self.tokens:
            raise LlmkitError(
                f"overlap {self.overlap} must be >= 0 and below the chunk size {self.tokens}",
                "pass a smaller --overlap",
            )


def chunk_text(text: str, source: str, tokenizer: Tokenizer, config: ChunkConfig, offset: int = 0) -> list[Chunk]:
    """Windows of ``config.tokens`` tokens stepping by ``tokens - overlap``; offsets are shifted by ``offset``
    (where ``text`` starts in its file). Whitespace-only text gives no chunks."""
    spans = [s for s in tokenizer.backend.encode(text, add_special_tokens=False).offsets if s[1] > s[0]]
    chunks = []
    step = config.tokens - config.overlap
    for first in range(0, len(spans), step):
        window = spans[first : first + config.tokens]
        start, end = window[0][0], window[-1][1]
        chunks.append(Chunk(source, offset + start, offset + end, text[start:end]))
        if first + config.tokens >= len(spans):  # the last window reached the end: no tail-only chunk
            break
    return chunks


def split_lines(text: str) -> list[tuple[int, str]]:
    """(offset, line) for each non-blank line: one document per line (MedQuAD's files hold one per line)."""
    out, position = [], 0
    for line in text.splitlines(keepends=True):
        if line.strip():
            out.append((position, line.rstrip("\r\n")))
        position += len(line)
    return out
