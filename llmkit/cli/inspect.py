"""`llmkit inspect`: architecture, parameters by component, context window, vocabulary, memory."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="summarize a model: architecture, parameters by component, context, vocab, memory",
        description="Summarize a named preset (e.g. gpt2, bert-base-uncased, flan-t5-base; built on the meta "
        "device, so nothing is allocated) or an llmkit checkpoint directory: architecture, parameters by "
        "component (tied weights counted once), context window, vocabulary, and the memory the weights take "
        "in fp32, bf16, int8 and int4; a checkpoint's model card (its README.md: data and licenses, training, "
        "metrics, intended use, limitations) follows.",
    )
    p.add_argument("model", metavar="MODEL", help="preset name or checkpoint directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from llmkit.viz.model_report import model_report

    report = model_report(args.model)
    print(report.to_json() if args.json else report.table())
