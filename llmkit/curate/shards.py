"""The curation's unit of work: a shard is one input file (a folder's files in groups), read as documents.

Sources are those of `llmkit data tokenize` (llmkit.data.sources): text files (one document each, or
one per line with ``line_documents``), folders of .txt/.md files, .jsonl files (the ``text_field``),
``builtin:NAME``. A worker takes a shard at a time, so parallelism comes from the number of files:
split a big corpus into several files to use several cores. Standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from llmkit.data.sources import Source, check_sources, read_source
from llmkit.errors import LlmkitError

FOLDER_SHARD_FILES = 256  # a folder's files are taken this many at a time


@dataclass(frozen=True)
class Shard:
    index: int
    source_index: int
    source: str  # the SOURCE as given
    kind: str  # "text" | "jsonl" | "builtin"
    files: tuple[str, ...]
    size: int  # bytes to read (for progress and MB/s)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ReadOptions:
    text_field: str = "text"
    line_documents: bool = False


def plan_shards(specs: list[str]) -> list[Shard]:
    """The shards of ``specs``, in source order then file order (the corpus order dedup keeps first).
    A folder's .jsonl files are one shard each (beside its .txt/.md files, in groups)."""
    jsonl = {spec: _jsonl_files(spec) for spec in specs}
    plain = [spec for spec in specs if not jsonl[spec] or _has_text_files(spec)]
    sources = dict(zip(plain, check_sources([(spec, None) for spec in plain]), strict=True)) if plain else {}
    if not specs:
        check_sources([])
    shards: list[Shard] = []
    for s, spec in enumerate(specs):
        parts = [("jsonl", [f]) for f in jsonl[spec]]
        if spec in sources:
            source = sources[spec]
            parts += [(source.kind, files) for files in ([[]] if source.kind == "builtin" else _groups(source))]
        for kind, files in parts:
            part = Source(spec, None, kind, list(files))
            size = part.size_bytes() if kind != "builtin" else sources[spec].size_bytes()
            shards.append(Shard(len(shards), s, spec, kind, tuple(map(str, files)), size or 0))
    return shards


def _jsonl_files(spec: str) -> list[Path]:
    path = Path(spec)
    if not path.is_dir():
        return []
    return sorted((p for p in path.rglob("*") if p.name.endswith((".jsonl", ".jsonl.gz"))), key=lambda p: p.parts)


def _has_text_files(spec: str) -> bool:
    return any(p.suffix in (".txt", ".md") for p in Path(spec).rglob("*"))


def _groups(source: Source) -> list[list[Path]]:
    if len(source.files) == 1 or not Path(source.spec).is_dir():
        return [[f] for f in source.files]
    return [source.files[i : i + FOLDER_SHARD_FILES] for i in range(0, len(source.files), FOLDER_SHARD_FILES)]


def read_shard(shard: Shard, options: ReadOptions) -> Iterator[tuple[str, str]]:
    """(document id, text) of every document in the shard, in order."""
    source = Source(shard.source, None, shard.kind, [Path(f) for f in shard.files])
    for key, blocks in read_source(source, options.text_field, options.line_documents):
        yield key, "".join(blocks)


def source_names(shards: list[Shard]) -> list[str]:
    """One file-name-safe name per source, numbered in order: "00-medquad", "01-fomc_minutes"."""
    names: dict[int, str] = {}
    for shard in shards:
        if shard.source_index not in names:
            stem = shard.source.rstrip("/").split("/")[-1]
            stem = re.sub(r"(\.(txt|md|jsonl|gz))+$", "", stem) or "source"
            names[shard.source_index] = f"{shard.source_index:02d}-" + re.sub(r"[^\w.-]+", "_", stem)
    if not names:
        raise LlmkitError("no sources given", "pass text files, folders, .jsonl files or builtin:NAME")
    return [names[i] for i in sorted(names)]
