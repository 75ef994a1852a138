"""Distributed checkpoints of sharded (FSDP) runs, with ``torch.distributed.checkpoint`` (DCP).

A sharded run's directory is an llmkit checkpoint directory whose weights are not one
``model.safetensors`` but a ``dcp/`` folder: every process writes its own shards of the weights and of
AdamW's states there (``__R_0.distcp``), and the coordinator writes ``.metadata``, the map of which
file holds which slice of which tensor. config.json, the tokenizer, the card, ``train_state.pt`` (step,
settings, the run's figures; the optimizer is in ``dcp/``) and ``manifest.json`` (every file, shards
included) are as in any checkpoint.

Saving stays atomic across processes: rank 0 makes the temporary directory beside the run's, every
process writes its shards into it, and only after DCP's closing gather (every shard written and
synced) does rank 0 write the rest and rename the directory into place (``files.atomic_directory``).
A process killed mid-save leaves the previous checkpoint as it was, and a temporary directory that
the next ``--resume`` removes.

Loading reads the slices each process needs whatever the number of processes that wrote them: a
checkpoint of N processes resumes on M (with ``batch_size * M`` kept equal to the saved run's rows)
and ``convert`` reads it whole in one process into an ordinary single-file checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as tdcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from llmkit import checkpoint, files, model_card
from llmkit.errors import LlmkitError
from llmkit.model_card import ModelCard
from llmkit.models import build_model
from llmkit.train import distributed
from llmkit.train.step import TrainState

DCP_DIR = "dcp"  # the shards and their .metadata, inside the run's checkpoint directory


def is_dcp(directory: str | Path) -> bool:
    """Whether ``directory`` holds a distributed checkpoint (a sharded run's)."""
    return (Path(directory) / DCP_DIR / ".metadata").is_file()


def save(state: TrainState, directory: Path, *, train_state: dict[str, Any], **contents: Any) -> None:
    """Atomically replace ``directory`` with the run's distributed checkpoint; every process calls it.

    Order: rank 0 makes the temporary directory and tells the others its name -> every process writes
    its shards of the model and optimizer (``get_state_dict``: sharded, keys by parameter name) -> rank
    0 writes config.json, tokenizer, card and ``contents`` (``checkpoint.write_contents``'s keywords),
    ``train_state.pt`` and the manifest -> renames it into place -> everyone waits for that."""
    main = state.env.is_main
    with files.atomic_directory(directory) if main else contextlib.nullcontext() as tmp:
        tmp = Path(_from_rank0(str(tmp) if main else None))
        model_state, optim_state = get_state_dict(state.raw, state.optimizer)
        tdcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp / DCP_DIR)
        if main:
            buffer = io.BytesIO()
            torch.save(train_state, buffer)
            extra = {**contents.pop("extra_files", {}), "train_state.pt": buffer.getvalue()}
            checkpoint.write_contents(tmp, state.raw, None, extra_files=extra, **contents)
    distributed.barrier()


