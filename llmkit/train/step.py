"""The training step and what it needs: ``make_state`` builds the model as run (activation
checkpointing, torch.compile of the stacks, DDP, attention kernels) with its AdamW and autocast;
``train_step`` does one optimizer step over a list of micro-batches; ``train_batches`` draws them.
Also the step's throughput: FLOPs per token and the measured matmul peak that MFU is quoted against.

Everything random is a function of the seed and the step (see loop.py), through ``derive_seed``.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.parallel import DistributedDataParallel

from llmkit.config import ModelConfig, TrainConfig
from llmkit.data.datasets import TokenDataset
from llmkit.models import set_activation_checkpointing
from llmkit.models.layers import EXPLICIT_ATTENTION_MAX_LEN
from llmkit.models.stack import Stack
from llmkit.objectives import IGNORE_INDEX, Batch, Objective, lm_loss
from llmkit.train import distributed
from llmkit.train.distributed import Dist
from llmkit.train.optim import lr_at, make_optimizer, set_lr

TRAIN_SEEDS, EVAL_SEEDS = 0, 1  # streams of derived seeds


# ---- the step -------------------------------------------------------------------------------
@dataclass
class KeptGradient:
    """A large lookup table's dense gradient, kept between steps (``sparse_lookups``), and the rows this
    step's lookups added into it: only those rows are nonzero, so clipping reads and scales them alone
    and the step's end zeroes them alone (all-MiniLM-L6-v2: a few hundred of 30,522 rows, against three
    passes over the 47 MB table)."""

    param: nn.Parameter
    rows: list[torch.Tensor] = field(default_factory=list)  # each lookup's row ids, repeats included

    def record(self, grad: torch.Tensor) -> None:
        """Tensor hook on the table: note the rows of the lookup gradient about to be added."""
        self.rows.append(grad._indices()[0] if grad.is_sparse else torch.arange(grad.shape[0], device=grad.device))

    def touched(self) -> torch.Tensor:
        """The rows whose gradient this step may be nonzero, sorted, each once."""
        if not self.rows:
            return torch.empty(0, dtype=torch.long, device=self.param.device)
        return torch.unique(torch.cat(self.rows))

    def zero(self, rows: torch.Tensor) -> None:
        self.param.grad.index_fill_(0, rows, 0.0)
        self.rows.clear()


@dataclass
class TrainState:
    """What a training step needs: the model as run (DDP / compiled) and bare, its optimizer, the
    settings, this process's place, and the number of optimizer steps done."""

    model: nn.Module  # what forward runs: wrapped by distributed.wrap, maybe compiled
    raw: nn.Module  # the bare model: its weights are saved and evaluated
    optimizer: torch.optim.Optimizer
    cfg: TrainConfig
    env: Dist
    step: int = 0
    kernels: list[SDPBackend] | None = None  # the SDPA kernels a step may use (None: torch's choice)
    kept_grads: list[KeptGradient] = field(default_factory=list)  # zeroed in place, not freed (sparse_lookups)

    @property
    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on the run's device (weights and optimizer stay fp32); fp32: nothing."""
        return torch.autocast(self.env.device.type, dtype=torch.bfloat16, enabled=self.cfg.dtype == "bf16")

    def attention_kernels(self) -> contextlib.AbstractContextManager:
        """SDPA restricted to ``kernels`` for a whole forward and backward: activation checkpointing
        recomputes blocks during backward, and a recomputation under another kernel than the forward
        used gives tensors of other shapes, which torch.utils.checkpoint rejects."""
        return sdpa_kernel(self.kernels) if self.kernels is not None else contextlib.nullcontext()


def make_state(model: nn.Module, cfg: TrainConfig, env: Dist | None = None) -> TrainState:
    """Ready ``model`` for ``train_step``. Order: flush denormals (CPU) -> move to the device -> activation
    checkpointing and torch.compile (of the stacks; of each block under FSDP) if asked -> ``distributed.wrap``
    -> AdamW -> the attention kernels its steps may use (``attention_kernels``).

    ``cfg.parallel`` "ddp": DDP under torchrun (the model as it is in one process). "fsdp": the model
    sharded in place before AdamW is built over its shards (so ``raw`` is the sharded model too)."""
    env = env or distributed.init(cfg.device)
    if env.device.type == "cpu":
        # x86 runs arithmetic on denormal floats (< 1.2e-38, e.g. far softmax tails) ~100x slower: a
        # 200-step T5 run took 72 s instead of 15 s. Flushing them to zero changes nothing measurable.
        torch.set_flush_denormal(True)
    fsdp = cfg.parallel == "fsdp"
    model = model.to(env.device).train()
    set_activation_checkpointing(model, cfg.activation_checkpointing)
    if cfg.compile:
        compile_blocks(model) if fsdp else compile_stacks(model)
    if fsdp:
        model = distributed.wrap(model, "fsdp", env, bf16=cfg.dtype == "bf16", offload=cfg.fsdp_offload)
    optimizer = make_optimizer(model, cfg)
    kept = sparse_lookups(model) if env.device.type == "cpu" and not env.is_distributed and not fsdp else []
    run = model if fsdp else distributed.wrap(model, "ddp", env)
    kernels = attention_kernels(env.device, cfg.block_size)
    return TrainState(model=run, raw=model, optimizer=optimizer, cfg=cfg, env=env, kernels=kernels, kept_grads=kept)


