"""Writing token shards: ``tokenize_corpus`` turns text sources into the train/val shards of ids,
meta.json and tokenizer files that ``llmkit.data.datasets.TokenDataset`` reads (format described there).

Sources are read as streams (``llmkit.data.sources``): nothing holds a whole corpus in memory, and
ids go to disk batch by batch. Byte-level BPE is encoded by tiktoken's engine when it reproduces
the tokenizer's ids exactly (``llmkit.data.fast_bpe``), else by `tokenizers`. Several sources are
mixed by weights in blocks of tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from llmkit.data.datasets import FORMAT, SPLITS, tokenizer_fingerprint
from llmkit.data.fast_bpe import Engine, TokenizersEngine, choose_engine, first_mismatch
from llmkit.data.sources import Source, check_sources, read_source, split_pieces
from llmkit.data.tokenizer import Tokenizer
from llmkit.errors import LlmkitError
from llmkit.files import atomic_directory

_BATCH_CHARS = 1 << 20  # characters per encode call
_VERIFY_CHARS = 1 << 16  # the first characters of every source are encoded by both engines and compared
_MIX_BLOCK = 1 << 16  # tokens per interleaving step when sources are mixed


# --- writing -----------------------------------------------------------------------------------------


@dataclass
class _Shard:
    """One source's ids for one split, appended to a file; ``ends`` records where each document ends."""

    path: Path
    dtype: np.dtype
    separator: int
    file: BinaryIO | None = None
    n_tokens: int = 0
    run: int = 0  # tokens of the open document run
    ends: list[int] = field(default_factory=list)
    ends_path: Path | None = None

    def __post_init__(self) -> None:
        self.file = open(self.path, "wb")
        self.ends_path = self.path.with_suffix(".ends")
        self._ends_file = open(self.ends_path, "wb")

    def write(self, ids: np.ndarray) -> None:
        self.file.write(ids.astype(self.dtype, copy=False).tobytes())
        self.n_tokens += len(ids)
        self.run += len(ids)

    def end_document(self) -> None:
        if self.run:
            self.write(np.asarray([self.separator], dtype=self.dtype))
            self.ends.append(self.n_tokens)
            self.run = 0

    def flush(self) -> None:
        np.asarray(self.ends, dtype=np.int64).tofile(self._ends_file)
        self.ends.clear()

    def close(self) -> None:
        self.flush()
        self.file.close()
        self._ends_file.close()


@dataclass
class _SourceStats:
    source: Source
    documents: int = 0
    bytes: int = 0
    shards: dict[str, _Shard] = field(default_factory=dict)


