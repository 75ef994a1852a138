"""Tokenization throughput: `llmkit data tokenize`'s path end to end next to `tokenizers`' encode_batch.

    python bench/tokenize_corpus.py                      # ~10 MB of the standard library, vocab 8192 and 50257
    python bench/tokenize_corpus.py --text corpus/ --mb 20 --vocab 8192
    python bench/tokenize_corpus.py --tokenizer runs/tok  # a saved byte-level BPE tokenizer
    python bench/tokenize_corpus.py --text data/domain/medical_medquad/medquad.txt.gz --line-docs

Rows (MB = 10^6 bytes of UTF-8 text; the fastest of --repeat runs, with the CPU seconds all its threads
used, a figure that other load on the machine disturbs less than the wall clock):
- ``llmkit tokenize_corpus``: the library call behind `llmkit data tokenize`, from reading the files to
  train.bin on disk (engine choice and checks, pieces, split, encode, shard writing, meta, rename);
- the same with ``engine="tokenizers"``: the fallback path;
- ``tokenizers encode_batch``: the documents already in memory, one call, ids not written;
- ``tiktoken engine``: llmkit's tiktoken engine alone on the same in-memory documents.
Every row's ids are compared with ``Tokenizer.encode(doc, add_special_tokens=False)`` + separator.
"""

from __future__ import annotations

import argparse
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tiktoken
import tokenizers

from llmkit.data.builtin import stdlib_source_texts
from llmkit.data.datasets import TokenDataset
from llmkit.data.fast_bpe import _usable_cpus, tiktoken_engine
from llmkit.data.shards import tokenize_corpus
from llmkit.data.tokenizer import Tokenizer
from llmkit.data.tokenizer_train import train_tokenizer


def corpus_folder(folder: Path, text: str | None, megabytes: float, line_docs: bool = False) -> list[str]:
    """Write about ``megabytes`` of documents as .txt files into ``folder``; return the documents."""
    limit = int(megabytes * 1e6)
    if text is None:
        source = stdlib_source_texts()
    else:
        from llmkit.data.sources import read_source, resolve_source

        source = ("".join(blocks) for _, blocks in read_source(resolve_source(text), line_documents=line_docs))
    docs, size = [], 0
    for doc in source:
        if size >= limit:
            break
        docs.append(doc)
        size += len(doc.encode())
    folder.mkdir(parents=True)
    for i, doc in enumerate(docs):
        # newline="" keeps line endings as they are, which is how tokenize_corpus reads files back
        with open(folder / f"{i:06d}.txt", "w", encoding="utf-8", newline="") as file:
            file.write(doc)
    return docs


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process
    return usage.ru_utime + usage.ru_stime


def best_of(repeat: int, run) -> tuple[tuple[float, float], object]:
    """(wall, CPU) seconds of the fastest of ``repeat`` runs, and the result."""
    best, result = (float("inf"), 0.0), None
    for _ in range(repeat):
        start, cpu = time.perf_counter(), cpu_seconds()
        result = run()
        best = min(best, (time.perf_counter() - start, cpu_seconds() - cpu))
    return best, result


def bench(tokenizer: Tokenizer, docs: list[str], folder: Path, work: Path, repeat: int) -> list[tuple]:
    size = sum(len(doc.encode()) for doc in docs)
    separator = np.asarray([tokenizer.eos_token_id], dtype=np.int64)
    reference_ids = tokenizer.encode_batch(docs, add_special_tokens=False)
    # every document ends with the separator; empty documents are skipped
    expected = np.concatenate([p for ids in reference_ids if ids for p in (np.asarray(ids, np.int64), separator)])
    n_tokens = len(expected) - sum(1 for ids in reference_ids if ids)
    rows = []
    for engine in ("auto", "tokenizers"):
        out = work / f"data-{engine}"

        def run(engine=engine, out=out):
            return tokenize_corpus(
                [(str(folder), None)], tokenizer, out, val_fraction=0.0, progress=False, engine=engine
            )

        seconds, summary = best_of(repeat, run)
        same = np.array_equal(TokenDataset(out).tokens("train").astype(np.int64), expected)
        rows.append((f"llmkit tokenize_corpus ({summary['engine']})", seconds, size, n_tokens, same))
    seconds, ids = best_of(repeat, lambda: tokenizer.encode_batch(docs, add_special_tokens=False))
    rows.append(("tokenizers encode_batch (in memory)", seconds, size, sum(map(len, ids)), ids == reference_ids))
    fast = tiktoken_engine(tokenizer)
    seconds, ids = best_of(repeat, lambda: [fast.encode_one(doc) for doc in docs])
    same = all(np.array_equal(a, b) for a, b in zip(ids, reference_ids, strict=True))
    rows.append(("tiktoken engine, 1 thread (in memory)", seconds, size, sum(map(len, ids)), same))
    return rows


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", help="a file, folder or builtin:NAME to read (default: the standard library)")
    parser.add_argument("--line-docs", action="store_true", help="--text: one document per line (default: per file)")
    parser.add_argument("--mb", type=float, default=10.0, help="megabytes of text (default: 10)")
    parser.add_argument(
        "--vocab", default="8192,50257", help="byte-level BPE vocab sizes to train (default: 8192,50257)"
    )
    parser.add_argument("--tokenizer", help="use this tokenizer directory instead of training")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row; the best is kept (default: 3)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        docs = corpus_folder(work / "corpus", args.text, args.mb, args.line_docs)
        size = sum(len(doc.encode()) for doc in docs)
        print(f"# {size / 1e6:.1f} MB in {len(docs)} documents; {cpu_model()}, {_usable_cpus()} CPUs")
        versions = f"tokenizers {tokenizers.__version__}, tiktoken {tiktoken.__version__}"
        print(f"# Python {sys.version.split()[0]}, {versions}")
        if args.tokenizer:
            chosen = {Path(args.tokenizer).name: Tokenizer.from_hf_dir(args.tokenizer)}
        else:
            chosen = {}
            for vocab in map(int, args.vocab.split(",")):
                start = time.perf_counter()
                chosen[f"bpe {vocab}"] = train_tokenizer(docs, "bpe", vocab)
                print(f"# trained byte-level BPE, vocab {vocab}, in {time.perf_counter() - start:.1f} s")
        print("\n| tokenizer | path | MB/s | seconds | CPU seconds | tokens | ids identical |")
        print("|---|---|---:|---:|---:|---:|---|")
        for name, tokenizer in chosen.items():
            rows = bench(tokenizer, docs, work / "corpus", work / name, args.repeat)
            for path, (seconds, cpu), nbytes, ntokens, same in rows:
                speed = nbytes / 1e6 / seconds
                print(f"| {name} | {path} | {speed:.1f} | {seconds:.2f} | {cpu:.2f} | {ntokens:,} | {same} |")


if __name__ == "__main__":
    main()
