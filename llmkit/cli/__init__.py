"""The `llmkit` command: argparse subcommands, each a thin call into the library.

Each command lives in its own module with ``register(subparsers)``; heavy imports (torch) happen
inside the handlers so `llmkit --help` stays fast. An ``LlmkitError`` becomes one line on stderr
and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    try:
        args.handler(args)
    except LlmkitError as err:
        print(f"llmkit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
