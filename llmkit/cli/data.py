"""`llmkit data`: curate raw text; tokenize text into train/val token shards; corpus statistics under a tokenizer;
list the shipped data sets and get their upstream."""

from __future__ import annotations

import argparse

from llmkit.cli._options import tokenizer_dir

_TOKENIZE_DESCRIPTION = """\
Tokenize text into a data directory for `llmkit pretrain` (its --train.data):
train.bin and val.bin (raw little-endian token ids: uint16 when the vocabulary has at most 65,535
ids, else uint32), meta.json (counts, sources, weights, special ids, tokenizer hash) and a copy
of the tokenizer. Sources are streamed, so corpora larger than memory work; the directory is
written under a temporary name and renamed into place when complete.

Sources (SOURCE[:WEIGHT]):
  FILE.txt / FILE.md    one document per file (--line-docs: one per line); .gz is read too
  FOLDER                every .txt and .md file in it, recursively, one document each
  FILE.jsonl            one document per line, from the field --text-field (default: text)
  builtin:python-docs   ~0.5 MB of English docs that ship with Python
  builtin:python-stdlib ~11 MB of Python source that ships with Python

Every document is encoded without special tokens and ended with a separator (the tokenizer's
eos token, else its sep token); empty documents are skipped. Documents are cut into pieces of
~16k characters at spaces (which leaves the ids unchanged) and each piece goes to val with
probability --val-fraction, decided by a hash of the seed, the document's name (its path inside
the folder, its line number) and the piece: the same every run, wherever the corpus lies.
Byte-level BPE (GPT-2 style, `llmkit tokenizer train --kind bpe`) is encoded by tiktoken's
engine, checked to give the same ids as `tokenizers`; other tokenizers use `tokenizers`.

"""

# The rule of llmkit.data.shards.tokenize_corpus, kept here so `--help` imports no torch.
_MIXING_HELP = """\
Mixing. With weights (SOURCE:WEIGHT on every source; they are normalized to sum to 1) the train
split holds T tokens, T = --max-tokens or else the sum of the sources' train tokens, and source i
contributes weight_i * T of them: a source with fewer tokens is repeated (upsampled: whole passes
plus a part), one with more is cut (its first documents are used; with --max-tokens it is not
read further). Blocks of whole documents are interleaved, so every stretch of train.bin holds the
mixture (a document longer than 256k tokens is cut, each part ended by a separator). The val
split mixes the sources' val tokens by the same weights over their own total. Without weights
every source is used once, in full (with --max-tokens: in the order given, up to the cap).
The summary gives each source's actual share and how many times it was used (x epochs).
"""

_TOKENIZE_EPILOG = """\
examples:
  llmkit data tokenize builtin:python-docs --tokenizer runs/tok --out runs/data
  llmkit data tokenize domain.txt:0.51 builtin:python-docs:0.49 --tokenizer runs/tok --out runs/data
  llmkit data tokenize notes/ chats.jsonl --text-field content --tokenizer runs/tok --out runs/data
  llmkit data tokenize corpus.txt.gz --line-docs --max-tokens 50000000 --tokenizer runs/tok --out runs/data
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add `data` with its `tokenize`, `list` and `get` subcommands."""
    parser = sub.add_parser(
        "data",
        help="token shards for pretraining; the shipped data sets and their upstream files",
        description="Prepare data for training, and see or fetch the data sets shipped under data/. "
        "Run `llmkit data SUBCOMMAND --help` for details.",
    )
    parser.set_defaults(handler=lambda args: parser.print_help())
    commands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    tokenize = commands.add_parser(
        "tokenize",
        help="tokenize text files, folders, .jsonl and built-in corpora into train/val shards",
        description=_TOKENIZE_DESCRIPTION + _MIXING_HELP,
        epilog=_TOKENIZE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tokenize.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE[:WEIGHT]",
        help="a file, folder, .jsonl or builtin:NAME, optionally with a mixing weight (all or none weighted)",
    )
    tokenize.add_argument("--tokenizer", required=True, metavar="DIR", type=tokenizer_dir,
                          help="tokenizer directory (or its tokenizer.json)")  # fmt: skip
    tokenize.add_argument("--out", required=True, metavar="DIR", help="data directory to write (replaced if it is one)")
    tokenize.add_argument(
        "--val-fraction",
        type=float,
        default=0.05,
        metavar="F",
        help="probability that a piece of a document goes to val (default: %(default)s)",
    )
    tokenize.add_argument(
        "--text-field", default="text", metavar="NAME", help=".jsonl: the field with the text (default: %(default)s)"
    )
    tokenize.add_argument(
        "--line-docs", action="store_true", help=".txt/.md: every non-empty line is a document (default: every file)"
    )
    tokenize.add_argument(
        "--max-tokens",
        type=int,
        metavar="N",
        help="train tokens to write (default: all); with weights, the total they divide",
    )
    tokenize.add_argument("--seed", type=int, default=0, help="seed of the train/val split (default: %(default)s)")
    tokenize.set_defaults(handler=_tokenize)
    _register_curate(commands)
    _register_stats(commands)
    _register_catalog(commands)


