"""`llmkit index build|add|delete|search|info`: a retrieval index over your documents (llmkit.retrieval)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llmkit.cli._retrieval import EMBEDDER_HELP

_EPILOG = """\
examples:
  llmkit index build notes/*.md --embedder minilm --out notes.index
  llmkit index add notes.index notes/new.md
  llmkit index delete notes.index notes/old.md
  llmkit index search notes.index "how do I rotate the keys?" -k 5 --hybrid
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "index",
        help="build and search a retrieval index (sqlite-vec) over text documents",
        description="Chunk documents by the embedder's tokens with overlap, embed the chunks, and keep vectors, "
        "text and source offsets in one SQLite file (sqlite-vec). Search by cosine similarity (dense), BM25, or "
        "both fused by reciprocal rank (--hybrid). The index records its embedder's fingerprint; queries and "
        "additions with another embedder are refused.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=lambda args: parser.print_help())
    commands = parser.add_subparsers(dest="index_command", metavar="SUBCOMMAND")

    build = commands.add_parser("build", help="a new index over DOCS", description="Build a new index over DOCS.")
    build.add_argument("docs", nargs="+", metavar="DOCS", help="UTF-8 text files (.gz read on the fly)")
    build.add_argument("--out", required=True, type=Path, metavar="INDEX", help="the index file to write")
    build.add_argument("--embedder", default="minilm", metavar="DIR", help=EMBEDDER_HELP + " (default: minilm)")
    build.add_argument("--chunk-tokens", type=int, default=200, metavar="N", help="tokens per chunk (default 200)")
    build.add_argument("--overlap", type=int, default=40, metavar="N", help="tokens neighbours share (default 40)")
    _per_line_flag(build)
    build.set_defaults(handler=run_build)

    add = commands.add_parser("add", help="add (or replace) documents", description="Add DOCS to INDEX; a "
                              "document already there is replaced, all in transactions.")  # fmt: skip
    add.add_argument("index", metavar="INDEX", type=Path)
    add.add_argument("docs", nargs="+", metavar="DOCS")
    _per_line_flag(add)
    _embedder_flag(add)
    add.set_defaults(handler=run_add)

    delete = commands.add_parser("delete", help="remove documents", description="Remove every chunk of SOURCES.")
    delete.add_argument("index", metavar="INDEX", type=Path)
    delete.add_argument("sources", nargs="+", metavar="SOURCES", help="source names as `index info` lists them")
    delete.set_defaults(handler=run_delete)

    search = commands.add_parser("search", help="the chunks nearest a query", description="Search INDEX.")
    search.add_argument("index", metavar="INDEX", type=Path)
    search.add_argument("query", metavar="QUERY")
    search.add_argument("-k", type=int, default=5, help="results (default 5)")
    how = search.add_mutually_exclusive_group()
    how.add_argument("--hybrid", action="store_true", help="dense and BM25 fused by reciprocal rank")
    how.add_argument("--bm25", action="store_true", help="BM25 only (no embedder needed)")
    search.add_argument("--json", action="store_true", help="one JSON object per result")
    _embedder_flag(search)
    search.set_defaults(handler=run_search)

    info = commands.add_parser("info", help="what an index holds", description="Embedder, chunking and sources.")
    info.add_argument("index", metavar="INDEX", type=Path)
    info.set_defaults(handler=run_info)


def _per_line_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--per-line", action="store_true", help="each non-blank line is a document (chunks never span two)")


def _embedder_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embedder", default=None, metavar="DIR", help="default: the one the index was built with")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, ...")


def _bar(total_hint: str):
    from tqdm import tqdm

    return tqdm(unit=" chunks", desc=total_hint, file=sys.stderr, leave=False, disable=not sys.stderr.isatty())


def run_build(args: argparse.Namespace) -> None:
    from llmkit.devices import resolve_device
    from llmkit.retrieval.chunk import ChunkConfig
    from llmkit.retrieval.documents import build_index
    from llmkit.retrieval.embed import Embedder, resolve_embedder

    chunking = ChunkConfig(args.chunk_tokens, args.overlap)
    embedder = Embedder.load(resolve_embedder(args.embedder), resolve_device("auto"), verify=not args.no_verify)
    with _bar("embedding") as bar:
        report = build_index(args.out, embedder, args.docs, chunking, args.per_line, bar.update)
    print(f"{args.out}: {report.summary()}, embedder {embedder.name}")


def run_add(args: argparse.Namespace) -> None:
    from llmkit.devices import resolve_device
    from llmkit.retrieval.documents import add_documents, embedder_for
    from llmkit.retrieval.store import Index

    with Index.open(args.index) as index:
        embedder = embedder_for(index, args.embedder, resolve_device(args.device), verify=not args.no_verify)
        with _bar("embedding") as bar:
            report = add_documents(index, embedder, args.docs, args.per_line, bar.update)
        print(f"{args.index}: added {report.summary()}; {len(index)} chunks in all")


def run_delete(args: argparse.Namespace) -> None:
    from llmkit.errors import LlmkitError
    from llmkit.retrieval.store import Index

    with Index.open(args.index) as index:
        missing = [s for s in args.sources if s not in index.sources()]
        if missing:
            raise LlmkitError(f"{args.index} holds no source {missing[0]!r}", "`llmkit index info` lists its sources")
        removed = index.delete(args.sources)
        print(f"{args.index}: deleted {removed} chunks of {len(args.sources)} sources; {len(index)} left")


def run_search(args: argparse.Namespace) -> None:
    from llmkit.devices import resolve_device
    from llmkit.retrieval.documents import embedder_for, search
    from llmkit.retrieval.store import Index

    mode = "hybrid" if args.hybrid else "bm25" if args.bm25 else "dense"
    with Index.open(args.index) as index:
        embedder = (
            None
            if mode == "bm25"
            else embedder_for(index, args.embedder, resolve_device(args.device), verify=not args.no_verify)
        )
        hits = search(index, embedder, args.query, args.k, mode)
    for rank, hit in enumerate(hits, start=1):
        if args.json:
            print(json.dumps({"rank": rank, "score": hit.score, "source": hit.source, "start": hit.start,
                              "end": hit.end, "text": hit.text}))  # fmt: skip
        else:
            preview = " ".join(hit.text.split())
            print(f"{rank}. {hit.score:.4f} {hit.citation()}  {preview[:160]}{'...' if len(preview) > 160 else ''}")
    if not hits:
        print("no results", file=sys.stderr)


def run_info(args: argparse.Namespace) -> None:
    from llmkit.retrieval.store import Index

    with Index.open(args.index) as index:
        meta, sources = index.meta, index.sources()
        print(f"{args.index}: {len(index)} chunks from {len(sources)} sources")
        print(f"embedder: {meta['embedder']} ({meta['dim']} dims, fingerprint {meta['fingerprint'][:12]}) "
              f"at {meta.get('embedder_path')}")  # fmt: skip
        print(f"chunks: {meta['chunk_tokens']} tokens, {meta['overlap']} overlap")
        for source, count in sources.items():
            print(f"  {count:6d}  {source}")
