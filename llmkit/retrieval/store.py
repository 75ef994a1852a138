"""The retrieval index: one SQLite file holding chunks, their vectors (sqlite-vec), and the embedder's fingerprint.

Why sqlite-vec: the whole index is one embedded file (copy it, mail it, open it read-only), adds and
deletes are SQLite transactions (a crash leaves the previous state, never half a document), and there
is no server to run. Its search is exact (brute force over the vectors), which on CPU answers a query
over 100k chunks in milliseconds; an approximate index would only pay off far beyond that.

Tables: ``meta`` (key, value: format, embedder fingerprint and name, dimension, chunking), ``chunks``
(id, source, start, end, text), ``vectors`` (a vec0 table whose rowid is the chunk id, cosine distance).
Dense search asks vec0 for the k nearest; BM25 (bm25s) is built over the chunk texts when first asked
for and kept while the index is open; hybrid search fuses both rankings by reciprocal rank.
"""

from __future__ import annotations

import ctypes
import json
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmkit.errors import LlmkitError
from llmkit.retrieval.chunk import Chunk, ChunkConfig

FORMAT = "llmkit-index-1"
CACHE_KIB = 256 * 1024  # SQLite's page cache per connection, an upper bound (the default 2 MB re-reads every
# vector page per query: 100k MiniLM chunks are 150 MB, and a cache that holds them halves a query's time)
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009): 1 / (60 + rank)
MODES = ("dense", "bm25", "hybrid")
_EXTENSION_REGISTERED = False


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk: ``score`` is cosine similarity (dense), BM25 score, or fused RRF score."""

    id: int
    source: str
    start: int
    end: int
    text: str
    score: float

    def citation(self) -> str:
        return f"{self.source}:{self.start}-{self.end}"


def connect(path: str | os.PathLike) -> sqlite3.Connection:
    """A SQLite connection with sqlite-vec loaded.

    Python builds without ``--enable-loadable-sqlite-extensions`` (pyenv's default) have no
    ``enable_load_extension``; there the extension is registered once through SQLite's own C API
    (``sqlite3_auto_extension``), which every connection opened afterwards runs."""
    import sqlite_vec

    db = sqlite3.connect(str(path))
    if hasattr(db, "enable_load_extension"):
        db.enable_load_extension(True)
        sqlite_vec.load(db)
        db.enable_load_extension(False)
    else:
        db.close()
        _register_auto_extension(sqlite_vec.loadable_path())
        db = sqlite3.connect(str(path))
        try:
            db.execute("select vec_version()")
        except sqlite3.OperationalError:
            raise LlmkitError(
                "sqlite-vec could not be loaded into this Python's SQLite",
                "use a Python built with loadable SQLite extensions (python.org, conda, uv)",
            ) from None
    db.execute(f"pragma cache_size = -{CACHE_KIB}")
    return db


def _register_auto_extension(loadable: str) -> None:
    global _EXTENSION_REGISTERED
    if _EXTENSION_REGISTERED:
        return
    import _sqlite3

    ctypes.CDLL(_sqlite3.__file__)  # loads the libsqlite3 the module links, so the next name finds the same one
    library = ctypes.CDLL("libsqlite3.so.0" if os.name == "posix" else "sqlite3")
    extension = ctypes.CDLL(loadable if Path(loadable).exists() else loadable + ".so")
    if library.sqlite3_auto_extension(ctypes.cast(extension.sqlite3_vec_init, ctypes.c_void_p)) != 0:
        raise LlmkitError("SQLite refused to register sqlite-vec", "reinstall the sqlite-vec package")
    _EXTENSION_REGISTERED = True


class Index:
    """An open index file. ``Index.create`` makes a new one, ``Index.open`` an existing one."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.db, self.path = db, path
        self.meta = {k: json.loads(v) for k, v in db.execute("select key, value from meta")}
        self._bm25 = None  # (retriever, chunk ids), built on first BM25 query

    # ---- opening ------------------------------------------------------------------------------
    @classmethod
    def create(
        cls, path: str | os.PathLike, fingerprint: str, embedder: str, dim: int, chunking: ChunkConfig,
        embedder_path: str | None = None,
    ) -> Index:  # fmt: skip
        """A new, empty index at ``path`` (which must not exist: the caller writes beside and renames)."""
        path = Path(path)
        db = connect(path)
        with db:
            db.execute("create table meta (key text primary key, value text not null)")
            db.execute(
                "create table chunks (id integer primary key, source text not null, start integer not null, "
                "end integer not null, text text not null)"
            )
            db.execute("create index chunks_source on chunks(source)")
            db.execute(f"create virtual table vectors using vec0(embedding float[{int(dim)}] distance_metric=cosine)")
            meta = {
                "format": FORMAT, "fingerprint": fingerprint, "embedder": embedder, "dim": dim,
                "chunk_tokens": chunking.tokens, "overlap": chunking.overlap, "embedder_path": embedder_path,
            }  # fmt: skip
            db.executemany("insert into meta values (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
        return cls(db, path)

    @classmethod
    def open(cls, path: str | os.PathLike) -> Index:
        """An existing index; a missing, corrupt or foreign file is a one-line error."""
        path = Path(path)
        if not path.is_file():
            raise LlmkitError(f"{path}: no such index", "build one with `llmkit index build DOCS... --out INDEX`")
        hint = "rebuild it with `llmkit index build`"
        try:
            db = connect(path)
            tables = {row[0] for row in db.execute("select name from sqlite_master where type = 'table'")}
            if not {"meta", "chunks", "vectors"} <= tables:
                raise LlmkitError(f"{path}: not an llmkit index (tables {sorted(tables) or 'none'})", hint)
            index = cls(db, path)
            db.execute("select count(*) from vectors").fetchone()
        except sqlite3.DatabaseError as err:
            raise LlmkitError(f"{path}: corrupt index file ({err})", hint) from None
        if index.meta.get("format") != FORMAT:
            raise LlmkitError(f"{path}: index format {index.meta.get('format')!r}, expected {FORMAT!r}", hint)
        return index

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- contents -----------------------------------------------------------------------------
    @property
    def chunking(self) -> ChunkConfig:
        return ChunkConfig(self.meta["chunk_tokens"], self.meta["overlap"])

    def check_embedder(self, fingerprint: str, name: str) -> None:
        """Queries and new chunks must be embedded by the model that embedded the index."""
        if fingerprint != self.meta["fingerprint"]:
            raise LlmkitError(
                f"{self.path} was built with embedder '{self.meta['embedder']}' "
                f"(fingerprint {self.meta['fingerprint'][:12]}), not '{name}' ({fingerprint[:12]})",
                "pass the --embedder the index was built with, or rebuild the index",
            )

    def __len__(self) -> int:
        return self.db.execute("select count(*) from chunks").fetchone()[0]

    def sources(self) -> dict[str, int]:
        """Chunks per source."""
        return dict(self.db.execute("select source, count(*) from chunks group by source order by source"))

    def add(self, chunks: list[Chunk], vectors: np.ndarray) -> list[int]:
        """Insert chunks with their (N, D) vectors in one transaction; returns their ids."""
        with self.db:
            ids = self._insert(chunks, vectors)
        self._bm25 = None
        return ids

    def replace(self, source: str, chunks: list[Chunk], vectors: np.ndarray) -> list[int]:
        """``source``'s old chunks out and these in, in one transaction: a reader (or a crash) sees either."""
        with self.db:
            self._remove(source)
            ids = self._insert(chunks, vectors)
        self._bm25 = None
        return ids

    def delete(self, sources: Iterable[str]) -> int:
        """Remove every chunk of ``sources`` in one transaction; returns how many went."""
        with self.db:
            removed = sum(self._remove(source) for source in sources)
        self._bm25 = None
        return removed

    def _insert(self, chunks: list[Chunk], vectors: np.ndarray) -> list[int]:
        if len(chunks) != len(vectors):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        if len(chunks) and vectors.shape[1] != self.meta["dim"]:
            raise LlmkitError(f"vectors of dimension {vectors.shape[1]}, the index holds {self.meta['dim']}", "")
        ids = []
        for chunk, vector in zip(chunks, vectors.astype(np.float32), strict=True):
            cursor = self.db.execute(
                "insert into chunks (source, start, end, text) values (?, ?, ?, ?)",
                (chunk.source, chunk.start, chunk.end, chunk.text),
            )
            self.db.execute(
                "insert into vectors (rowid, embedding) values (?, ?)", (cursor.lastrowid, vector.tobytes())
            )
            ids.append(cursor.lastrowid)
        return ids

    def _remove(self, source: str) -> int:
        ids = [r[0] for r in self.db.execute("select id from chunks where source = ?", (source,))]
        self.db.executemany("delete from vectors where rowid = ?", [(i,) for i in ids])
        self.db.execute("delete from chunks where source = ?", (source,))
        return len(ids)

    def chunks(self, ids: list[int]) -> dict[int, tuple[str, int, int, str]]:
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(f"select id, source, start, end, text from chunks where id in ({marks})", ids)
        return {r[0]: r[1:] for r in rows}

    # ---- search -------------------------------------------------------------------------------
    def dense(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """(chunk id, cosine similarity) of the ``k`` nearest vectors, best first."""
        if k < 1 or not len(self):
            return []
        rows = self.db.execute(
            "select rowid, distance from vectors where embedding match ? and k = ? order by distance",
            (np.asarray(query, dtype=np.float32).tobytes(), min(k, 4096)),  # vec0 caps k at 4096
        )
        return [(rowid, 1.0 - distance) for rowid, distance in rows]

    def bm25(self, query: str, k: int) -> list[tuple[int, float]]:
        """(chunk id, BM25 score) of the ``k`` best lexical matches with a positive score, best first."""
        import bm25s

        if k < 1 or not len(self):
            return []
        if self._bm25 is None:
            ids, texts = zip(*self.db.execute("select id, text from chunks order by id"), strict=True)
            retriever = bm25s.BM25()
            retriever.index(bm25s.tokenize(list(texts), stopwords="en", show_progress=False), show_progress=False)
            self._bm25 = (retriever, list(ids))
        retriever, ids = self._bm25
        tokens = bm25s.tokenize([query], stopwords="en", show_progress=False)
        if not tokens.ids[0]:  # only stopwords or unknown words: nothing can match
            return []
        found, scores = retriever.retrieve(tokens, k=min(k, len(ids)), show_progress=False)
        return [(ids[int(i)], float(s)) for i, s in zip(found[0], scores[0], strict=True) if s > 0]

    def search(self, query: str, query_vector: np.ndarray | None, k: int = 5, mode: str = "dense") -> list[Hit]:
        """The ``k`` best chunks for ``query``: ``dense`` (needs ``query_vector``), ``bm25``, or ``hybrid``
        (both lists, each ``max(k, 50)`` long, fused by reciprocal rank: sum of 1 / (60 + rank))."""
        if mode not in MODES:
            raise LlmkitError(f"unknown search mode {mode!r}", f"choose one of {', '.join(MODES)}")
        if k < 1:
            raise LlmkitError(f"-k {k} must be >= 1", "ask for at least one result")
        if mode == "dense":
            ranked = self.dense(query_vector, k)
        elif mode == "bm25":
            ranked = self.bm25(query, k)
        else:
            depth = max(k, 50)
            ranked = fuse([self.dense(query_vector, depth), self.bm25(query, depth)])[:k]
        rows = self.chunks([i for i, _ in ranked])
        return [Hit(i, *rows[i], score=score) for i, score in ranked]


def fuse(rankings: list[list[tuple[int, float]]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: each id scores sum(1 / (k + rank)) over the rankings it is in (rank from 1)."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, (item, _) in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
