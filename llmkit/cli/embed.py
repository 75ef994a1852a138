"""`llmkit embed`: sentence embeddings of a file's texts (llmkit.retrieval.embed)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llmkit.cli._retrieval import EMBEDDER_HELP


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed",
        help="sentence embeddings of texts (mean pooling + L2 normalisation, as sentence-transformers)",
        description="Embed each text of FILE with the encoder MODEL: tokenize -> truncate to the model's "
        "max_seq_length -> batches sorted by length -> pool the last hidden states over real tokens -> "
        "L2-normalise. Pooling and normalisation come from the folder's sentence-transformers files "
        "(1_Pooling/config.json, modules.json) when present, else mean + normalise; the flags override. "
        'FILE holds one text per non-blank line, or is .jsonl with a string or {"text": ...} per line. '
        "(`llmkit embeddings` is another command: it plots a model's word vectors.)",
    )
    p.add_argument("model", metavar="MODEL", help=EMBEDDER_HELP)
    p.add_argument("file", metavar="FILE", type=Path, help="texts: one per line (.txt/.gz) or .jsonl")
    p.add_argument(
        "--out", type=Path, default=None, metavar="X.npy|X.jsonl",
        help="write a (N, D) float32 .npy array, or .jsonl lines {\"text\", \"embedding\"} (default: JSONL on stdout)",
    )  # fmt: skip
    p.add_argument("--pooling", choices=["mean", "cls", "max"], default=None, help="override the folder's pooling")
    p.add_argument(
        "--normalize", choices=["true", "false"], default=None, help="override L2 normalisation (default: the folder's)"
    )
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="texts per forward pass (default 32)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, ...")
    p.set_defaults(handler=run)


def read_texts(path: Path) -> list[str]:
    from llmkit.errors import LlmkitError
    from llmkit.files import open_text, read_jsonl

    if not path.is_file():
        raise LlmkitError(f"{path}: no such file", "pass a text file with one text per line, or .jsonl")
    if path.suffix != ".jsonl":
        with open_text(path) as file:
            return [line.rstrip("\r\n") for line in file if line.strip()]
    texts = []
    for number, item in read_jsonl(path, "one string or object per line", objects=False):
        text = item.get("text") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise LlmkitError(f"{path}:{number}: no text", 'write a string or {"text": "..."} per line')
        texts.append(text)
    return texts


def run(args: argparse.Namespace) -> None:
    import numpy as np

    from llmkit.devices import resolve_device
    from llmkit.errors import LlmkitError
    from llmkit.files import atomic_file, atomic_write
    from llmkit.retrieval.embed import Embedder, resolve_embedder

    texts = read_texts(args.file)
    if args.out is not None and args.out.suffix not in (".npy", ".jsonl"):
        raise LlmkitError(f"--out {args.out}: unknown format", "name the file .npy or .jsonl")
    normalize = None if args.normalize is None else args.normalize == "true"
    device = resolve_device(args.device)
    embedder = Embedder.load(resolve_embedder(args.model), device, args.pooling, normalize, verify=not args.no_verify)
    vectors = embedder.embed(texts, args.batch_size)
    if args.out is not None and args.out.suffix == ".npy":
        with atomic_file(args.out) as tmp, open(tmp, "wb") as file:
            np.save(file, vectors)
    else:
        lines = "".join(
            json.dumps({"text": t, "embedding": v.tolist()}) + "\n" for t, v in zip(texts, vectors, strict=True)
        )
        if args.out is None:
            sys.stdout.write(lines)
            return
        atomic_write(args.out, lines)
    print(
        f"{len(texts)} texts -> {args.out} ({vectors.shape[0]} x {vectors.shape[1]}, {embedder.name})", file=sys.stderr
    )