# Tables smaller than this keep torch's dense lookup gradient: the saving is in the large vocabularies.
SPARSE_LOOKUP_MIN_ROWS = 4096


def sparse_lookups(model: nn.Module) -> list[KeptGradient]:
    """Large trained embedding tables take their lookup's gradient as rows (``nn.Embedding(sparse=True)``)
    added into a dense gradient that stays allocated between steps, zeroed in place: the optimizer,
    clipping and checkpoints see the same dense gradient as before (equal up to the order rows are
    summed in). On the CPU a fresh dense gradient each step is a large allocation page-faulted in
    anew: all-MiniLM-L6-v2's 30,522 x 384 table (47 MB) cost 12-60 ms of a 140 ms SST-2 step, against
    1-2 ms to zero it in place. Not under DDP, whose buckets expect dense gradients from autograd, and
    not for a table tied to a head: the head's gradient is dense and fresh every step anyway, and adding
    it into a kept one would hold a second table-sized tensor at the peak (SmolLM2-135M's tied 49,152 x
    576 table: +113 MB). Returns the gradients train_step must keep, each noting the rows its lookups
    touch (a tensor hook on the table)."""
    kept: list[KeptGradient] = []
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, nn.Embedding) or not weight.requires_grad or weight.shape[0] < SPARSE_LOOKUP_MIN_ROWS:
            continue
        if module.max_norm is not None or any(weight is k.param for k in kept):
            continue
        owners = [m for m in model.modules() if any(p is weight for p in m.parameters(recurse=False))]
        if not all(isinstance(m, nn.Embedding) for m in owners):
            continue  # tied to a head
        module.sparse = True
        weight.grad = torch.zeros_like(weight)  # dense from the start: autograd adds the rows into it
        kept.append(KeptGradient(weight))
        weight.register_hook(kept[-1].record)
    return kept


def compile_blocks(model: nn.Module) -> None:
    """torch.compile every block's forward in place, for sharded training: FSDP gathers a block's
    weights in hooks around its call, which stay outside the graph (eager), while the block's own
    work is compiled (torchtitan's per-block compile). Parameter names stay as they are."""
    for module in model.modules():
        if isinstance(module, Stack):
            for block in module.layers:
                block.forward = torch.compile(block.forward)


def compile_stacks(model: nn.Module) -> None:
    """torch.compile every Stack of ``model`` in place: the blocks do nearly all the work, parameter
    names stay as they are, and the embeddings stay outside the graphs. (Compiling the whole model
    breaks its graph at the embeddings' bounds check, a host read, and the attention-kernel choice
    is then lost: 57 ms per step of the shakespeare bench instead of 36.)"""
    for module in model.modules():
        if isinstance(module, Stack):
            module.compile()


# Measured here (AMD EPYC, AVX-512 BF16, torch 2.13, one thread), a training step of a 4-layer,
# 128-wide decoder under bf16 autocast: 768 tokens as 12 x 64: math kernel 43 ms, flash 73 ms; as
# 6 x 128: 102 ms vs 130; 1024 tokens as 4 x 256: 319 ms vs 239. CPU flash attention's backward
# costs more than it saves at short lengths. The bound is the one up to which Attention._attend
# writes training attention out with dropout (that path stands in for the math kernel), so one constant.
CPU_MATH_ATTENTION_MAX_LEN = EXPLICIT_ATTENTION_MAX_LEN


def attention_kernels(device: torch.device, block_size: int) -> list[SDPBackend] | None:
    """The scaled-dot-product-attention kernels training may use: the math one on CPU up to
    ``CPU_MATH_ATTENTION_MAX_LEN`` tokens, else None (torch's own choice)."""
    if device.type == "cpu" and block_size <= CPU_MATH_ATTENTION_MAX_LEN:
        return [SDPBackend.MATH]
    return None


