"""`llmkit data curate` end to end: filter every shard, deduplicate across all of them, assemble the output.

Three stages, each resumable:
1. ``filter_shard`` (one shard, any worker): normalize, the document rules in CurateConfig's order (the
   first that fails removes the document and names the rule), PII redaction of what is kept, and the
   dedup material (exact digest, shingle hashes, MinHash signature). Its files appear at once
   (``atomic_directory``): a shard's folder under ``OUT/work/shards/`` exists only when it is complete,
   so a killed run redoes only the shards without one.
2. ``deduplicate`` (one process, all shards): exact then near duplicates over the whole corpus in corpus
   order (llmkit.curate.dedup), written to ``OUT/work/dedup.json`` atomically.
3. ``assemble``: ``OUT/kept/NN-SOURCE.jsonl`` per source (``{"text", "id", "source"}``: what `llmkit data
   tokenize` reads, one source per file so they can be mixed by weight), ``OUT/removed.jsonl`` (every
   removed document with its rule), ``OUT/report.json`` and ``OUT/funnel.png``, each written atomically.

Every output depends only on the inputs and the config, never on the worker count or on where a run
was interrupted. ``OUT/work/manifest.json`` records the config and the shards; a run over the same
OUT with other settings or changed inputs is refused rather than mixed.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmkit.curate import dedup, language
from llmkit.curate.config import CurateConfig
from llmkit.curate.harmful import WordList
from llmkit.curate.pii import redact
from llmkit.curate.quality import c4, encoding, gopher_quality
from llmkit.curate.repetition import gopher_repetition
from llmkit.curate.shards import ReadOptions, Shard, plan_shards, read_shard, source_names
from llmkit.curate.text import normalize
from llmkit.errors import LlmkitError
from llmkit.files import atomic_directory, atomic_file, atomic_write, leftovers, read_json

EXAMPLES_PER_RULE = 3
EXAMPLE_CHARS = 300
WORK = "work"


@dataclass
class CurateOptions:
    sources: list[str]
    out: Path
    config: CurateConfig = field(default_factory=CurateConfig)
    workers: int = 1
    read: ReadOptions = field(default_factory=ReadOptions)


# --- one document ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    text: str
    rule: str | None = None  # the rule that removed it; None: kept
    detail: str = ""
    pii: dict[str, int] = field(default_factory=dict)
    lines_dropped: int = 0


class DocumentFilter:
    """The per-document rules of a config, built once per process (the word list compiles once)."""

    def __init__(self, cfg: CurateConfig) -> None:
        self.cfg = cfg
        self.words = WordList.from_config(cfg.harmful) if cfg.harmful.enabled else None

    def __call__(self, text: str) -> Outcome:
        """normalize -> encoding -> language -> gopher_repetition -> gopher_quality -> c4 -> harmful -> pii."""
        cfg = self.cfg
        if cfg.normalize.enabled:
            text = normalize(text)
        if not text.strip():
            return Outcome(text, "empty")
        if cfg.encoding.enabled and (rule := encoding(text, cfg.encoding)):
            return Outcome(text, rule)
        if cfg.language.enabled:
            rule, lang, score = language.check(text, cfg.language)
            if rule:
                return Outcome(text, rule, f"{lang} {score:.2f}")
        if cfg.gopher_repetition.enabled and (rule := gopher_repetition(text, cfg.gopher_repetition)):
            return Outcome(text, rule)
        if cfg.gopher_quality.enabled and (rule := gopher_quality(text, cfg.gopher_quality)):
            return Outcome(text, rule)
        dropped = 0
        if cfg.c4.enabled:
            before = text.count("\n") + 1
            text, rule = c4(text, cfg.c4)
            if rule:
                return Outcome(text, rule)
            dropped = before - (text.count("\n") + 1)
        if self.words is not None and (rule := self.words.check(text)):
            return Outcome(text, rule, ", ".join(sorted(set(self.words.matches(text, 5)))))
        counts = {}
        if cfg.pii.enabled:
            redaction = redact(text, cfg.pii)
            text, counts = redaction.text, redaction.counts
        return Outcome(text, None, pii=counts, lines_dropped=dropped)


# --- stage 1: filter a shard -------------------------------------------------------------------------


def _tally(table: dict, key: str, text: str) -> None:
    row = table.setdefault(key, {"docs": 0, "chars": 0, "words": 0})
    row["docs"] += 1
    row["chars"] += len(text)
    row["words"] += len(text.split())


def shard_dir(work: Path, shard: Shard) -> Path:
    return work / "shards" / f"{shard.index:05d}"


def filter_shard(
    shard: Shard, cfg: CurateConfig, read: ReadOptions, work: Path, progress: Callable[[int], None] | None = None
) -> None:
    """Stage 1 for one shard: kept.jsonl, removed.jsonl, dedup.npz and stats.json, all or nothing."""
    target = shard_dir(work, shard)
    if target.is_dir():
        return
    start = time.perf_counter()
    check = DocumentFilter(cfg)
    stats: dict = {"shard": shard.index, "source": shard.source, "source_index": shard.source_index}
    stats.update({"bytes": shard.size, "in": {}, "removed": {}, "kept": {}, "pii": {}, "lines_dropped": 0})
    examples: dict[str, list] = {}
    ids, digests, hash_sets = [], [], []
    near = cfg.near_dedup
    with (
        atomic_directory(target) as tmp,
        open(tmp / "kept.jsonl", "w") as kept,
        open(tmp / "removed.jsonl", "w") as gone,
    ):
        for doc_id, raw in read_shard(shard, read):
            _tally(stats["in"], "all", raw)
            outcome = check(raw)
            if outcome.rule:
                _tally(stats["removed"], outcome.rule, raw)
                record = {"id": doc_id, "source": shard.source, "rule": outcome.rule, "detail": outcome.detail}
                gone.write(json.dumps({**record, "text": outcome.text}, ensure_ascii=False) + "\n")
                if len(examples.setdefault(outcome.rule, [])) < EXAMPLES_PER_RULE:
                    examples[outcome.rule].append({**record, "text": outcome.text[:EXAMPLE_CHARS]})
            else:
                _tally(stats["kept"], "all", outcome.text)
                for kind, n in outcome.pii.items():
                    stats["pii"][kind] = stats["pii"].get(kind, 0) + n
                stats["lines_dropped"] += outcome.lines_dropped
                kept.write(json.dumps({"text": outcome.text, "id": doc_id, "source": shard.source}, ensure_ascii=False))
                kept.write("\n")
                ids.append(doc_id)
                digests.append(dedup.exact_digest(outcome.text))
                if near.enabled:
                    hash_sets.append(dedup.shingle_hashes(outcome.text, near.ngram))
            if progress is not None:
                progress(len(raw))
        _save_dedup_material(tmp / "dedup.npz", ids, digests, hash_sets, cfg)
        stats["examples"] = examples
        stats["seconds"] = time.perf_counter() - start
        atomic_write(tmp / "stats.json", json.dumps(stats, indent=1, ensure_ascii=False))


def _save_dedup_material(path: Path, ids: list[str], digests: list[bytes], hash_sets: list, cfg: CurateConfig) -> None:
    near = cfg.near_dedup
    sigs = (
        dedup.signatures(hash_sets, near.num_perm, near.seed)
        if near.enabled
        else np.zeros((len(ids), 0), dtype=np.uint32)
    )
    offsets = np.cumsum([0] + [len(h) for h in hash_sets], dtype=np.int64)
    hashes = np.concatenate(hash_sets) if hash_sets else np.zeros(0, dtype=np.uint32)
    digest_array = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(ids), 16)
    with open(path, "wb") as file:
        np.savez(file, ids=np.array(ids, dtype=str), digests=digest_array, sigs=sigs, offsets=offsets, hashes=hashes)


def _run_filter(job: tuple) -> int:
    """A pool worker's stage 1 (top level, so it pickles)."""
    shard, cfg, read, work = job
    filter_shard(shard, cfg, read, work)
    return shard.size


