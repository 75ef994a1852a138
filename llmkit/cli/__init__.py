"""The `llmkit` command: argparse subcommands, each a thin call into the library.

Each command lives in its own module with ``register(subparsers)``; heavy imports (torch) happen
inside the handlers so `llmkit --help` stays fast. An ``LlmkitError`` becomes one line on stderr
and exit code 2. Every command takes ``--threads N``; the thread policy (llmkit/threads.py) is
decided and applied before the handler runs, so the environment it sets reaches torch's import.
"""

from __future__ import annotations

import argparse
import os
import sys

from llmkit import threads
from llmkit.errors import LlmkitError

COMMAND_MODULES = (
    "plan",
    "tokenizer",
    "data",
    "convert",
    "models",
    "inspect",
    "init",
    "pretrain",
    "generate",
    "tokenize",
    "embeddings",
    "attention",
    "prompt",
    "quantize",
    "serve",
)
# commands that run long enough for a measured thread decision to be worth a line at the start
# (a count the user set, or torch's own, needs no explaining)
REPORT_THREADS = {"pretrain"}


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="llmkit",
        description="llmkit: plan, curate, pretrain, generate, evaluate, fine-tune, quantize and serve "
        "transformer language models (decoder-only, encoder-only, encoder-decoder).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"llmkit.cli.{name}").register(sub)
    for command in _all_subparsers(sub):
        add_threads_flag(command)
    return parser


def _all_subparsers(sub: argparse._SubParsersAction) -> list[argparse.ArgumentParser]:
    """Every parser that runs a handler, nested groups included (`llmkit tokenizer train`)."""
    found = []
    for parser in dict.fromkeys(sub.choices.values()):  # aliases map to the same parser
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        found += [parser] if not nested else [p for group in nested for p in _all_subparsers(group)]
    return found


def add_threads_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", metavar="N", default=None,
        help=f"CPU threads for torch (default: {threads.ENV_THREADS}, then OMP_NUM_THREADS, then the cores "
        "this process may use minus those other processes keep busy)",
    )  # fmt: skip


def apply_threads(args: argparse.Namespace) -> threads.Threads:
    """Decide the thread count (llmkit.threads.decide) and apply it before the handler imports torch."""
    decision = threads.decide(getattr(args, "threads", None))
    threads.apply(decision)
    measured = decision.source in ("measured", "torchrun")
    if measured and args.command in REPORT_THREADS and os.environ.get("RANK", "0") == "0":
        print(decision.describe(), file=sys.stderr, flush=True)
    return decision


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    try:
        apply_threads(args)
        args.handler(args)
    except LlmkitError as err:
        print(f"llmkit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