def load(state: TrainState, directory: Path) -> None:
    """Load a distributed checkpoint into the (sharded) model and optimizer of ``state``, each process
    reading the slices of its own shards, whatever the number of processes that saved it."""
    model_state, optim_state = get_state_dict(state.raw, state.optimizer)  # AdamW's states made, to be filled
    wanted = {"model": model_state, "optim": optim_state}
    try:
        tdcp.load(wanted, checkpoint_id=Path(directory) / DCP_DIR)
    except Exception as err:  # DCP raises CheckpointException (wrapping each rank's error) and others
        raise LlmkitError(f"cannot load the distributed checkpoint in {directory}: {_first_line(err)}",
                          "resume with the model and method that saved it") from None  # fmt: skip
    set_state_dict(state.raw, state.optimizer, model_state_dict=wanted["model"], optim_state_dict=wanted["optim"])


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole weights of a sharded ``model`` on rank 0's CPU (empty elsewhere); every process calls it
    (each weight is gathered from its shards in turn)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def read_weights(directory: str | Path, model: nn.Module) -> None:
    """Fill ``model`` (plain, one process) with the weights of a distributed checkpoint, read whole."""
    directory = Path(directory)
    state = model.state_dict()
    saved = tdcp.FileSystemReader(str(directory / DCP_DIR)).read_metadata().state_dict_metadata
    names = {key.removeprefix("model.") for key in saved if key.startswith("model.")}
    missing, unexpected = sorted(set(state) - names), sorted(names - set(state))
    if unexpected or missing:
        what = f"it holds {unexpected[0]}" if unexpected else f"it lacks {missing[0]}"
        raise LlmkitError(
            f"{directory}: the distributed checkpoint does not match its config.json ({what})",
            "a LoRA run's adapter is in OUT/adapter and its merged model in OUT/best; else re-save the run",
        )
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled")  # one process is what we want here
        tdcp.load({"model": state}, checkpoint_id=directory / DCP_DIR, no_dist=not dist.is_initialized())


def convert(src: str | Path, out: str | Path, *, verify: bool = True) -> Path:
    """A sharded run's checkpoint ``src`` -> the ordinary single-file checkpoint directory ``out``
    (config.json, model.safetensors, tokenizer, card; no train_state.pt), read in one process.

    Order: check the manifest (unless ``verify`` is False) -> build the model of its config.json ->
    read every shard into it -> check the weights are finite -> ``checkpoint.save``."""
    src = Path(src)
    if not is_dcp(src):
        raise LlmkitError(f"{src} holds no distributed checkpoint ({DCP_DIR}/.metadata not found)",
                          "point at the out_dir of a run trained with --train.parallel fsdp")  # fmt: skip
    if verify:
        checkpoint.verify_manifest(src, skip=("metrics.jsonl", "loss.png"))  # the run's log grows after a save
    cfg = checkpoint.load_config(src)
    model = build_model(cfg, init=False)
    read_weights(src, model)
    checkpoint.check_finite(model, str(src / DCP_DIR))
    tokenizer = checkpoint.load_tokenizer(src, cfg)
    card = ModelCard(
        f"Converted by `llmkit convert --from-dcp` from the distributed checkpoint `{src}`; its card follows.",
        name=src.name,
        base_card=model_card.read(src),
    )
    gen = checkpoint.load_generation_config(src, cfg)
    return checkpoint.save(model, out, tokenizer=tokenizer, generation_config=gen, card=card)


def local_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes this process holds of the weights, their gradients (those present now) and the optimizer's
    states: each tensor's local shard under FSDP, the whole tensor otherwise (tied weights once)."""
    params = list({id(p): p for p in model.parameters()}.values())
    states = [v for s in (optimizer.state.values() if optimizer else ()) for v in s.values()]
    return {
        "weights": sum(_size(p) for p in params),
        "gradients": sum(_size(p.grad) for p in params if p.grad is not None),
        "optimizer": sum(_size(t) for t in states if isinstance(t, torch.Tensor) and t.dim() > 0),
    }


def step_bytes(state: TrainState, batches: list) -> dict[str, int]:
    """One ``train_step`` over ``batches``, and ``local_bytes`` with the gradients read as the optimizer
    starts (the step frees them after it): what the step holds of each at its end."""
    from llmkit.train.step import train_step

    seen: dict[str, int] = {}
    hook = state.optimizer.register_step_pre_hook(lambda *_: seen.update(local_bytes(state.raw)))
    try:
        train_step(state, batches)
    finally:
        hook.remove()
    return {**local_bytes(state.raw, state.optimizer), "gradients": seen["gradients"]}


def _size(t: torch.Tensor) -> int:
    local = t.to_local() if hasattr(t, "to_local") else t
    return local.numel() * local.element_size()


def _from_rank0(value: Any) -> Any:
    """Rank 0's ``value`` on every process (it alone is in a single process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
