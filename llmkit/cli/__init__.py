"""The `llmkit` command: argparse subcommands, each a thin call into the library.

Each command lives in its own module with ``register(subparsers)``; heavy imports (torch) happen
inside the handlers so `llmkit --help` stays fast. An ``LlmkitError`` becomes one line on stderr
and exit code 2, as does a flag mistake (with the closest flag: llmkit/cli/_parsing.py). A reader that
goes away (`llmkit inspect M | head -6`) ends the command quietly.
"""

from __future__ import annotations

import argparse
import os
import sys

from llmkit.cli._parsing import LlmkitParser, subparser_for, unknown_flags_message
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
    from importlib.metadata import PackageNotFoundError, version

    parser = LlmkitParser(
        prog="llmkit",
        description="llmkit: plan, curate, pretrain, generate, evaluate, fine-tune, quantize and serve "
        "transformer language models (decoder-only, encoder-only, encoder-decoder).",
    )
    try:
        release = version("llmkit")
    except PackageNotFoundError:  # running from a source tree that was never installed
        from llmkit import __version__ as release
    parser.add_argument("--version", action="version", version=f"llmkit {release}", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"llmkit.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args, extras = parser.parse_known_args(argv)
    if extras:
        command = subparser_for(parser, argv)
        command.error(unknown_flags_message(command, extras))
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    try:
        args.handler(args)
        sys.stdout.flush()  # here, so a closed pipe is caught below and not at interpreter exit
    except BrokenPipeError:
        # the reader went away (`| head`): stop quietly; stdout goes to devnull so the exit flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except LlmkitError as err:
        print(f"llmkit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
