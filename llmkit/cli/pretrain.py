"""`llmkit pretrain`: train a model from scratch on a tokenized data directory, from a TOML config."""

from __future__ import annotations

import argparse
from typing import Any

from llmkit.cli._options import add_config_flags, add_model_flags, config_overrides, model_overrides
from llmkit.config import TrainConfig

_DESCRIPTION = """\
Pretrain a decoder (causal LM), encoder (masked LM) or encoder-decoder (span corruption) from
scratch on a data directory written by `llmkit data tokenize`.

The config is a TOML file with two tables:
  [model]  preset = "tiny-llama-10m" plus any ModelConfig field to override it
  [train]  any TrainConfig field: data, out_dir, steps, batch_size, block_size, lr, ...
Precedence: defaults < preset < the data's tokenizer (vocab_size and special ids, unless set)
< the file < --model.FIELD / --train.FIELD flags.

The run directory (out_dir) is an llmkit checkpoint (config.json, model.safetensors, the data's
tokenizer) plus train_state.pt (step, optimizer, settings), metrics.jsonl and loss.png. It is
saved atomically every save_interval steps and at the end; --resume continues from it exactly
(same data order and random draws). A nan/inf loss stops the run and keeps the last checkpoint.

Several processes: the same command under torchrun, e.g.
  torchrun --nproc-per-node 2 -m llmkit pretrain --config configs/tiny-decoder.toml
Each process trains batch_size rows of every micro-batch (DistributedDataParallel; gloo on CPU,
nccl on CUDA), so the global batch is batch_size * grad_accum * processes.
"""

_EPILOG = """\
examples:
  llmkit pretrain --config configs/tiny-decoder.toml
  llmkit pretrain --config configs/tiny-decoder.toml --train.steps 50 --train.out_dir runs/quick
  llmkit pretrain --config configs/tiny-decoder.toml --resume --train.steps 400
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain a model from a TOML config (decoder, encoder or encoder-decoder)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, metavar="FILE.toml", help="run config with [model] and [train]")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run saved in out_dir (after a crash mid-save: from the newest complete copy left beside it)",
    )
    p.add_argument("--no-verify", action="store_true", help="with --resume: skip the SHA-256 check of the checkpoint")
    add_model_flags(p)
    add_train_flags(p)
    p.set_defaults(handler=run)


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser, TrainConfig, "train", "train overrides (applied on top of the config file)",
                     "--train.steps 200 --train.lr 3e-4")  # fmt: skip


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return config_overrides(args, "train")


def run(args: argparse.Namespace) -> None:
    from llmkit.runconfig import load_run_config
    from llmkit.train import pretrain

    model_cfg, train_cfg = load_run_config(args.config, model_overrides(args), train_overrides(args))
    pretrain(model_cfg, train_cfg, resume=args.resume, verify=not args.no_verify)
