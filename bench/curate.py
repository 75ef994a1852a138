"""`llmkit data curate` against datatrove on the same raw corpus: MB/s, and agreement of the kept documents.

    .venv/bin/python bench/curate.py [--clean 1500] [--seed 0] [--repeats 3] [--keep runs/bench-curate]

The input is bench/raw_corpus.py's seeded raw corpus (data/ + generated web noise, 8 .jsonl files).
One run, alternating (A B B A ... per --repeats):

- llmkit, all rules on (its defaults), 1 worker and 2 workers: MB/s of the whole command (read, rules,
  dedup, writing the outputs and the report);
- llmkit "matched": only the rules datatrove has here (Gopher repetition, Gopher quality, C4, MinHash
  near dedup; no normalization, language, mojibake, word list, PII or exact dedup), with datatrove's
  reading of Gopher's "80% of words have a letter" (punctuation tokens count as words:
  ``gopher_quality.alpha_words = "tokens"``; llmkit's default counts whitespace-separated words), 1 and 2 workers;
- datatrove 0.10.1, its equivalent pipeline on LocalPipelineExecutor, 1 and 2 workers:
  JsonlReader -> GopherRepetitionFilter -> GopherQualityFilter -> C4QualityFilter -> JsonlWriter, then
  its four MinHash stages (signatures, buckets, clusters, filter) with the same shingles (word 1-grams)
  and the same banding as llmkit's LSH (16 bands of 8 rows). datatrove's default word tokenizer for
  English is spaCy, which is not installed here: both sides split words with the same regular expression
  (llmkit.curate.text), so the comparison is of the rules and dedup, not of tokenizers.

Agreement = documents both keep or both remove, over all raw documents (matched llmkit vs datatrove),
with the documents on which they differ counted by the rule that removed them on the llmkit side.
Figures go to docs/benchmarks.md only from a quiet machine (load average under 2 on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import raw_corpus  # noqa: E402

from llmkit.curate.config import CurateConfig  # noqa: E402
from llmkit.curate.pipeline import CurateOptions, curate  # noqa: E402
from llmkit.curate.text import sentences, words  # noqa: E402


def matched_config() -> CurateConfig:
    cfg = CurateConfig()
    for name in ("normalize", "encoding", "language", "harmful", "pii", "exact_dedup"):
        getattr(cfg, name).enabled = False
    cfg.gopher_quality.alpha_words = "tokens"  # datatrove's reading of Gopher's alphabetic-words rule
    return cfg


def run_llmkit(raw: Path, out: Path, cfg: CurateConfig, workers: int) -> tuple[float, set[str], dict]:
    """Seconds, the kept raw ids, and the removal rule of each removed raw id."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    curate(CurateOptions([str(raw)], out, cfg, workers=workers))
    seconds = time.perf_counter() - start
    ids = _raw_ids(raw)
    kept = {ids[json.loads(line)["id"]] for path in (out / "kept").glob("*.jsonl") for line in path.open()}
    removed = {ids[r["id"]]: r["rule"] for r in map(json.loads, (out / "removed.jsonl").open())}
    return seconds, kept, removed


def _raw_ids(raw: Path) -> dict[str, str]:
    """llmkit's document keys (file:line) -> the raw records' ids."""
    out = {}
    for path in sorted(raw.glob("raw-*.jsonl")):
        for n, line in enumerate(path.open(), 1):
            out[f"{path.name}:{n}"] = json.loads(line)["id"]
    return out


def _word_tokenizer():
    from datatrove.utils.word_tokenizers import WordTokenizer

    class RegexTokenizer(WordTokenizer):
        """llmkit's word and sentence splitting, for datatrove's filters (spaCy is not installed)."""

        def word_tokenize(self, text: str) -> list[str]:
            return words(text)

        def sent_tokenize(self, text: str) -> list[str]:
            return sentences(text)

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            spans, start = [], 0
            for sentence in sentences(text):
                start = text.index(sentence, start)
                spans.append((start, start + len(sentence)))
                start += len(sentence)
            return spans

    return RegexTokenizer("en")


def _xxhash_strings() -> None:
    """datatrove 0.10.1 hashes str with xxhash, which xxhash 4 (the lock's, for `datasets`) refuses; datatrove asks
    for xxhash<4. Encoding first gives xxhash 3's value (it hashed a str's UTF-8 bytes) at the same speed."""
    import xxhash
    from datatrove.utils.hashes import xxhash as shim

    shim.xxhash32 = lambda data: xxhash.xxh32_intdigest(data.encode() if isinstance(data, str) else data)
    shim.xxhash64 = lambda data: xxhash.xxh64_intdigest(data.encode() if isinstance(data, str) else data)


