"""`llmkit pretrain`: train a model from scratch on a tokenized data directory, from a TOML config."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
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
nccl on CUDA), so the global batch is batch_size * grad_accum * processes. --train.parallel fsdp
shards the weights, gradients and AdamW states over the processes instead (FSDP2) and saves a
distributed checkpoint (dcp/: each process its shards), which resumes on any number of processes
and converts to a single file with `llmkit convert --from-dcp` (docs/distributed.md).
"""

_EPILOG = """\
examples:
  llmkit pretrain --config configs/tiny-decoder.toml
  llmkit pretrain --config configs/tiny-decoder.toml --train.steps 50 --train.out_dir runs/quick
  llmkit pretrain --config configs/tiny-decoder.toml --resume --train.steps 400
  torchrun --nproc-per-node 4 -m llmkit pretrain --config configs/tiny-decoder.toml --train.parallel fsdp
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
    p.add_argument("--name", help="the model's name, recorded in config.json and its model card; inspect shows it, "
                   "serve uses it as the model id, eval and plots are titled with it "
                   "(default: the config file's name, e.g. quickstart for configs/quickstart.toml)")  # fmt: skip
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
    # a run config names a run; the preset's name (tiny-llama-10m) would misstate a reshaped model's size.
    # A resumed run keeps the name it was saved with (runs saved before --name carry their preset's).
    model_cfg.name = args.name or (_saved_name(train_cfg.out_dir) if args.resume else None) or Path(args.config).stem
    warning = warmup_warning(train_cfg.warmup_steps, train_cfg.steps)
    if warning:
        print(f"llmkit pretrain: warning: {warning}", file=sys.stderr)
    pretrain(model_cfg, train_cfg, resume=args.resume, verify=not args.no_verify)


def _saved_name(out_dir: str) -> str | None:
    from llmkit import checkpoint

    config = Path(out_dir) / checkpoint.CONFIG
    return checkpoint.read_json(config).get("name") if config.is_file() else None


def warmup_warning(warmup: int, steps: int, share: float = 0.25) -> str | None:
    """A warning when warmup takes more than ``share`` of the run: a config's warmup_steps 40 kept for a
    50-step trial run means the learning rate peaks near the end and the run barely trains at full rate."""
    if steps < 1 or warmup <= share * steps:
        return None
    suggested = max(1, steps // 10)
    return (
        f"warmup_steps {warmup} is {min(warmup / steps, 1):.0%} of the {steps}-step run, so the learning rate "
        f"peaks late; --train.warmup_steps {suggested} keeps it to about 10%"
    )
