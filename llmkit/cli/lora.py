"""`llmkit lora merge BASE ADAPTER OUT`: fold a LoRA adapter (peft format) into a plain checkpoint."""

from __future__ import annotations

import argparse

_DESCRIPTION = """\
Fold the LoRA adapter in ADAPTER (peft's format: adapter_config.json + adapter_model.safetensors, as
written by `llmkit finetune` or by peft's save_pretrained) into the llmkit checkpoint BASE, and write
the plain checkpoint OUT (W + alpha/rank * B A in every adapted layer; the base's dtype; a model card
naming base and adapter). The result runs without the adapter, at the base's speed.

BASE must be the float checkpoint the adapter was trained on (a peft adapter: its base converted with
`llmkit convert --from-hf`); an int8/int4 base is refused, since quantizing W + BA again would lose
most of the update: merge into the float base, then `llmkit quantize` the result.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lora",
        help="LoRA adapters: merge one into a plain checkpoint",
        description="LoRA adapters in peft's format. Run `llmkit lora merge --help` for details.",
    )
    p.set_defaults(handler=lambda args: p.print_help())
    group = p.add_subparsers(dest="lora_command", metavar="COMMAND")
    m = group.add_parser(
        "merge",
        help="fold a LoRA adapter (peft format) into a plain checkpoint",
        description=_DESCRIPTION,
        epilog="example:\n  llmkit lora merge models/smollm2-135m-instruct runs/sst2-lora/adapter runs/sst2-merged",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m.add_argument("base", metavar="BASE", help="llmkit checkpoint directory the adapter was trained on")
    m.add_argument("adapter", metavar="ADAPTER", help="adapter directory (adapter_config.json + safetensors)")
    m.add_argument("out", metavar="OUT", help="directory for the merged checkpoint")
    m.set_defaults(handler=run_merge)


def run_merge(args: argparse.Namespace) -> None:
    from llmkit.lora.merge import merge_checkpoint

    out = merge_checkpoint(args.base, args.adapter, args.out, verify=not args.no_verify)
    print(f"merged {args.adapter} into {args.base} -> {out}")