def train_step(state: TrainState, batches: list[Batch]) -> torch.Tensor:
    """One optimizer step over ``batches`` (the micro-batches on this process); returns its loss.

    Order: lr <- lr_at(step) -> per micro-batch: forward under autocast, fp32 loss weighted by the
    micro-batch's share of the step's target tokens over all processes, backward (DDP averages
    gradients on the last one only; FSDP keeps unsharded gradients until the last one, then
    reduce-scatters their average) -> clip the global gradient norm -> AdamW -> gradients to None.
    The weighting makes the gradient that of the mean loss over every target token of the global
    batch, however the rows are split into micro-batches and processes. The returned loss is this
    process's part of that mean, a 0-d tensor left on the device (no host sync): summed over
    processes it is the global mean.
    """
    cfg, world = state.cfg, state.env.world_size
    set_lr(state.optimizer, lr_at(state.step, cfg))
    counts = [(b.labels != IGNORE_INDEX).sum().float() for b in batches]
    total = distributed.all_reduce_sum(torch.stack(counts).sum())  # target tokens of the global batch
    step_loss = torch.zeros((), device=state.env.device)
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        with contextlib.nullcontext() if last else _no_sync(state.model), state.attention_kernels():
            with state.autocast:
                logits = state.model(**batch.inputs).logits
            loss = lm_loss(logits, batch.labels) * (counts[i] / total)
            (loss * world).backward()  # DDP and FSDP divide the summed gradients by world
        step_loss += loss.detach()
    rows = [k.touched() for k in state.kept_grads]
    if cfg.grad_clip > 0:
        clip_grad_norm(state, rows, cfg.grad_clip)
    state.optimizer.step()
    state.optimizer.grad_scale = None  # clip_grad_norm's divisor, this step's alone
    kept = [k.param.grad for k in state.kept_grads]
    state.optimizer.zero_grad(set_to_none=True)
    for k, grad, touched in zip(state.kept_grads, kept, rows, strict=True):
        k.param.grad = grad
        k.zero(touched)
    state.step += 1
    return step_loss


