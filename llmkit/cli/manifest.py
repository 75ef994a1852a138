"""`llmkit manifest`: check a checkpoint's files against manifest.json, or record them in a new one."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "manifest",
        help="check a checkpoint's files against manifest.json, or write one (older or edited checkpoints)",
        description="Every llmkit checkpoint carries manifest.json, the SHA-256 of each of its files, and every "
        "command that loads a checkpoint checks it first (a checkpoint without one is refused unless --no-verify). "
        "Without --write: check MODEL's files against it. With --write: record the files as they are now, for a "
        "checkpoint saved before llmkit wrote manifests or one you edited on purpose (generation_config.json, say); "
        "the checkpoint is loaded first, so one that would not load is refused rather than sealed.",
        epilog="example: llmkit manifest runs/old-model --write",
    )
    p.add_argument("model", metavar="MODEL", help="llmkit checkpoint directory")
    p.add_argument("--write", action="store_true", help="write manifest.json from the files as they are now")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from llmkit import checkpoint

    if args.write:
        count = checkpoint.seal(args.model)
        print(f"wrote {args.model}/{checkpoint.MANIFEST}: SHA-256 of {count} files")
    else:
        count = checkpoint.verify_manifest(args.model)
        print(f"{args.model}: {count} files match {checkpoint.MANIFEST}")
