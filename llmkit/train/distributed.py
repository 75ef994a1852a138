"""Processes and devices: torchrun's environment, the one place a model is wrapped, rank-0 printing.

Run plainly, this is a single process (rank 0 of 1). Under ``torchrun --nproc-per-node N`` each
process reads RANK, WORLD_SIZE and LOCAL_RANK, joins a process group (nccl on CUDA, gloo on CPU)
and trains its own part of every batch; DistributedDataParallel averages the gradients.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from llmkit.devices import resolve_device
from llmkit.errors import LlmkitError

WRAPPERS = ("none", "ddp")  # "fsdp" arrives with its issue, here and nowhere else


@dataclass(frozen=True)
class Dist:
    """Where this process stands: its rank among ``world_size`` processes and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def init(device: str = "auto") -> Dist:
    """Read torchrun's environment and join the process group; a single process without it.

    ``device``: "auto" (cuda when available, else cpu), "cpu", "cuda" or "cuda:N". Under torchrun
    on CUDA each process takes the GPU of its LOCAL_RANK.
    """
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = torch.device(resolve_device(device))
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise LlmkitError("device 'cuda' requested but CUDA is not available", "use --train.device cpu")
        if dev.index is None:
            dev = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, device_id=_device_id(dev))
    return Dist(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def _device_id(dev: torch.device) -> torch.device | None:
    # binding the group to the GPU lets nccl connect eagerly; gloo takes no device
    return dev if dev.type == "cuda" else None


def wrap(model: nn.Module, kind: str, env: Dist) -> nn.Module:
    """Wrap a built model (already on ``env.device``) for distributed training: the one place.

    "none" returns it as is; "ddp" wraps it in DistributedDataParallel when there is more than one
    process (rank 0's weights are broadcast to the others on construction).
    """
    if kind not in WRAPPERS:
        raise LlmkitError(f"unknown distribution '{kind}'", f"choose one of: {', '.join(WRAPPERS)}")
    if kind == "none" or not env.is_distributed:
        return model
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def print0(*args, **kwargs) -> None:
    """print on rank 0 only."""
    if is_main():
        print(*args, **kwargs, flush=True)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over processes in place (a no-op for one process); returns it."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def cleanup() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()