_CURATE_DESCRIPTION = """\
Clean raw text for pretraining (docs/curation.md). Every document goes through, in order:
normalization (Unicode NFC, whitespace), mojibake, language identification (py3langid), Gopher's
repetition and quality rules, C4's line and page rules, a harmful-content word list; the first rule
that fails removes it. What is kept has e-mail addresses, phone numbers and IP addresses redacted,
then exact duplicates and near duplicates (MinHash + LSH, checked by exact Jaccard) are removed
across all sources together, keeping the first in the order given. Every rule can be switched off
and its thresholds set in --config FILE.toml (defaults: the published ones; --print-config shows them).

Writes into OUT: kept/NN-SOURCE.jsonl per source ({"text", "id", "source"}, for `llmkit data
tokenize`, which mixes them by weight), removed.jsonl (each removed document with its rule),
report.json and funnel.png. The work is sharded by input file (a folder's files in groups of 256)
over --workers processes; OUT/work/ keeps finished shards, so the same command resumes a killed run
and gives the same output as an uninterrupted one, whatever the worker count.
"""

_CURATE_EPILOG = """\
examples:
  llmkit data curate raw/ --out runs/curated
  llmkit data curate crawl-*.jsonl --config configs/curate.toml --workers 4 --out runs/curated
  llmkit data curate data/domain/medical_medquad/medquad.txt.gz --line-docs --out runs/medquad
  llmkit data tokenize runs/curated/kept/00-crawl.jsonl --tokenizer runs/tok --out runs/data
  llmkit data curate --print-config > curate.toml
"""


