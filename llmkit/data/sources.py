"""Reading corpora for ``llmkit data tokenize``: sources, documents as streams, and pieces of documents.

A source is a text file, a folder of .txt/.md files, a .jsonl file, or ``builtin:NAME`` (a corpus
that ships with Python, ``llmkit.data.builtin``), optionally with a mixing weight (``PATH:0.5``).
Documents are yielded one at a time as streams of text blocks, so no corpus is ever held whole,
and cut into pieces of bounded size (a 100 MB line without a space took 71 s and 3.8 GB to encode
whole). A corrupt or truncated ``.gz`` file, or a binary file given as text, is a one-line error.

Standard library only (layer L0).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from llmkit.data.builtin import BUILTIN_CORPORA, python_docs_texts, stdlib_source_files
from llmkit.errors import LlmkitError
from llmkit.files import open_text, read_jsonl

PIECE_CHARS = 16_384  # documents are read, encoded and assigned to a split in pieces of about this size
MAX_PIECE_FACTOR = 4  # a piece with no place to cut is cut hard at this many times the piece size
_CUT = re.compile(r"(?<=\S) (?=\S)")  # a piece starts at a single space between two non-spaces
_SNIFF_CHARS = 8192  # the first characters of a text file looked at for NUL bytes (binary data)
_READ_CHARS = 1 << 20  # characters per read from a text file
_BUILTIN = "builtin:"


@dataclass
class Source:
    """One input: a text file, a folder of .txt/.md files, a .jsonl file, or ``builtin:NAME``."""

    spec: str  # as given, without the weight
    weight: float | None
    kind: str  # "text" | "jsonl" | "builtin"
    files: list[Path] = field(default_factory=list)

    def size_bytes(self) -> int | None:
        """Bytes of text to read (for the progress bar); None when unknown."""
        if self.kind == "builtin":
            name = self.spec[len(_BUILTIN) :]
            if name == "python-stdlib":
                return sum(path.stat().st_size for path in stdlib_source_files())
            if name == "python-docs":
                return sum(len(text.encode()) for text in python_docs_texts())
            return None
        return sum(_file_size(path) for path in self.files)


def parse_source(spec: str) -> tuple[str, float | None]:
    """Split ``"PATH:WEIGHT"`` into ``("PATH", WEIGHT)``; without a numeric suffix the weight is None."""
    head, sep, tail = spec.rpartition(":")
    if not sep or not head or Path(spec).exists():
        return spec, None
    try:
        weight = float(tail)
    except ValueError:
        return spec, None
    if not weight > 0 or weight == float("inf"):
        raise LlmkitError(f"the weight of {head} must be a positive number, got {tail}", "e.g. domain.txt:0.51")
    return head, weight


def resolve_source(spec: str, weight: float | None = None) -> Source:
    """Check that ``spec`` exists and find its files (a folder's .txt/.md files, recursively, sorted)."""
    if spec.startswith(_BUILTIN):
        if spec[len(_BUILTIN) :] not in BUILTIN_CORPORA:
            names = ", ".join(_BUILTIN + name for name in BUILTIN_CORPORA)
            raise LlmkitError(f"unknown built-in corpus {spec}", f"choose one of {names}")
        return Source(spec, weight, "builtin")
    path = Path(spec)
    if path.is_dir():
        found = (p for p in path.rglob("*") if p.suffix in (".txt", ".md") and p.is_file())
        files = sorted(found, key=lambda p: p.parts)  # the order of sorting Paths, without their slow __lt__
        if not files:
            raise LlmkitError(f"no .txt or .md files under {path}", "point at text files or a folder of them")
        return Source(spec, weight, "text", files)
    if path.is_file():
        kind = "jsonl" if path.name.endswith((".jsonl", ".jsonl.gz")) else "text"
        return Source(spec, weight, kind, [path])
    raise LlmkitError(
        f"no such file or directory: {spec}",
        f"check the path; built-in corpora are {', '.join(_BUILTIN + name for name in BUILTIN_CORPORA)}",
    )


def read_source(
    source: Source, text_field: str = "text", line_documents: bool = False
) -> Iterator[tuple[str, Iterator[str]]]:
    """Yield ``(key, blocks)`` for each document of ``source``: a name for it and its text as a lazy stream.

    A document is a file (a folder gives one per file), a line of a ``.jsonl`` file (its
    ``text_field``), or a text of a built-in corpus; with ``line_documents`` every non-empty line of
    a text file is one. Files ending in ``.gz`` are decompressed; bytes that are not UTF-8 become
    U+FFFD; line endings are kept as they are. The key names the document wherever the corpus lies
    (a file's path inside its folder, ``:N`` for line N), so a split that hashes it is the same after
    a move.
    """
    if source.kind == "builtin":
        for i, text in enumerate(BUILTIN_CORPORA[source.spec[len(_BUILTIN) :]]()):
            yield f"{source.spec}:{i}", iter((text,))
        return
    root = Path(source.spec)
    for path in source.files:
        name = path.name if path == root else path.relative_to(root).as_posix()
        if source.kind == "jsonl":
            yield from ((f"{name}:{n}", iter((text,))) for n, text in _jsonl_texts(path, text_field))
            continue
        _check_text(path)
        if line_documents:
            with _reading(path) as file:
                for n, line in enumerate(file, 1):
                    if line.strip("\r\n"):
                        yield f"{name}:{n}", iter((line.rstrip("\r\n"),))
        else:
            yield name, _file_blocks(path)


def split_pieces(blocks: Iterable[str], size: int = PIECE_CHARS) -> Iterator[str]:
    """Cut a document into pieces of at least ``size`` characters (the last may be shorter), each cut
    just before a single space between two non-space characters. Where no such space comes within
    ``MAX_PIECE_FACTOR * size`` characters (a long run without spaces: minified code, base64, a
    binary dump), the piece is cut there, so memory stays bounded; only such runs encode differently.

    Encoding the pieces one by one gives the ids of the whole document for byte-level BPE (GPT-2's
    regex never joins a space to the text before it), WordPiece (it splits at spaces) and
    SentencePiece-style Metaspace (a piece starting with a space gets no extra prefix).
    """
    most = MAX_PIECE_FACTOR * size
    buffer, start = "", 0
    for block in blocks:
        buffer = buffer[start:] + block
        start = 0
        while len(buffer) - start > size:
            # search from start + size: the cut looks at the character before it, which may lie before that;
            # and only up to the longest piece, so a run without spaces is not searched again and again
            cut = _CUT.search(buffer, start + size, start + most + 1)
            if cut is not None:
                yield buffer[start : cut.start()]
                start = cut.start()
            elif len(buffer) - start > most:
                yield buffer[start : start + most]
                start += most
            else:
                break  # the next block may bring a space
    if start < len(buffer):
        yield buffer[start:]


def _reading(path: Path):
    """The file's text (``.gz`` decompressed, stray bytes replaced, line ends kept); a damaged gzip stream is
    a one-line error naming the file."""
    return open_text(path, errors="replace", newline="", hint="re-download or re-compress it, or leave it out")


def _check_text(path: Path) -> None:
    """Refuse a binary file (NUL characters near its start): its bytes would be tokenized as noise."""
    with _reading(path) as file:
        head = file.read(_SNIFF_CHARS)
    if "\0" in head:
        raise LlmkitError(
            f"{path}: looks like a binary file (NUL bytes in its first {_SNIFF_CHARS} characters), not text",
            "leave it out, or convert it to text first",
        )


def _file_blocks(path: Path) -> Iterator[str]:
    with _reading(path) as file:
        while block := file.read(_READ_CHARS):
            yield block


def _file_size(path: Path) -> int:
    if path.suffix != ".gz":
        return path.stat().st_size
    with open(path, "rb") as file:  # gzip keeps the uncompressed size (mod 2**32) in its last 4 bytes
        if file.seek(0, os.SEEK_END) < 4:
            return 0  # not a gzip file at all: reading it says so
        file.seek(-4, os.SEEK_END)
        return int.from_bytes(file.read(4), "little")


def _jsonl_texts(path: Path, text_field: str) -> Iterator[tuple[int, str]]:
    for number, record in read_jsonl(path, errors="replace"):  # stray bytes replaced, as in text files
        if text_field not in record:
            raise LlmkitError(
                f"{path}:{number} has no {text_field!r} field (fields: {', '.join(record)})",
                "pass --text-field with the field that holds the text",
            )
        text = record[text_field]
        if not isinstance(text, str):
            raise LlmkitError(f"{path}:{number}: {text_field!r} is not a string", "point --text-field at text")
        # JSON escapes can spell lone surrogates, which no tokenizer accepts.
        yield number, re.sub("[\ud800-\udfff]", "\ufffd", text)


def check_sources(sources: list[tuple[str, float | None]]) -> list[Source]:
    """Resolve every ``(spec, weight)`` before anything is read: all exist, none twice, all or none weighted."""
    if not sources:
        raise LlmkitError("no sources given", "pass text files, folders, .jsonl files or builtin:python-docs")
    specs = [spec for spec, _ in sources]
    duplicates = sorted({spec for spec in specs if specs.count(spec) > 1})
    if duplicates:
        raise LlmkitError(f"{', '.join(duplicates)} listed twice", "list each source once; weights set its share")
    given = [weight is not None for _, weight in sources]
    if any(given) and not all(given):
        raise LlmkitError("some sources have a weight and some do not", "give every source a weight, or none")
    return [resolve_source(spec, weight) for spec, weight in sources]