def tokenize_corpus(
    sources: list[tuple[str, float | None]],
    tokenizer: Tokenizer,
    out_dir: str | os.PathLike,
    *,
    val_fraction: float = 0.05,
    seed: int = 0,
    text_field: str = "text",
    line_documents: bool = False,
    progress: bool = True,
    max_tokens: int | None = None,
    engine: str = "auto",
) -> dict[str, Any]:
    """Tokenize ``sources`` (``(spec, weight)`` pairs) into a data directory ``out_dir``; return the summary.

    Order: check every source and ``out_dir``; choose the engine (tiktoken for byte-level BPE when its
    ids match, else `tokenizers`); read each source document by document, cut documents into pieces
    of ~16k characters (:func:`split_pieces`), send each piece to val with probability
    ``val_fraction`` (a hash of the seed, the document's key from :func:`read_source` and the
    piece's index: the same in every run, wherever the corpus lies), encode without special
    tokens, and append the ids to that source's shard; a separator (eos, else sep) ends every
    document, and every run of a document's pieces that the split interrupts. Then mix the shards
    into ``train.bin`` and ``val.bin``, write ``meta.json`` and the tokenizer, and rename the
    temporary directory into place.

    Mixing. With weights (every source has one; they are normalized to sum to 1) the train split
    holds T tokens, T = ``max_tokens`` or else the sum of the sources' train tokens, and source i
    contributes ``weight_i * T``: a source with fewer tokens is repeated (upsampled: whole passes
    plus a part), one with more is cut (its first documents are used; with ``max_tokens`` it is not
    read further). Blocks of whole documents (~64k tokens; a longer document is cut at 256k, each
    part ended by a separator) are interleaved, the next always from the source furthest behind
    its share, so every stretch of the file holds the mixture. The val
    split mixes the sources' val tokens by the same weights over their own total. Without weights
    every source is used once, in full (with ``max_tokens``: in the order given, up to the cap).
    The summary (and meta.json) gives each source's actual share and epochs (times used).
    """
    started = time.perf_counter()
    checked = check_sources(sources)
    if not 0 <= val_fraction < 1:
        raise LlmkitError(f"val_fraction={val_fraction} must be in [0, 1)", "e.g. --val-fraction 0.05")
    if max_tokens is not None and max_tokens < 1:
        raise LlmkitError(f"max_tokens={max_tokens} must be >= 1", "drop --max-tokens to use all the data")
    separator = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if separator is None:
        raise LlmkitError("the tokenizer has no eos or sep token to end documents with", "set eos_token in its config")
    out = _check_out_dir(Path(out_dir))
    dtype = np.dtype("<u2" if tokenizer.vocab_size <= 65535 else "<u4")
    if engine not in ("auto", "tokenizers"):
        raise LlmkitError(f"unknown engine {engine!r}", "use auto (tiktoken when it matches) or tokenizers")
    encoder, engine_note = (
        choose_engine(tokenizer) if engine == "auto" else (TokenizersEngine(tokenizer), "tokenizers (asked for)")
    )
    weights = _normalized([weight for _, weight in sources])
    budgets = _budgets([0] * len(sources), weights, max_tokens) if weights and max_tokens else None

    bar = _progress_bar(checked, progress)
    try:
        with atomic_directory(out) as tmp:
            reader = _Reader(encoder, tokenizer, seed, val_fraction, text_field, line_documents, bar)
            stats = []
            for i, source in enumerate(checked):
                stop_at = budgets[i] if budgets else None
                if not weights and max_tokens is not None:
                    stop_at = max(0, max_tokens - sum(s.shards["train"].n_tokens for s in stats))
                shards = {split: _Shard(tmp / f"source{i}.{split}.bin", dtype, separator) for split in SPLITS}
                stats.append(reader.read(source, shards, stop_at))
            meta = _mix_and_describe(stats, weights, max_tokens, tmp, dtype)
            meta.update(
                _tokenizer_meta(tokenizer, separator), val_fraction=val_fraction, seed=seed, text_field=text_field
            )
            meta["engine"] = reader.engine.name
            meta["engine_note"] = reader.engine_note or engine_note
            for path in tmp.glob("source*"):
                path.unlink()
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
            tokenizer.save(tmp)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - started
    total_bytes = sum(s.bytes for s in stats)
    return {
        **meta,
        "out": str(out),
        "bytes": total_bytes,
        "seconds": seconds,
        "mb_per_s": total_bytes / 1e6 / max(seconds, 1e-9),
    }


