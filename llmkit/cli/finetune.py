"""`llmkit finetune`: adapt a checkpoint to a task (one of llmkit.finetune.tasks.KINDS) from a TOML config."""

from __future__ import annotations

import argparse

from llmkit.cli._options import add_config_flags, config_overrides
from llmkit.config import TrainConfig

_DESCRIPTION = """\
Fine-tune an existing llmkit checkpoint (e.g. one converted with `llmkit convert --from-hf`) on a task,
with the pretraining loop: bf16 autocast, accumulation, warmup + cosine, exact --resume, NaN stop,
DDP under torchrun, metrics.jsonl and loss.png.

The config is a TOML file with four tables:
  [model]   init_from = DIR (the checkpoint to start from), dropout (optional)
  [task]    kind = {kinds}
            (docs/finetuning.md), train_file, dev_file (classify: TSV with a header or JSONL,
            text_field / label_field; tokens: CoNLL with BIO tags), labels (optional list),
            data (continue: a `llmkit data tokenize` directory made with init_from's tokenizer)
  [method]  name = full | freeze (train_layers = N last blocks on top of the head; 0: head only)
            | lora (rank, alpha, dropout, target_modules; the new head trains in full beside it)
            | qlora (the same over int8/int4 blocks: bits = 8 | 4)
  [train]   any TrainConfig field (block_size is the maximum sequence length); fine-tuning defaults:
            lr 5e-5, min_lr 0, weight_decay 0.01, beta2 0.999, batch_size 16, block_size 128
Precedence: defaults < the file < --model.FIELD / --task.FIELD / --method.FIELD / --train.FIELD.

The dev set is scored at the start, every eval_interval steps and at the end (classify: accuracy and
macro-F1; tokens: entity-level precision/recall/F1 as seqeval computes them; continue: loss and
perplexity). OUT/best holds the checkpoint of the best score (LoRA: merged; QLoRA: OUT/best.json only),
OUT/adapter the best LoRA adapter in peft's format, OUT/last the resumable run.
"""

_EPILOG = """\
examples:
  llmkit finetune --config configs/finetune/sst2-minilm.toml
  llmkit finetune --config configs/finetune/wnut17-minilm.toml --train.steps 100 --train.out_dir runs/ner
  llmkit finetune --config configs/finetune/sst2-minilm.toml --resume --train.steps 800
"""

_TABLES = {
    "model": ("[model] overrides", "--model.init_from DIR --model.dropout 0.1"),
    "task": ("[task] overrides", "--task.kind tokens --task.max_train_examples 2000"),
    "method": ("[method] overrides", "--method.name freeze --method.train_layers 2"),
}


def register(sub: argparse._SubParsersAction) -> None:
    from llmkit.finetune.config import METHODS, MethodConfig, ModelTable, TaskConfig
    from llmkit.finetune.tasks import KINDS

    p = sub.add_parser(
        "finetune",
        help=f"fine-tune a checkpoint; tasks: {', '.join(f'{k} ({kind.words})' for k, kind in KINDS.items())}; "
        f"methods: {', '.join(METHODS)}",
        description=_DESCRIPTION.format(kinds=" | ".join(KINDS)),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config", required=True, metavar="FILE.toml", help="run config with [model] [task] [method] [train]"
    )
    p.add_argument("--resume", action="store_true", help="continue the run saved in OUT/last")
    p.add_argument(
        "--no-verify", action="store_true",
        help="skip the SHA-256 check of init_from's files (and, with --resume, of the run's checkpoint)",
    )  # fmt: skip
    for (name, (title, example)), config in zip(_TABLES.items(), (ModelTable, TaskConfig, MethodConfig), strict=True):
        add_config_flags(p, config, name, title, example)
    add_config_flags(p, TrainConfig, "train", "[train] overrides", "--train.steps 200 --train.lr 3e-5")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from llmkit.finetune import finetune, load_finetune_config

    flags = {name: config_overrides(args, name) for name in (*_TABLES, "train")}
    cfg = load_finetune_config(args.config, flags)
    finetune(cfg, resume=args.resume, verify=not args.no_verify)