# --- stage 2: deduplicate across shards ----------------------------------------------------------------


def deduplicate(work: Path, shards: list[Shard], cfg: CurateConfig) -> dict:
    """Exact then near duplicates over all shards' kept documents; the result is also written to dedup.json."""
    path = work / "dedup.json"
    if path.is_file():
        return json.loads(path.read_text())
    ids, digests, sigs, hash_sets, where = [], [], [], [], []
    for shard in shards:
        with np.load(shard_dir(work, shard) / "dedup.npz", allow_pickle=False) as data:
            n = len(data["ids"])
            ids += data["ids"].tolist()
            digests += [bytes(row) for row in data["digests"]]
            sigs.append(data["sigs"])
            offsets, hashes = data["offsets"], data["hashes"]
            hash_sets += [hashes[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
            where += [(shard.index, i) for i in range(n)]
    removed: list[list] = []  # [shard, local index, rule, duplicate_of id, similarity]
    alive = list(range(len(ids)))
    if cfg.exact_dedup.enabled:
        roots = dedup.exact_roots(digests)
        removed += [[*where[i], "exact_dedup", ids[r], 1.0] for i, r in enumerate(roots) if r != i]
        alive = [i for i, r in enumerate(roots) if r == i]
    result = {"documents": len(ids), "candidates": 0, "near_pairs": 0}
    if cfg.near_dedup.enabled and alive:
        all_sigs = np.concatenate(sigs)[alive]
        sets = [hash_sets[i] for i in alive]
        candidates = dedup.candidate_pairs(all_sigs, cfg.near_dedup.threshold, cfg.near_dedup.seed)
        pairs = [
            (a, b)
            for a, b in candidates
            if len(sets[a]) and len(sets[b]) and dedup.jaccard(sets[a], sets[b]) >= cfg.near_dedup.threshold
        ]
        roots = dedup.cluster_roots(len(alive), pairs)
        for k, r in enumerate(roots):
            if r != k:
                i, keep = alive[k], alive[r]
                removed.append([*where[i], "near_dedup", ids[keep], round(dedup.jaccard(sets[k], sets[r]), 4)])
        result.update(candidates=len(candidates), near_pairs=len(pairs))
    removed.sort(key=lambda row: (row[0], row[1]))
    result["removed"] = removed
    atomic_write(path, json.dumps(result))
    return result


# --- stage 3: assemble -------------------------------------------------------------------------------


def assemble(out: Path, shards: list[Shard], dups: dict) -> list[dict]:
    """Write kept/NN-SOURCE.jsonl per source and removed.jsonl; return every shard's stats with dedup added."""
    work = out / WORK
    by_shard: dict[int, dict[int, list]] = {}
    for shard_index, local, rule, keep_id, sim in dups["removed"]:
        by_shard.setdefault(shard_index, {})[local] = [rule, keep_id, sim]
    names = source_names(shards)
    (out / "kept").mkdir(parents=True, exist_ok=True)
    all_stats = []
    with atomic_file(out / "removed.jsonl") as removed_tmp, open(removed_tmp, "w") as removed:
        for s, name in enumerate(names):
            with atomic_file(out / "kept" / f"{name}.jsonl") as kept_tmp, open(kept_tmp, "w") as kept:
                for shard in (sh for sh in shards if sh.source_index == s):
                    stats = json.loads((shard_dir(work, shard) / "stats.json").read_text())
                    mine = by_shard.get(shard.index, {})
                    _copy_shard(shard_dir(work, shard), mine, kept, removed, stats)
                    all_stats.append(stats)
    return all_stats


def _copy_shard(folder: Path, dups: dict[int, list], kept, removed, stats: dict) -> None:
    with open(folder / "removed.jsonl") as file:
        shutil.copyfileobj(file, removed)
    with open(folder / "kept.jsonl") as file:
        for local, line in enumerate(file):
            if local not in dups:
                kept.write(line)
                continue
            rule, keep_id, sim = dups[local]
            record = json.loads(line)
            _tally(stats["removed"], rule, record["text"])
            detail = f"duplicate of {keep_id} (Jaccard {sim})" if rule == "near_dedup" else f"duplicate of {keep_id}"
            row = {"id": record["id"], "source": record["source"], "rule": rule, "detail": detail}
            removed.write(json.dumps({**row, "text": record["text"]}, ensure_ascii=False) + "\n")
            if len(stats["examples"].setdefault(rule, [])) < EXAMPLES_PER_RULE:
                stats["examples"][rule].append({**row, "text": record["text"][:EXAMPLE_CHARS]})
            stats["kept"]["all"]["docs"] -= 1
            stats["kept"]["all"]["chars"] -= len(record["text"])
            stats["kept"]["all"]["words"] -= len(record["text"].split())


# --- the whole run -----------------------------------------------------------------------------------


def prepare(options: CurateOptions) -> tuple[list[Shard], Path]:
    """Plan the shards and check (or write) OUT/work/manifest.json."""
    shards = plan_shards(options.sources)
    work = Path(options.out) / WORK
    manifest = {
        "config": options.config.to_dict(),
        "read": {"text_field": options.read.text_field, "line_documents": options.read.line_documents},
        "shards": [s.to_dict() for s in shards],
    }
    path = work / "manifest.json"
    if path.is_file():
        old = read_json(path, f"remove {work} to start over")
        if old != json.loads(json.dumps(manifest)):
            what = "config" if old.get("config") != manifest["config"] else "sources or read options"
            raise LlmkitError(
                f"{options.out} holds a curation run with other {what}",
                "rerun with the same sources and --config to resume it, or choose another --out",
            )
    else:
        work.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(manifest, indent=1))
    return shards, work


def clear_leftovers(work: Path, shards: list[Shard]) -> None:
    """Remove what killed shard writes left (their temporary folders); only while no worker is running."""
    for shard in shards:
        for leftover in leftovers(shard_dir(work, shard)):
            shutil.rmtree(leftover, ignore_errors=True)


def run_filters(
    shards: list[Shard], options: CurateOptions, work: Path, progress: Callable[[int], None] | None = None
) -> None:
    """Stage 1 on every unfinished shard: in this process with one worker, else a pool of processes."""
    todo = [s for s in shards if not shard_dir(work, s).is_dir()]
    if progress is not None:
        progress(sum(s.size for s in shards if s not in todo))
    cfg, read = options.config, options.read
    if options.workers <= 1 or len(todo) <= 1:
        for shard in todo:
            filter_shard(shard, cfg, read, work, progress=progress)  # per document (characters ~ bytes)
        return
    context = multiprocessing.get_context("spawn")  # no inherited threads or locks
    with context.Pool(min(options.workers, len(todo))) as pool:
        for size in pool.imap_unordered(_run_filter, [(s, cfg, read, work) for s in todo]):
            if progress is not None:
                progress(size)


def curate(
    options: CurateOptions,
    progress: Callable[[int], None] | None = None,
    total: Callable[[int], None] | None = None,
) -> dict:
    """Run (or resume) the three stages; return the report (also written to OUT/report.json and funnel.png).
    ``total`` is told the bytes to read once the shards are planned, ``progress`` the bytes done as they are."""
    from llmkit.curate.report import build_report, write_report

    started = time.perf_counter()
    shards, work = prepare(options)
    clear_leftovers(work, shards)
    if total is not None:
        total(sum(s.size for s in shards))
    run_filters(shards, options, work, progress)
    dups = deduplicate(work, shards, options.config)
    stats = assemble(Path(options.out), shards, dups)
    report = build_report(stats, options, dups, seconds=time.perf_counter() - started)
    write_report(Path(options.out), report)
    return report