class _Reader:
    """Reads sources into shards: pieces -> split -> batched encode (tiktoken on a thread pool) -> append."""

    def __init__(self, engine, tokenizer, seed, val_fraction, text_field, line_documents, bar) -> None:
        self.engine: Engine = engine
        self.engine_note = ""
        self.reference = engine if isinstance(engine, TokenizersEngine) else TokenizersEngine(tokenizer)
        self.seed, self.val_fraction, self.bar = seed, val_fraction, bar
        self.text_field, self.line_documents = text_field, line_documents

    def read(self, source: Source, shards: dict[str, _Shard], stop_at: int | None) -> _SourceStats:
        stats = _SourceStats(source, shards=shards)
        open_split: str | None = None  # the split whose document run is still open
        unverified = self.engine is not self.reference
        try:
            batches = self._batches(source, stats) if stop_at is None or stop_at > 0 else iter(())
            for batch, encoded, engine in self._encoded(batches):
                texts = [text for text, _, _ in batch]
                if unverified:
                    unverified = False
                    self._verify(texts)
                if engine is not self.engine:
                    encoded = self.engine.encode(texts)  # the fast engine failed its check on this source
                size = 0
                for (text, split, first), ids in zip(batch, encoded, strict=True):
                    if open_split is not None and (first or split != open_split):
                        shards[open_split].end_document()
                    shards[split].write(ids)
                    open_split = split
                    size += len(text.encode())
                stats.bytes += size
                for shard in shards.values():
                    shard.flush()
                if self.bar is not None:
                    self.bar.update(size)
                    self.bar.set_postfix_str(f"{source.spec}: {shards['train'].n_tokens:,} train tokens", refresh=False)
                if stop_at is not None and shards["train"].n_tokens >= stop_at:
                    break
            if open_split is not None:
                shards[open_split].end_document()
        finally:
            for shard in shards.values():
                shard.close()
        return stats

    def _batches(self, source: Source, stats: _SourceStats) -> Iterator[list[tuple[str, str, bool]]]:
        """(piece, split, starts a document) triples, ~_BATCH_CHARS of text per batch."""
        batch, chars = [], 0
        for key, blocks in read_source(source, self.text_field, self.line_documents):
            stats.documents += 1
            for index, piece in enumerate(split_pieces(blocks)):
                split = "val" if _uniform(self.seed, key, index) < self.val_fraction else "train"
                batch.append((piece, split, index == 0))
                chars += len(piece)
                if chars >= _BATCH_CHARS:
                    yield batch
                    batch, chars = [], 0
        if batch:
            yield batch

    def _encoded(self, batches: Iterator[list]) -> Iterator[tuple[list, list[np.ndarray], Engine]]:
        """Encode batch k on worker threads while the main thread reads batch k+1 (tiktoken frees the GIL)."""
        engine = self.engine
        if engine.threads <= 1:
            for batch in batches:
                yield batch, engine.encode([text for text, _, _ in batch]), engine
            return
        with ThreadPoolExecutor(engine.threads) as pool:
            previous = None
            for batch in batches:
                # one task per thread, each a run of texts: per-task overhead would dominate on short documents
                texts = [text for text, _, _ in batch]
                step = -(-len(texts) // engine.threads)
                futures = [pool.submit(engine.encode, texts[i : i + step]) for i in range(0, len(texts), step)]
                if previous is not None:
                    yield previous[0], [ids for future in previous[1] for ids in future.result()], engine
                previous = (batch, futures)
            if previous is not None:
                yield previous[0], [ids for future in previous[1] for ids in future.result()], engine

    def _verify(self, texts: list[str]) -> None:
        """Compare the engines on the first characters of a source; on a mismatch switch to `tokenizers`."""
        sample, chars = [], 0
        for text in texts:
            sample.append(text[: _VERIFY_CHARS - chars])
            chars += len(sample[-1])
            if chars >= _VERIFY_CHARS:
                break
        mismatch = first_mismatch(self.engine, self.reference, sample)
        if mismatch is not None:
            self.engine = self.reference
            self.engine_note = f"tokenizers (tiktoken's ids differ on {mismatch[:60]!r})"


def _normalized(weights: list[float | None]) -> list[float] | None:
    if weights[0] is None:
        return None
    total = sum(weights)
    return [w / total for w in weights]


def _check_out_dir(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise LlmkitError(f"--out {out} exists and is not a directory", "choose a directory path")
    if out.is_dir() and any(out.iterdir()) and not (out / "meta.json").is_file():
        raise LlmkitError(f"--out {out} holds files and is not a token data directory", "choose a new or empty one")
    return out


def _uniform(seed: int, document: str, piece: int) -> float:
    """A number in [0, 1) fixed by its arguments (split assignment needs no random state)."""
    digest = hashlib.blake2b(f"{seed}\0{document}\0{piece}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def _progress_bar(sources: list[Source], enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    sizes = [source.size_bytes() for source in sources]
    total = None if None in sizes else sum(sizes)
    return tqdm(total=total, unit="B", unit_scale=True, desc="tokenizing", smoothing=0.1)


# --- mixing ------------------------------------------------------------------------------------------


def _budgets(read: list[int], weights: list[float] | None, total: int | None) -> list[int]:
    """Tokens each source contributes to a split: weights * total (largest remainders), or as read."""
    if weights is None:
        if total is None:
            return list(read)
        budgets, left = [], total
        for n in read:
            budgets.append(min(n, left))
            left -= budgets[-1]
        return budgets
    total = sum(read) if total is None else total
    exact = [w * total for w in weights]
    budgets = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: budgets[i] - exact[i])
    for i in by_remainder[: total - sum(budgets)]:
        budgets[i] += 1
    return budgets


def _mix(shards: list[_Shard], budgets: list[int], path: Path, dtype: np.dtype) -> list[int]:
    """Write ``budgets[i]`` tokens of shard i into ``path``, interleaved in blocks; return the counts written.

    The next block always comes from the source furthest behind its budget (emitted / budget), so
    shares hold along the whole file. A block runs from the source's cursor to the first document end
    at least _MIX_BLOCK tokens on; a source is read from its start again when it runs out
    (upsampling). A block that has to stop inside a document (one longer than 4 * _MIX_BLOCK, or the
    last block before the budget) is ended with a separator, so sources never run into each other.
    """
    live = [i for i, shard in enumerate(shards) if budgets[i] > 0]
    if len(live) == 1 and budgets[live[0]] == shards[live[0]].n_tokens:
        os.replace(shards[live[0]].path, path)  # one source used once: nothing to copy
        return budgets
    data = {i: np.memmap(shards[i].path, dtype=dtype, mode="r") for i in live}
    ends = {i: np.memmap(shards[i].ends_path, dtype=np.int64, mode="r") for i in live}  # 8 bytes per document
    emitted, cursor = [0] * len(shards), [0] * len(shards)
    with open(path, "wb") as out:
        while active := [i for i in live if emitted[i] < budgets[i]]:
            i = min(active, key=lambda j: emitted[j] / budgets[j])
            start, doc = cursor[i], np.searchsorted(ends[i], cursor[i] + _MIX_BLOCK, side="left")
            doc_end = int(ends[i][doc]) if doc < len(ends[i]) else len(data[i])
            stop = min(doc_end, start + 4 * _MIX_BLOCK, start + budgets[i] - emitted[i])
            cut = stop < doc_end
            if cut and stop > start:
                stop -= 1  # leave room for the separator
            for a in range(start, stop, 1 << 24):  # copy in 16M-token slices: memory stays bounded
                out.write(np.asarray(data[i][a : min(stop, a + (1 << 24))]).tobytes())
            if cut:
                out.write(np.asarray([shards[i].separator], dtype=dtype).tobytes())
            emitted[i] += stop - start + cut
            cursor[i] = stop % len(data[i])
    return emitted


def _mix_and_describe(
    stats: list[_SourceStats], weights: list[float] | None, max_tokens: int | None, tmp: Path, dtype: np.dtype
) -> dict[str, Any]:
    """Mix every split into ``tmp/{split}.bin``; return meta.json's counts and per-source figures."""
    counts: dict[str, list[int]] = {}
    for split in SPLITS:
        shards = [s.shards[split] for s in stats]
        read = [shard.n_tokens for shard in shards]
        split_weights = weights
        if weights is not None and split == "val":
            # a source without val documents cannot be weighted there; the others share its weight
            kept = [w if n else 0.0 for w, n in zip(weights, read, strict=True)]
            split_weights = [w / sum(kept) for w in kept] if sum(kept) else None
        total = max_tokens if split == "train" else None
        budgets = _budgets(read, split_weights, total) if sum(read) else [0] * len(read)
        for s, n, budget in zip(stats, read, budgets, strict=True):
            if budget and not n:
                raise LlmkitError(
                    f"{s.source.spec} gave no {split} tokens ({s.documents} documents read)",
                    "check that it holds text; a source of one short document can land wholly in val: "
                    "add text or lower --val-fraction",
                )
        counts[split] = _mix(shards, budgets, tmp / f"{split}.bin", dtype)
    sources = []
    for i, s in enumerate(stats):
        entry: dict[str, Any] = {"source": s.source.spec, "weight": None if weights is None else weights[i]}
        entry.update(documents=s.documents, bytes=s.bytes)
        for split in SPLITS:
            read, used, total = s.shards[split].n_tokens, counts[split][i], sum(counts[split])
            entry[split] = {
                "tokens_read": read,
                "tokens": used,
                "share": used / total if total else 0.0,
                "epochs": used / read if read else 0.0,
            }
        sources.append(entry)
    return {
        "format": FORMAT,
        "version": 1,
        "dtype": dtype.name,
        "tokens": {split: sum(counts[split]) for split in SPLITS},
        "mixing": "natural" if weights is None else "weights",
        "max_tokens": max_tokens,
        "sources": sources,
    }


def _tokenizer_meta(tokenizer: Tokenizer, separator: int) -> dict[str, Any]:
    roles = ("bos", "eos", "pad", "unk", "mask", "cls", "sep")
    special_ids = {role: getattr(tokenizer, f"{role}_token_id") for role in roles}
    return {
        "vocab_size": tokenizer.vocab_size,
        "separator_id": separator,
        "special_token_ids": {role: i for role, i in special_ids.items() if i is not None},
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
    }
