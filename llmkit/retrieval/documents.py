"""Building, extending and querying an index from document files: read -> chunk -> embed -> store.

A document file is UTF-8 text (``.gz`` read on the fly); its source name is the path as given, and
chunk offsets are character offsets into its (decompressed) text. With ``per_line`` each non-blank
line is a document of its own (chunks never span two lines), for corpora stored one record a line.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmkit.errors import LlmkitError
from llmkit.files import atomic_file, open_text
from llmkit.retrieval.chunk import Chunk, ChunkConfig, chunk_text, split_lines
from llmkit.retrieval.embed import Embedder, resolve_embedder
from llmkit.retrieval.store import Hit, Index

EMBED_BATCH = 256  # chunks per embedding call (a progress step)


@dataclass
class AddReport:
    documents: int
    chunks: int
    seconds: float

    def summary(self) -> str:
        rate = self.chunks / self.seconds if self.seconds > 0 else 0.0
        return f"{self.documents} documents, {self.chunks} chunks in {self.seconds:.1f} s ({rate:.0f} chunks/s)"


def read_chunks(path: str | os.PathLike, embedder: Embedder, chunking: ChunkConfig, per_line: bool) -> list[Chunk]:
    """The chunks of one document file."""
    if not Path(path).is_file():
        raise LlmkitError(f"{path}: no such document", "pass text files (.txt, .md, .gz ...)")
    try:
        with open_text(path) as file:
            text = file.read()
    except UnicodeDecodeError as err:
        raise LlmkitError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})", "pass text files") from None
    pieces = split_lines(text) if per_line else [(0, text)]
    return [c for offset, piece in pieces for c in chunk_text(piece, str(path), embedder.tokenizer, chunking, offset)]


def add_documents(
    index: Index, embedder: Embedder, paths: list[str], per_line: bool = False, progress=None
) -> AddReport:
    """Chunk, embed and store ``paths``, one transaction per file; a path already in the index is replaced
    in that same transaction, so re-adding an edited file leaves none of its old chunks, and an interruption
    leaves every file either as it was or fully added."""
    index.check_embedder(embedder.fingerprint, embedder.name)
    start, total = time.perf_counter(), 0
    for path in paths:
        chunks = read_chunks(path, embedder, index.chunking, per_line)
        vectors = []
        for first in range(0, len(chunks), EMBED_BATCH):
            batch = chunks[first : first + EMBED_BATCH]
            vectors.append(embedder.embed([c.text for c in batch]))
            if progress is not None:
                progress(len(batch))
        index.replace(str(path), chunks, np.concatenate(vectors) if vectors else np.zeros((0, embedder.dim)))
        total += len(chunks)
    return AddReport(len(paths), total, time.perf_counter() - start)


def build_index(
    out: str | os.PathLike,
    embedder: Embedder,
    paths: list[str],
    chunking: ChunkConfig | None = None,
    per_line: bool = False,
    progress=None,
) -> AddReport:
    """A new index at ``out`` over ``paths``, written beside and renamed into place (all or nothing)."""
    chunking = chunking or ChunkConfig()
    if not paths:
        raise LlmkitError("no documents given", "pass one or more text files")
    room = embedder.max_length - 2  # [CLS] and [SEP]
    if chunking.tokens > room:
        raise LlmkitError(
            f"chunks of {chunking.tokens} tokens do not fit the embedder's {embedder.max_length}-token window",
            f"pass --chunk-tokens {room} or fewer",
        )
    with atomic_file(out) as tmp:
        tmp.unlink()  # SQLite creates its own file; an empty one would not be a database
        index = Index.create(
            tmp, embedder.fingerprint, embedder.name, embedder.dim, chunking,
            str(embedder.directory) if embedder.directory else None,
        )  # fmt: skip
        try:
            report = add_documents(index, embedder, paths, per_line, progress)
        finally:
            index.close()
    return report


def embedder_for(index: Index, name: str | None = None, device: str = "cpu", verify: bool = True) -> Embedder:
    """The embedder ``name`` (a directory or ``minilm``), else the folder the index was built from; refused
    when its fingerprint is not the index's."""
    if name is None:
        name = index.meta.get("embedder_path")
        if not name or not Path(name).is_dir():
            raise LlmkitError(
                f"{index.path}: its embedder {index.meta['embedder']!r} is not at {name!r} on this machine",
                "pass --embedder DIR",
            )
    embedder = Embedder.load(resolve_embedder(name), device, verify=verify)
    index.check_embedder(embedder.fingerprint, embedder.name)
    return embedder


def search(index: Index, embedder: Embedder | None, query: str, k: int = 5, mode: str = "dense") -> list[Hit]:
    """``Index.search`` with the query embedded by ``embedder`` (checked against the index; not needed for bm25)."""
    vector = None
    if mode != "bm25":
        if embedder is None:
            raise LlmkitError(f"{mode} search needs the embedder", "pass --embedder")
        index.check_embedder(embedder.fingerprint, embedder.name)
        vector = embedder.embed([query])[0]
    return index.search(query, vector, k, mode)