def run_datatrove(raw: Path, work: Path, workers: int) -> tuple[float, set[str]]:
    """Seconds and the kept raw ids of datatrove's Gopher + C4 + MinHash pipeline."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    _xxhash_strings()
    shutil.rmtree(work, ignore_errors=True)
    tok = _word_tokenizer()
    files = len(list(raw.glob("raw-*.jsonl")))
    minhash = MinhashConfig(n_grams=1, num_buckets=16, hashes_per_bucket=8, seed=1)
    logs = work / "logs"

    def executor(pipeline, tasks, name, depends=None):
        return LocalPipelineExecutor(
            pipeline,
            tasks=tasks,
            workers=min(workers, tasks),
            logging_dir=str(logs / name),
            depends=depends,
            start_method="fork",  # the workers inherit _xxhash_strings' patch
        )

    filtered = executor(
        [
            JsonlReader(str(raw), glob_pattern="raw-*.jsonl"),
            GopherRepetitionFilter(language=tok),
            GopherQualityFilter(language=tok),
            C4QualityFilter(language=tok),
            JsonlWriter(str(work / "filtered"), compression=None),
        ],
        files,
        "filter",
    )
    sigs = executor(
        [
            JsonlReader(str(work / "filtered")),
            MinhashDedupSignature(str(work / "sigs"), config=minhash, language=tok),
        ],
        files,
        "sigs",
        filtered,
    )
    buckets = executor(
        [MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=minhash)],
        minhash.num_buckets,
        "buckets",
        sigs,
    )
    clusters = executor(
        [MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=minhash)], 1, "clusters", buckets
    )
    final = executor(
        [
            JsonlReader(str(work / "filtered")),
            MinhashDedupFilter(str(work / "remove")),
            JsonlWriter(str(work / "kept"), compression=None),
        ],
        files,
        "dedup",
        clusters,
    )
    start = time.perf_counter()
    final.run()
    seconds = time.perf_counter() - start
    kept = {json.loads(line)["id"] for path in (work / "kept").glob("*.jsonl") for line in path.open()}
    return seconds, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clean", type=int, default=1500, help="clean documents in the raw corpus")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each configuration, interleaved")
    parser.add_argument("--keep", type=Path, help="keep the raw corpus and outputs here (default: a temp dir)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-curate-"))
    raw = root / "raw"
    records = raw_corpus.build(args.clean, args.seed)
    shutil.rmtree(raw, ignore_errors=True)
    raw_corpus.write(records, raw, shards=8)
    size = sum(p.stat().st_size for p in raw.glob("raw-*.jsonl"))
    print(
        f"raw corpus: {len(records):,} documents, {size / 1e6:.2f} MB in 8 files; load average {os.getloadavg()[0]:.2f}"
    )

    times: dict[str, list[float]] = {}
    results = {}
    order = ["llmkit all", "llmkit matched", "datatrove"]
    for r in range(args.repeats):
        for name in order if r % 2 == 0 else order[::-1]:
            for workers in (1, 2):
                key = f"{name}, {workers} worker{'s' if workers > 1 else ''}"
                out = root / key.replace(" ", "_").replace(",", "")
                if name == "datatrove":
                    seconds, kept = run_datatrove(raw, out, workers)
                    removed = {}
                else:
                    cfg = CurateConfig() if name == "llmkit all" else matched_config()
                    seconds, kept, removed = run_llmkit(raw, out, cfg, workers)
                times.setdefault(key, []).append(seconds)
                results[key] = (kept, removed)
    print(f"\n{'configuration':<32}{'MB/s (median)':>14}{'range':>18}{'kept docs':>11}")
    for key, values in times.items():
        speeds = sorted(size / 1e6 / s for s in values)
        print(
            f"{key:<32}{statistics.median(speeds):>14.3f}{f'{speeds[0]:.3f}-{speeds[-1]:.3f}':>18}"
            f"{len(results[key][0]):>11,}"
        )
    ids = [r["id"] for r in records]
    ours, rules = results["llmkit matched, 1 worker"]
    theirs = results["datatrove, 1 worker"][0]
    agree = sum((i in ours) == (i in theirs) for i in ids) / len(ids)
    print(f"\nagreement of kept documents, llmkit matched vs datatrove: {agree:.2%} of {len(ids):,} raw documents")
    only_ours = sorted(ours - theirs)
    only_theirs = sorted(theirs - ours)
    by_rule: dict[str, int] = {}
    for i in only_theirs:
        by_rule[rules.get(i, "?")] = by_rule.get(rules.get(i, "?"), 0) + 1
    print(f"  kept by llmkit only: {len(only_ours)}; kept by datatrove only: {len(only_theirs)}", end="")
    print(" (llmkit's removing rule: " + ", ".join(f"{k} {v}" for k, v in sorted(by_rule.items())) + ")")
    for workers in (1, 2):
        same = (
            results[f"llmkit all, {workers} worker{'s' if workers > 1 else ''}"][0]
            == results["llmkit all, 1 worker"][0]
        )
        print(f"  llmkit all rules, {workers} worker(s): same kept set as 1 worker: {same}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