def _register_curate(commands: argparse._SubParsersAction) -> None:
    curate = commands.add_parser(
        "curate",
        help="quality filters, language id, PII redaction, exact and near dedup: raw text -> kept JSONL + report",
        description=_CURATE_DESCRIPTION,
        epilog=_CURATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    curate.add_argument(
        "sources", nargs="*", metavar="SOURCE", help="text files, folders, .jsonl files or builtin:NAME"
    )
    curate.add_argument("--out", metavar="DIR", help="output directory (a run there with the same settings resumes)")
    curate.add_argument(
        "--config", metavar="FILE.toml", help="rule switches and thresholds (default: the published ones)"
    )
    curate.add_argument(
        "--workers", type=int, metavar="N", help="processes, one shard (input file) each at a time (default: all cores)"
    )
    curate.add_argument(
        "--executor",
        choices=("local", "datatrove"),
        default="local",
        help="local: llmkit's process pool; datatrove: the same stages on datatrove's LocalPipelineExecutor "
        "(docs/curation.md shows its Slurm launch) (default: %(default)s)",
    )
    curate.add_argument("--text-field", default="text", metavar="NAME", help=".jsonl: the text field (default: text)")
    curate.add_argument("--line-docs", action="store_true", help=".txt/.md: every non-empty line is a document")
    curate.add_argument("--print-config", action="store_true", help="print the default config as TOML and exit")
    curate.set_defaults(handler=_curate)


def _register_stats(commands: argparse._SubParsersAction) -> None:
    stats = commands.add_parser(
        "stats",
        help="tokens per word and the most-split words of a corpus under a tokenizer",
        description="How a tokenizer splits a corpus: documents, words, tokens, tokens per word, and the "
        "frequent words it splits into the most pieces (each word counted as it appears mid-sentence, "
        "after a space). A general tokenizer spends more tokens per word on domain text; this shows where.",
        epilog="example:\n  llmkit data stats data/domain/medical_medquad/medquad.txt.gz --line-docs "
        "--tokenizer runs/tok",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stats.add_argument("corpus", metavar="CORPUS", help="a text file, folder, .jsonl file or builtin:NAME")
    stats.add_argument("--tokenizer", required=True, metavar="DIR", type=tokenizer_dir,
                       help="tokenizer directory (or its tokenizer.json)")  # fmt: skip
    stats.add_argument("--top", type=int, default=20, metavar="N", help="most-split words to list (default: 20)")
    stats.add_argument("--min-count", type=int, default=5, metavar="N",
                       help="only words seen at least N times (default: 5)")  # fmt: skip
    stats.add_argument("--max-docs", type=int, default=0, metavar="N", help="read at most N documents (default: all)")
    stats.add_argument("--text-field", default="text", metavar="NAME", help=".jsonl: the text field (default: text)")
    stats.add_argument("--line-docs", action="store_true", help=".txt/.md: every non-empty line is a document")
    stats.add_argument("--json", action="store_true", help="print the figures as JSON")
    stats.set_defaults(handler=_stats)


def _curate(args: argparse.Namespace) -> None:
    import os
    from pathlib import Path

    from tqdm import tqdm

    from llmkit.curate.config import CurateConfig, to_toml
    from llmkit.curate.pipeline import CurateOptions, curate
    from llmkit.curate.report import render
    from llmkit.curate.shards import ReadOptions
    from llmkit.errors import LlmkitError

    config = CurateConfig.from_toml(args.config) if args.config else CurateConfig()
    if args.print_config:
        print(to_toml(config), end="")
        return
    if not args.sources or not args.out:
        raise LlmkitError("curate needs SOURCE... and --out DIR", "e.g. llmkit data curate raw/ --out runs/curated")
    workers = args.workers or len(os.sched_getaffinity(0))
    if workers < 1:
        raise LlmkitError(f"--workers must be at least 1, got {workers}", "e.g. --workers 2")
    read = ReadOptions(text_field=args.text_field, line_documents=args.line_docs)
    options = CurateOptions(list(args.sources), Path(args.out), config, workers, read)
    if args.executor == "datatrove":
        from llmkit.curate.executors import curate_with_datatrove

        report = curate_with_datatrove(options)
    else:
        with tqdm(unit="B", unit_scale=True, desc="curating", smoothing=0.1) as bar:
            report = curate(options, progress=bar.update, total=lambda n: setattr(bar, "total", n))
    print(render(report, Path(args.out)))


def _stats(args: argparse.Namespace) -> None:
    import json

    from llmkit.curate.stats import corpus_stats
    from llmkit.data.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_hf_dir(args.tokenizer)
    stats = corpus_stats(args.corpus, tokenizer, args.text_field, args.line_docs, args.max_docs)
    if args.json:
        print(json.dumps(stats.to_dict(args.top, args.min_count), indent=2, ensure_ascii=False))
        return
    print(
        f"{args.corpus}: {stats.documents:,} documents, {stats.words:,} words, {stats.tokens:,} tokens: "
        f"{stats.tokens_per_word:.3f} tokens per word ({len(stats.counts):,} distinct words)"
    )
    rows = stats.most_split(args.top, args.min_count)
    if rows:
        print(f"most-split words (seen at least {args.min_count} times):")
        print(f"  {'word':<32}{'pieces':>7}{'count':>9}")
        for word, pieces, count in rows:
            print(f"  {word:<32}{pieces:>7}{count:>9,}")


def _register_catalog(commands: argparse._SubParsersAction) -> None:
    listing = commands.add_parser(
        "list",
        help="the data sets shipped under data/: task, size, records, license",
        description="The data sets shipped under data/ (each folder has a SOURCE.md: origin, license, "
        "citation, changes). Non-commercial and unclear licenses are marked and explained below the table.",
    )
    listing.add_argument("--json", action="store_true", help="print the catalog as JSON, with upstream URLs and pins")
    listing.set_defaults(handler=_list)

    get = commands.add_parser(
        "get",
        help="download a data set's full upstream files, checked against pinned hashes",
        description="Download the upstream files a shipped data set was made from, at the pinned commit, "
        "each checked against its recorded SHA-256 and git blob SHA-1 and renamed into place only when "
        "both match. An interrupted download leaves NAME.part; the same command resumes it with an HTTP "
        "Range request. Sets whose upstream is a whole repository print the clone command instead.",
    )
    get.add_argument("name", metavar="NAME", help="a data set from `llmkit data list`")
    get.add_argument("--out", metavar="DIR", help="where to save the files (default: data/upstream/NAME)")
    get.add_argument(
        "--mirror",
        metavar="BASE_URL",
        help="fetch BASE_URL/OWNER/REPO/COMMIT/PATH instead of raw.githubusercontent.com (same layout)",
    )
    get.set_defaults(handler=_get)


def _tokenize(args: argparse.Namespace) -> None:
    from llmkit.data.shards import tokenize_corpus
    from llmkit.data.sources import parse_source
    from llmkit.data.tokenizer import Tokenizer

    sources = [parse_source(spec) for spec in args.sources]
    tokenizer = Tokenizer.from_hf_dir(args.tokenizer)
    summary = tokenize_corpus(
        sources,
        tokenizer,
        args.out,
        val_fraction=args.val_fraction,
        seed=args.seed,
        text_field=args.text_field,
        line_documents=args.line_docs,
        max_tokens=args.max_tokens,
    )
    print(format_summary(summary))


def format_summary(summary: dict) -> str:
    """One line of figures: tokens per split, each source's train share and epochs, speed, engine."""
    tokens = summary["tokens"]
    shares = ", ".join(
        f"{s['source']} {s['train']['share']:.1%} (x{s['train']['epochs']:.2f})" for s in summary["sources"]
    )
    return (
        f"tokenized {summary['bytes'] / 1e6:,.1f} MB in {summary['seconds']:.1f} s ({summary['mb_per_s']:.1f} MB/s, "
        f"{summary['engine']}): train {tokens['train']:,} tokens, val {tokens['val']:,} tokens "
        f"({summary['dtype']}); train shares: {shares} -> {summary['out']}"
    )


def _list(args: argparse.Namespace) -> None:
    import json

    from llmkit.data.catalog import DATASETS, describe, format_table

    print(json.dumps([describe(d) for d in DATASETS], indent=2) if args.json else format_table())


def _get(args: argparse.Namespace) -> None:
    from functools import partial
    from pathlib import Path

    from tqdm import tqdm

    from llmkit.data.catalog import DATA_DIR, RAW_BASE, UpstreamRepo, get_dataset
    from llmkit.data.download import download_dataset

    dataset = get_dataset(args.name)
    if isinstance(dataset.upstream, UpstreamRepo):
        repo = dataset.upstream
        print(f"{dataset.name}: upstream is the whole repository {repo.repo} at {repo.commit}: {repo.clone_command()}")
        return
    out = Path(args.out) if args.out else DATA_DIR / "upstream" / dataset.name
    bar = partial(tqdm, unit="B", unit_scale=True, unit_divisor=1024, leave=False)
    fetched = download_dataset(dataset, out, args.mirror or RAW_BASE, bar)
    reused = sum(f.reused for f in fetched)
    print(
        f"{dataset.name}: {len(fetched)} files, {sum(f.size for f in fetched) / 1e6:.1f} MB "
        f"({reused} already there), SHA-256 and git blob SHA-1 verified -> {out}"
    )
