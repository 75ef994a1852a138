"""`llmkit tokenizer train|encode`: train a GPT-2, BERT or T5 style tokenizer; look at how text splits."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Iterator

from llmkit.errors import LlmkitError

# Characters kept aside during training to measure tokens per character without a second pass.
_SAMPLE_CHARS = 1_000_000

_TRAIN_DESCRIPTION = """\
Train a tokenizer with Hugging Face `tokenizers` and save it as a directory that both llmkit and
transformers load (tokenizer.json + tokenizer_config.json).

Kinds:
  bpe        GPT-2: byte-level BPE, lossless on any text (no unknown tokens);
             <|endoftext|> is bos/eos, <|pad|> is pad. For decoder-only models.
  wordpiece  BERT: lowercased, ## continuations; [PAD]=0 [UNK] [CLS] [SEP] [MASK];
             encoding wraps text as [CLS] ... [SEP]. For encoder (masked LM) models.
  unigram    T5: SentencePiece-style unigram; <pad>=0 </s>=1 <unk>=2 and 100 sentinels
             <extra_id_0>.. at the top ids; encoding appends </s>. For encoder-decoder models.

Input: text files and folders (folders: every .txt and .md file, recursively) and/or a corpus
that ships with Python (--builtin python-docs: ~0.5 MB of docs; python-stdlib: ~11 MB of code).
"""

_TRAIN_EPILOG = """\
examples:
  llmkit tokenizer train --builtin python-docs --kind bpe --vocab-size 4096 --out tok/
  llmkit tokenizer train corpus/ notes.txt --kind wordpiece --vocab-size 16000 --out bert-tok/
  llmkit tokenizer encode tok/ "Hello, world!"
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add `tokenizer` with its `train` and `encode` subcommands."""
    parser = sub.add_parser(
        "tokenizer",
        help="train a tokenizer, or encode text with one",
        description="Train a GPT-2 (bpe), BERT (wordpiece) or T5 (unigram) tokenizer on your text or on a corpus "
        "that ships with Python, or show how a saved tokenizer splits a text. "
        "Run `llmkit tokenizer train --help` for details.",
    )
    parser.set_defaults(handler=lambda args: parser.print_help())
    commands = parser.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND")

    train = commands.add_parser(
        "train",
        help="train a BPE (GPT-2), WordPiece (BERT) or Unigram (T5) tokenizer",
        description=_TRAIN_DESCRIPTION,
        epilog=_TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("paths", nargs="*", metavar="PATH", help="text files or folders of .txt/.md files")
    train.add_argument(
        "--builtin",
        action="append",
        choices=("python-docs", "python-stdlib"),
        help="add a corpus that ships with Python; repeat to add both (default: none)",
    )
    train.add_argument("--kind", choices=("bpe", "wordpiece", "unigram"), default="bpe", help="default: %(default)s")
    train.add_argument(
        "--vocab-size",
        type=int,
        default=8192,
        metavar="N",
        help="total ids, special tokens and sentinels included (default: %(default)s); a multiple of 64 keeps "
        "embedding matrices GPU-friendly",
    )
    train.add_argument(
        "--min-frequency",
        type=int,
        default=2,
        metavar="N",
        help="bpe/wordpiece: merge only pairs seen at least N times (default: %(default)s; unused by unigram)",
    )
    train.add_argument(
        "--sentinels", type=int, default=100, metavar="N", help="unigram: number of <extra_id_i> tokens (default: 100)"
    )
    train.add_argument("--out", required=True, metavar="DIR", help="directory to write (created if missing)")
    train.set_defaults(handler=_train)

    encode = commands.add_parser(
        "encode",
        help="show the tokens and ids of a text",
        description="Encode TEXT with the tokenizer in DIR (an llmkit checkpoint, or an llmkit or Hugging Face "
        "tokenizer directory) and print its tokens and ids. `llmkit tokenize` shows byte spans and counts too.",
    )
    encode.add_argument(
        "dir",
        metavar="DIR",
        help="checkpoint or tokenizer directory with tokenizer.json (or vocab.json+merges.txt, vocab.txt)",
    )
    encode.add_argument("text", metavar="TEXT", help="text to encode")
    encode.add_argument("--no-special", action="store_true", help="do not add [CLS]/[SEP], </s> and the like")
    encode.set_defaults(handler=_encode)


class _Counter:
    """Pass texts through while counting them and keeping the first ~1 MB as a sample."""

    def __init__(self, texts: Iterable[str]) -> None:
        self.texts, self.n_texts, self.n_chars, self.sample = texts, 0, 0, []

    def __iter__(self) -> Iterator[str]:
        for text in self.texts:
            self.n_texts += 1
            self.n_chars += len(text)
            if self.n_chars - len(text) < _SAMPLE_CHARS:
                self.sample.append(text)
            yield text


def _train(args: argparse.Namespace) -> None:
    import itertools
    from pathlib import Path

    from llmkit.data.builtin import BUILTIN_CORPORA
    from llmkit.data.tokenizer_train import iter_text_files, train_tokenizer

    if not args.paths and not args.builtin:
        raise LlmkitError("no training text given", "pass text files/folders, or --builtin python-docs")
    # Check the output path before a long training run, not after it.
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise LlmkitError(f"--out {out} exists and is not a directory", "choose a directory path")
    sources = [iter_text_files(args.paths)] if args.paths else []
    sources += [BUILTIN_CORPORA[name]() for name in dict.fromkeys(args.builtin or [])]
    texts = _Counter(itertools.chain.from_iterable(sources))

    start = time.perf_counter()
    tokenizer = train_tokenizer(
        texts,
        args.kind,
        args.vocab_size,
        args.min_frequency,
        n_sentinels=args.sentinels,
        show_progress=sys.stderr.isatty(),  # tokenizers' bars print blank lines into a pipe or a log
    )
    seconds = time.perf_counter() - start
    if texts.n_chars == 0:
        raise LlmkitError("the training text is empty", "check the input files")
    tokenizer.save(out)

    sample_chars = sum(map(len, texts.sample))
    sample_tokens = sum(map(len, tokenizer.encode_batch(texts.sample, add_special_tokens=False)))
    sampled = "" if sample_chars == texts.n_chars else f" (first {sample_chars:,} chars)"
    print(
        f"trained {args.kind} tokenizer: vocab {tokenizer.vocab_size:,}, {_count(texts.n_texts, 'text')}, "
        f"{_count(texts.n_chars, 'char')}, {seconds:.1f} s, "
        f"{sample_tokens / sample_chars:.3f} tokens/char{sampled} -> {out}"
    )


def _encode(args: argparse.Namespace) -> None:
    from llmkit.cli._viz import load_tokenizer
    from llmkit.viz.tokens import token_spans

    # the same tokenizer loading and encoding as `llmkit tokenize`, which adds byte spans and counts
    tokenizer, _ = load_tokenizer(args.dir)
    spans = token_spans(tokenizer, args.text, add_special_tokens=not args.no_special)
    print(f"tokens: {[s.piece for s in spans]}")
    print(f"ids:    {[s.id for s in spans]}")
    print(f"{len(spans)} tokens, {len(args.text)} chars")


def _count(n: int, noun: str) -> str:
    """``1 text``, ``2 texts``, ``1,024 chars``."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")
