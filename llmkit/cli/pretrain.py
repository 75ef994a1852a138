"""`llmkit pretrain`: train a model from scratch on a tokenized data directory, from a TOML config."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from llmkit.cli._options import add_config_flags, add_model_flags, config_overrides, model_overrides
from llmkit.config import ModelConfig, TrainConfig
from llmkit.errors import LlmkitError

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
    p.add_argument("--resume", action="store_true", help="continue the run saved in out_dir")
    add_model_flags(p)
    add_train_flags(p)
    p.set_defaults(handler=run)


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser, TrainConfig, "train", "train overrides (applied on top of the config file)",
                     "--train.steps 200 --train.lr 3e-4")  # fmt: skip


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return config_overrides(args, "train")


def run(args: argparse.Namespace) -> None:
    from llmkit.train import pretrain

    model_cfg, train_cfg = load_run_config(args.config, model_overrides(args), train_overrides(args))
    pretrain(model_cfg, train_cfg, resume=args.resume)


def load_run_config(
    path: str | Path, model_flags: dict[str, Any] | None = None, train_flags: dict[str, Any] | None = None
) -> tuple[ModelConfig, TrainConfig]:
    """The run's configs from a TOML file and flag overrides.

    Order: read the file -> TrainConfig from [train] + flags -> the model: defaults < [model] preset
    < the data's tokenizer (vocab_size, pad/bos/eos ids, T5's decoder start = pad) < [model] fields
    < flags. A missing file, bad TOML, an unknown table or key, or a value of the wrong type raises
    an LlmkitError.
    """
    tables = read_toml(path)
    model_table, train_table = dict(tables.get("model", {})), dict(tables.get("train", {}))
    train_cfg = _build(TrainConfig, {**train_table, **(train_flags or {})}, f"{path} [train]")
    preset = model_table.pop("preset", None)
    overrides = {**model_table, **(model_flags or {})}
    if train_cfg.data and (Path(train_cfg.data) / "tokenizer.json").is_file():
        from llmkit.data.tokenizer import Tokenizer

        for key, value in tokenizer_fields(Tokenizer.from_dir(train_cfg.data), preset, overrides).items():
            overrides.setdefault(key, value)
    if preset is None:
        return _build(ModelConfig, overrides, f"{path} [model]"), train_cfg
    if not isinstance(preset, str):
        raise LlmkitError(f"{path}: [model] preset must be a string, got {preset!r}", 'e.g. preset = "tiny-gpt-1m"')
    try:
        return ModelConfig.from_name(preset, **overrides), train_cfg
    except TypeError as err:
        raise LlmkitError(f"{path} [model]: a value has the wrong type ({err})", "check the [model] table") from None


def tokenizer_fields(tokenizer, preset: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """vocab_size and special ids a model takes from its tokenizer, as `llmkit init --tokenizer` does."""
    out: dict[str, Any] = {"vocab_size": tokenizer.vocab_size}
    for role in ("pad", "bos", "eos"):
        token_id = getattr(tokenizer, f"{role}_token_id")
        if token_id is not None:
            out[f"{role}_token_id"] = token_id
    family = overrides.get("family") or (_preset_family(preset) if preset else "decoder")
    if family == "encoder_decoder" and tokenizer.pad_token_id is not None:
        out["decoder_start_token_id"] = tokenizer.pad_token_id  # T5 starts decoding from pad
    return out


def _preset_family(preset: str) -> str | None:
    from llmkit.config import PRESETS

    return PRESETS.get(preset, {}).get("family")


def read_toml(path: str | Path) -> dict[str, Any]:
    """The tables of a run config; only [model] and [train] are allowed."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    path = Path(path)
    if not path.is_file():
        raise LlmkitError(f"config file {path} not found", "check the path (examples are in configs/)")
    try:
        tables = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise LlmkitError(f"{path}: not valid TOML ({err})", "fix the file (see configs/ for examples)") from None
    unknown = sorted(set(tables) - {"model", "train"})
    if unknown:
        raise LlmkitError(f"{path}: unknown table or key {', '.join(unknown)}", "the file holds [model] and [train]")
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise LlmkitError(f"{path}: {name} must be a table ([{name}])", "see configs/ for examples")
    return tables


def _build(cls: type, data: dict[str, Any], source: str):
    try:
        return cls.from_dict(data, source=source)
    except TypeError as err:
        raise LlmkitError(f"{source}: a value has the wrong type ({err})", "check the values in that table") from None
