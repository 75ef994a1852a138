"""The `llmkit` command: argparse subcommands, each a thin call into the library.

Each command lives in its own module with ``register(subparsers)``; heavy imports (torch) happen
inside the handlers so `llmkit --help` stays fast. An ``LlmkitError`` becomes one line on stderr
and exit code 2, as does a flag mistake (with the closest flag: llmkit/cli/_parsing.py). A reader that
goes away (`llmkit inspect M | head -6`) ends the command quietly. Every command takes ``--threads N``;
the thread policy (llmkit/threads.py) is decided and applied before the handler runs, so the
environment it sets reaches torch's import.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys

from llmkit import threads
from llmkit.cli._parsing import LlmkitParser, subparser_for, unknown_flags_message
from llmkit.errors import LlmkitError

COMMAND_MODULES = (
    "plan",
    "scale",
    "tokenizer",
    "data",
    "convert",
    "models",
    "inspect",
    "init",
    "manifest",
    "pretrain",
    "finetune",
    "predict",
    "generate",
    "chat",
    "tokenize",
    "embeddings",
    "attention",
    "prompt",
    "quantize",
    "lora",
    "serve",
    "embed",
    "index",
    "ask",
)
# commands that run long enough for a measured thread decision to be worth a line at the start
# (a count the user set, or torch's own, needs no explaining)
REPORT_THREADS = {"pretrain", "finetune", "scale"}


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
    for command in _all_subparsers(sub):
        add_threads_flag(command)
        if command.prog.split()[1] in LOADS_CHECKPOINTS and "--no-verify" not in command._option_string_actions:
            command.add_argument(
                "--no-verify", action="store_true",
                help="load checkpoints without checking their files against manifest.json's SHA-256 "
                "(default: checked, so a corrupted or edited file is an error)",
            )  # fmt: skip
    return parser


def _all_subparsers(sub: argparse._SubParsersAction) -> list[argparse.ArgumentParser]:
    """Every parser that runs a handler, nested groups included (`llmkit tokenizer train`)."""
    found = []
    for parser in dict.fromkeys(sub.choices.values()):  # aliases map to the same parser
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        found += [parser] if not nested else [p for group in nested for p in _all_subparsers(group)]
    return found


# commands that read llmkit checkpoints: each handler passes verify=not args.no_verify down to checkpoint.load
# (pretrain and finetune have their own --no-verify, for --resume)
LOADS_CHECKPOINTS = {"generate", "predict", "fill-mask", "serve", "eval", "prompt", "quantize", "convert", "tokenize",
                     "embeddings", "attention", "embed", "index", "ask", "chat", "lora"}  # fmt: skip


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
    argv = sys.argv[1:] if argv is None else list(argv)
    args, extras = parser.parse_known_args(argv)
    if extras:
        command = subparser_for(parser, argv)
        command.error(unknown_flags_message(command, extras))
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    try:
        apply_threads(args)
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


def program() -> int:
    """The `llmkit` command and `python -m llmkit`: ``main()`` on the process's own arguments, then the
    interpreter's exit made short. Python's exit runs full garbage collections over every object the
    command left (torch's and matplotlib's modules, the model): 0.3-2 s after a fine-tuning run, which
    the user waits for. Frozen objects (``gc.freeze``) are skipped by those collections; the process
    ends right after, and atexit handlers and the flush of the standard streams still run."""
    code = main()
    gc.freeze()
    return code
