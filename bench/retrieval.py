"""Retrieval quality and speed on MedQuAD: dense (all-MiniLM-L6-v2), BM25 (bm25s) and hybrid (RRF).

Part 1, quality. data/domain/medical_medquad holds one "<question> <answer>" line per MedQuAD pair; each
line is split at its first "? " into the question and the answer. A seeded sample of ``--pairs`` pairs
is drawn; the answers become the documents (chunked as `llmkit index build` chunks: 200 tokens, 40
overlap) and the questions the queries. Per query, chunks are ranked (dense, BM25, hybrid) and folded
into a ranking of answers (an answer takes the rank of its best chunk); a query is answered at rank r
when its own answer (or an answer with the identical text) is r-th. Figures: recall@1/5/10, MRR over
the first 10 answers, index build time (embedding + inserting; BM25's indexing apart), and query
latency per mode (mean over the queries, the query's embedding included), the modes interleaved per
query so load from elsewhere hits all alike. Threads follow llmkit's policy, as in the commands.

Part 2, throughput at 100k chunks. **Synthetic** chunks: unit vectors drawn at random (384 dims) with
texts of ``--words`` words drawn from MedQuAD's vocabulary by its word frequencies; inserted through
``Index.add`` (as `index add` does). Queries are real questions, embedded once beforehand; queries/s is
measured for the store's search alone (dense, BM25, hybrid) and for dense with the query's embedding.

Peer: the first ``--peer-chunks`` chunks of part 1 embedded by llmkit and by sentence-transformers
(the same MiniLM folder, batch 32 each), alternated, best of two runs each: chunks/s.

    nice .venv/bin/python bench/retrieval.py                         # both parts
    nice .venv/bin/python bench/retrieval.py --pairs 300 --chunks 20000   # smaller
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import random
import tempfile
import time
from pathlib import Path

from llmkit import threads

# the thread policy every llmkit command applies (llmkit/threads.py), decided before torch is imported: on a
# shared machine two spinning threads made one query's embedding 100 ms instead of 18
THREADS = threads.decide(None)
threads.apply(THREADS)

import numpy as np  # noqa: E402

from llmkit.retrieval.chunk import ChunkConfig, chunk_text  # noqa: E402
from llmkit.retrieval.documents import search  # noqa: E402
from llmkit.retrieval.embed import Embedder, default_embedder  # noqa: E402
from llmkit.retrieval.store import Index  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "domain" / "medical_medquad" / "medquad.txt.gz"
MODES = ("dense", "bm25", "hybrid")
DEPTH = 30  # chunks retrieved per query before folding into answers (answers have 1-3 chunks mostly)


def load_pairs() -> list[tuple[str, str]]:
    pairs = []
    with gzip.open(DATA, "rt", encoding="utf-8") as f:
        for line in f:
            question, mark, answer = line.strip().partition("? ")
            if mark and answer.strip():
                pairs.append((question + "?", answer.strip()))
    return pairs


def load() -> str:
    return f"load average {os.getloadavg()[0]:.1f} (2 cores)"


def quality(embedder: Embedder, pairs: list[tuple[str, str]], workdir: Path, peer_chunks: int = 0) -> dict:
    chunking = ChunkConfig()
    same = collections.defaultdict(set)  # answer text -> ids of pairs that share it
    for i, (_, answer) in enumerate(pairs):
        same[answer].add(i)
    index = Index.create(workdir / "medquad.index", embedder.fingerprint, embedder.name, embedder.dim, chunking)
    start = time.perf_counter()
    chunks = [c for i, (_, a) in enumerate(pairs) for c in chunk_text(a, str(i), embedder.tokenizer, chunking)]
    for first in range(0, len(chunks), 256):
        batch = chunks[first : first + 256]
        index.add(batch, embedder.embed([c.text for c in batch]))
    build = time.perf_counter() - start
    start = time.perf_counter()
    index.bm25("warm", 1)  # builds the BM25 index over every chunk
    bm25_build = time.perf_counter() - start
    ranks = {m: [] for m in MODES}
    latency = {m: [] for m in MODES}
    for question, answer in pairs:
        for mode in MODES:  # interleaved per query
            t = time.perf_counter()
            hits = search(index, embedder, question, DEPTH, mode)
            latency[mode].append(time.perf_counter() - t)
            answers = list(dict.fromkeys(int(h.source) for h in hits))  # best chunk's rank per answer
            right = same[answer]
            ranks[mode].append(next((r for r, a in enumerate(answers, start=1) if a in right), None))
    index.close()
    out = {"pairs": len(pairs), "chunks": len(chunks), "build_s": build, "bm25_build_s": bm25_build}
    if peer_chunks:
        out["embed_chunks_per_s"] = peer(embedder, [c.text for c in chunks[:peer_chunks]])
    for mode in MODES:
        found = ranks[mode]
        out[mode] = {
            **{f"recall@{k}": sum(r is not None and r <= k for r in found) / len(found) for k in (1, 5, 10)},
            "mrr@10": sum(1 / r for r in found if r is not None and r <= 10) / len(found),
            "latency_ms": 1000 * float(np.mean(latency[mode])),
        }
    return out


def peer(embedder: Embedder, texts: list[str], repeats: int = 2) -> dict:
    """Chunks/s embedding ``texts`` with llmkit and with sentence-transformers (the peer users would pick),
    alternated ``repeats`` times, best run each; both batch 32 and sort by length."""
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(default_embedder()), device="cpu")
    best = {"llmkit": float("inf"), "sentence-transformers": float("inf")}
    runs = {"llmkit": lambda: embedder.embed(texts), "sentence-transformers": lambda: reference.encode(texts)}
    for _ in range(repeats):
        for name, run in runs.items():
            t = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - t)
    return {name: len(texts) / seconds for name, seconds in best.items()}


def throughput(embedder: Embedder, pairs: list[tuple[str, str]], n: int, words: int, queries: int, workdir: Path):
    rng = np.random.default_rng(0)
    counts = collections.Counter(w for _, a in pairs for w in a.split())
    vocab, freq = list(counts), np.array(list(counts.values()), dtype=np.float64)
    freq /= freq.sum()
    from llmkit.retrieval.chunk import Chunk

    index = Index.create(workdir / "synthetic.index", embedder.fingerprint, embedder.name, embedder.dim, ChunkConfig())
    start = time.perf_counter()
    for first in range(0, n, 10_000):
        size = min(10_000, n - first)
        vectors = rng.standard_normal((size, embedder.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        picks = rng.choice(len(vocab), size=(size, words), p=freq)
        texts = [" ".join(vocab[j] for j in row) for row in picks]
        index.add([Chunk(f"synthetic{first + i}", 0, len(t), t) for i, t in enumerate(texts)], vectors)
    insert = time.perf_counter() - start
    start = time.perf_counter()
    index.bm25("warm", 1)
    bm25_build = time.perf_counter() - start
    questions = [q for q, _ in random.Random(1).sample(pairs, queries)]
    vectors = embedder.embed(questions)
    timings = {"dense": 0.0, "bm25": 0.0, "hybrid": 0.0, "dense+embed": 0.0}
    for q, v in zip(questions, vectors, strict=True):  # interleaved per query
        for mode in ("dense", "bm25", "hybrid"):
            t = time.perf_counter()
            index.search(q, v, 5, mode)
            timings[mode] += time.perf_counter() - t
        t = time.perf_counter()
        search(index, embedder, q, 5, "dense")
        timings["dense+embed"] += time.perf_counter() - t
    size = (workdir / "synthetic.index").stat().st_size
    index.close()
    return {
        "chunks": n, "words_per_chunk": words, "insert_s": insert, "bm25_build_s": bm25_build,
        "file_mb": size / 2**20, "queries": queries, "qps": {m: queries / s for m, s in timings.items()},
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=600, help="MedQuAD pairs sampled (seed 0); 0 = all")
    p.add_argument("--chunks", type=int, default=100_000, help="synthetic chunks for the throughput part (0: skip)")
    p.add_argument("--words", type=int, default=60, help="words per synthetic chunk")
    p.add_argument("--queries", type=int, default=200, help="queries timed in the throughput part")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--peer-chunks", type=int, default=128, help="chunks embedded by llmkit and sentence-transformers")
    args = p.parse_args()
    embedder = Embedder.load(default_embedder())
    pairs = load_pairs()
    sample = random.Random(0).sample(pairs, args.pairs) if args.pairs else pairs
    results = {"before": load(), "threads": THREADS.describe()}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_quality:
            results["quality"] = quality(embedder, sample, Path(tmp), args.peer_chunks)
            results["after_quality"] = load()
            print(json.dumps(results["quality"], indent=1), flush=True)
        if args.chunks:
            results["throughput"] = throughput(embedder, pairs, args.chunks, args.words, args.queries, Path(tmp))
            results["after_throughput"] = load()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
