"""`llmkit data tokenize`: text files, folders, .jsonl and built-in corpora -> train/val token shards."""

from __future__ import annotations

import argparse

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
    """Add `data` with its `tokenize` subcommand."""
    parser = sub.add_parser(
        "data",
        help="turn text into token shards for pretraining",
        description="Prepare data for training. Run `llmkit data tokenize --help` for details.",
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
    tokenize.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer directory (tokenizer.json)")
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