def clip_grad_norm(state: TrainState, rows: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` over the model's gradients: when the global L2 norm exceeds
    max_norm, every gradient is divided by (norm + 1e-6) / max_norm. Each kept lookup gradient is
    read on its ``rows`` alone (the others are zero). A fused AdamW takes the divisor as its
    ``grad_scale`` and divides inside its own pass over the gradients (the attribute torch's
    GradScaler sets; train_step clears it after the step); other optimizers get the gradients
    divided in place. MiniLM, 11M dense gradient values on this 2-core CPU: the in-place multiply
    costs 2.5-3.8 ms, the divide inside fused AdamW nothing measurable. Returns the norm before
    clipping."""
    if distributed.is_sharded(state.raw):
        # gradient shards (DTensors): torch's clip sums the shards' squared norms over the processes
        total = torch.nn.utils.clip_grad_norm_(state.raw.parameters(), max_norm, foreach=True)
        return total.full_tensor()
    kept = {id(k.param) for k in state.kept_grads}
    dense = [p.grad for p in state.raw.parameters() if p.grad is not None and id(p) not in kept]
    picked = [k.param.grad.index_select(0, r) for k, r in zip(state.kept_grads, rows, strict=True)]
    total = global_norm(dense + picked)
    divisor = torch.clamp((total + 1e-6) / max_norm, min=1.0)
    if state.optimizer.defaults.get("fused"):
        state.optimizer.grad_scale = divisor
        return total
    torch._foreach_div_(dense, divisor)
    for k, r, values in zip(state.kept_grads, rows, picked, strict=True):
        k.param.grad.index_copy_(0, r, values.div_(divisor))
    return total


def global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all ``tensors`` together. On the CPU each fp32 tensor's squared norm is a BLAS
    dot product with itself: 2.5 ms over MiniLM's 11M gradient values against 5.0-5.6 ms for torch's
    ``_foreach_norm`` (which loops over the tensors on the CPU anyway). Elsewhere torch's own."""
    if not tensors:
        return torch.zeros(())
    if tensors[0].device.type != "cpu":
        return torch.nn.utils.get_total_norm(tensors, foreach=True)
    squares = [
        torch.dot(t.reshape(-1), t.reshape(-1))
        if t.dtype == torch.float32
        else torch.linalg.vector_norm(t, dtype=torch.float32).square()
        for t in tensors
    ]
    return torch.stack(squares).sum().sqrt()


def _no_sync(model: nn.Module) -> contextlib.AbstractContextManager:
    """DDP's no_sync (skip the gradient all-reduce), FSDP's gradient sync off for the block (gradients
    accumulate unsharded, reduce-scattered after the last micro-batch); nothing for a bare model."""
    if isinstance(model, DistributedDataParallel):
        return model.no_sync()
    if distributed.is_sharded(model):
        return _fsdp_no_sync(model)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(model: nn.Module):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed fixed by ``parts``, e.g. (seed, stream, step, micro, rank): streams never overlap."""
    digest = hashlib.blake2b("\0".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def train_batches(data: TokenDataset, objective: Objective, cfg: TrainConfig, env: Dist, step: int) -> list[Batch]:
    """This process's micro-batches of optimizer step ``step``: a function of (seed, step, rank) only."""
    batches = []
    for micro in range(cfg.grad_accum):
        seed = derive_seed(cfg.seed, TRAIN_SEEDS, step, micro, 0)
        batch = draw_batch(data, objective, "train", step * cfg.grad_accum + micro, cfg, env, seed)
        batches.append(batch.to(env.device, non_blocking=True))
    return batches


def draw_batch(
    data: TokenDataset, objective: Objective, split: str, index: int, cfg: TrainConfig, env: Dist, seed: int
) -> Batch:
    """This process's rows of batch ``index`` of ``split`` with the objective applied (on the CPU): the
    same rows, masks and spans, whatever the number of processes, as one process with their batch.

    The windows are ``TokenDataset.batch``'s (rank r takes rows [r * B, (r + 1) * B) of the global
    draw). An objective that draws randoms (masking, span noise) is applied to the whole global batch
    with one generator seeded by ``seed`` and this process keeps its rows: drawn per process, the masks
    would depend on how the rows are split, and 2 processes would not train what one does. It costs
    every process the masking of world_size x batch_size rows, integer work of a few ms."""
    window = objective.window_length(cfg.block_size)
    if objective.name == "causal_lm" or env.world_size == 1:  # nothing drawn, or nothing to split
        tokens = data.batch(split, index, cfg.batch_size, window, seed=cfg.seed, rank=env.rank,
                            world_size=env.world_size)  # fmt: skip
        return objective(tokens, torch.Generator().manual_seed(seed))
    rows = cfg.batch_size * env.world_size
    whole = objective(data.batch(split, index, rows, window, seed=cfg.seed), torch.Generator().manual_seed(seed))
    mine = slice(env.rank * cfg.batch_size, (env.rank + 1) * cfg.batch_size)
    return Batch({name: t[mine] for name, t in whole.inputs.items()}, whole.labels[mine])


# ---- throughput -----------------------------------------------------------------------------
def flops_per_token(model: nn.Module, cfg: ModelConfig, block_size: int) -> float:
    """Training FLOPs per token, estimated as PaLM (Chowdhery et al. 2022, app. B) and nanoGPT do:
    6 per weight of every matrix multiply (forward 2, backward 4; the tied head counts, lookups of
    embeddings do not) + 12 * layers * (heads * head_dim) * block_size for attention's scores and
    weighted sum. Encoder-decoder: both stacks, cross-attention as another layer of attention."""
    matmul_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    attention_layers = cfg.n_layer + (2 * cfg.n_decoder_layer if cfg.family == "encoder_decoder" else 0)
    return 6 * matmul_weights + 12 * attention_layers * cfg.n_head * cfg.head_dim * block_size


_PEAKS: dict[tuple, float] = {}


def measure_peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a square matmul in ``dtype`` on ``device`` (n = 1024 on CPU, 4096 on GPU; ~0.2 s,
    measured once per process): the practical peak that MFU is quoted against."""
    key = (device.type, device.index, dtype)
    if key not in _PEAKS:
        n = 4096 if device.type == "cuda" else 1024
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        a @ b  # warm-up: the first product pays for library setup (cuBLAS handles, kernel choice)
        _sync(device)
        reps, elapsed = 1, 0.0
        while elapsed < 0.05:  # double the repetitions until a run is long enough to time
            reps *= 2
            start = time.perf_counter()
            for _ in range(reps):
                a @ b
            _sync(device)
            elapsed = time.perf_counter() - start
        _PEAKS[key] = 2 * n**3 * reps / elapsed
    return _PEAKS[key]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
