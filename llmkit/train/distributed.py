"""Processes and devices: torchrun's environment, the one place a model is wrapped, rank-0 printing.

Run plainly, this is a single process (rank 0 of 1). Under ``torchrun --nproc-per-node N`` each
process reads RANK, WORLD_SIZE and LOCAL_RANK, joins a process group (nccl on CUDA, gloo on CPU)
and trains its own part of every batch. "ddp": DistributedDataParallel keeps a whole copy of the
model per process and averages the gradients. "fsdp": PyTorch's FSDP2 (``fully_shard``) keeps
1/N of every weight, gradient and optimizer state per process (ZeRO stage 3), gathering each
block's weights just before it runs and reduce-scattering its gradients after (docs/distributed.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
    register_fsdp_forward_method,
)
from torch.nn.parallel import DistributedDataParallel

from llmkit.devices import resolve_device
from llmkit.errors import LlmkitError

WRAPPERS = ("none", "ddp", "fsdp")
# Methods other than forward that run a sharded module's weights: FSDP gathers them before these too.
# Stack's last block at the read positions alone (sequence heads); T5's encode-once, decode-many.
FORWARD_METHODS = ("select", "encode", "decode")


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


def wrap(model: nn.Module, kind: str, env: Dist, *, bf16: bool = False, offload: bool = False) -> nn.Module:
    """Wrap a built model (already on ``env.device``) for distributed training: the one place.

    "none" returns it as is; "ddp" wraps it in DistributedDataParallel when there is more than one
    process (rank 0's weights are broadcast to the others on construction). "fsdp" shards it in place
    (``shard``), with one process too; ``bf16`` and ``offload`` are FSDP's (see ``shard``).
    """
    if kind not in WRAPPERS:
        raise LlmkitError(f"unknown distribution '{kind}'", f"choose one of: {', '.join(WRAPPERS)}")
    if kind == "fsdp":
        return shard(model, env, bf16=bf16, offload=offload)
    if kind == "none" or not env.is_distributed:
        return model
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def shard(model: nn.Module, env: Dist, *, bf16: bool = False, offload: bool = False) -> nn.Module:
    """FSDP2 in place: every transformer block its own group, then the root (embeddings, final norms,
    heads, T5's relative bias), each weight split in dim 0 over the processes. Returns ``model``,
    now an FSDPModule whose parameters are DTensors (each process holds its shard).

    Every process must hold the same weights before (all build them from the same seed or file):
    sharding keeps each process's own slice, it broadcasts nothing. ``bf16``: the gathered weights
    and the matmuls in bf16, gradients reduced in fp32, the shards (and AdamW) stay fp32.
    ``offload``: the shards, their gradients and the optimizer step live on the CPU, gathered onto
    the device per block. Activation checkpointing (Stack's switch) and torch.compile of the blocks
    (``compile_blocks``) are applied before sharding and compose with it. One process works too: the
    same code and checkpoints (a process group of one is made for it).
    """
    from llmkit.models.stack import Stack

    if offload and env.device.type != "cuda":
        raise LlmkitError(
            "fsdp_offload moves the shards off the GPU, and this run trains on the CPU already",
            "drop --train.fsdp_offload (or train on CUDA)",
        )
    ensure_group(env)
    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    )
    policy = CPUOffloadPolicy() if offload else OffloadPolicy()
    blocks = [block for m in model.modules() if isinstance(m, Stack) for block in m.layers]
    for module in [*blocks, model]:
        # blocks free their gathered weights after forward (gathered again for backward); FSDP keeps the
        # root's, which backward needs at once
        fully_shard(module, mp_policy=mp, offload_policy=policy)
        for name in FORWARD_METHODS:
            if callable(getattr(module, name, None)):
                register_fsdp_forward_method(module, name)
    return model


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` was sharded by ``shard`` (FSDP2)."""
    return isinstance(model, FSDPModule)


def ensure_group(env: Dist) -> None:
    """A process group for FSDP and distributed checkpoints: torchrun's, or for a single process one
    of its own (an in-memory store: nothing to connect to)."""
    if dist.is_initialized():
        return
    if env.is_distributed:
        raise LlmkitError("no process group was joined", "call distributed.init() first (torchrun sets RANK)")
    backend = "nccl" if env.device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, device_id=_device_id(env.device))


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
