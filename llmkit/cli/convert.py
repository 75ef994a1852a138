"""`llmkit convert`: Hugging Face checkpoint directories to llmkit and back."""

from __future__ import annotations

import argparse
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert Hugging Face checkpoints (GPT-2, Llama, BERT, T5) to llmkit and back",
        description="Convert a checkpoint directory between the transformers layout and llmkit's. "
        "--from-hf reads config.json and model.safetensors (single or sharded) or pytorch_model.bin "
        "(loaded with weights_only=True), carries tokenizer.json and generation_config.json across, and "
        "writes an llmkit directory. --to-hf writes a directory transformers' from_pretrained loads.",
        epilog="examples:\n  llmkit convert --from-hf ~/models/flan-t5-base runs/flan-t5-base\n"
        "  llmkit convert --to-hf runs/my-gpt runs/my-gpt-hf",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    direction = p.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from-hf", action="store_true", help="SRC is a transformers checkpoint directory")
    direction.add_argument("--to-hf", action="store_true", help="SRC is an llmkit checkpoint directory")
    p.add_argument("src", metavar="SRC", help="directory to read")
    p.add_argument("out", metavar="OUT", help="directory to write (replaced atomically if it exists)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from llmkit import checkpoint, hf
    from llmkit.summary import human_count, summarize

    start = time.perf_counter()
    out = hf.from_hf(args.src, args.out) if args.from_hf else hf.to_hf(args.src, args.out)
    cfg = checkpoint.load_config(out if args.from_hf else args.src)
    from llmkit.models import build_model

    total = summarize(build_model(cfg, "meta")).total
    print(
        f"converted {args.src} -> {out}: {cfg.family} model, {human_count(total)} parameters, "
        f"{time.perf_counter() - start:.1f} s"
    )
