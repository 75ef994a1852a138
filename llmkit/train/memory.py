"""Measure the memory of real training steps, to hold ``llmkit.plan``'s predictions against.

``measure_training`` runs a few steps of llmkit's own training step (``make_state`` + ``train_step``)
on random tokens and reports the peak of live tensor memory and its parts. On CUDA the caching
allocator counts (``torch.cuda.max_memory_allocated``). The CPU has no such counter, so ``LiveBytes``
keeps one: a dispatch mode sees every tensor an operation returns, counts its storage once, and
subtracts it when Python frees the storage (a weak reference's callback). Weights, gradients and
optimizer states are also read exactly off the tensors.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
import weakref
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from llmkit.config import ModelConfig, TrainConfig
from llmkit.errors import LlmkitError
from llmkit.models import build_model
from llmkit.objectives import Batch
from llmkit.plan.finetune import Finetune
from llmkit.train import distributed
from llmkit.train.step import attention_kernels, make_state, train_step

# llmkit.plan's precision names -> the trainer's autocast dtype
TRAIN_DTYPES = {"fp32": "fp32", "amp": "bf16"}


class LiveBytes(TorchDispatchMode):
    """Bytes of tensor storage alive, followed operation by operation, and their peak.

    Storages made before the mode is entered are not seen; ``track`` adds them. Aliases (views,
    in-place results) share a storage and count once.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def track(self, tensor: torch.Tensor) -> None:
        if tensor.is_sparse:  # a lookup's row gradient (train.step.sparse_lookups): its two dense parts
            self.track(tensor._indices())
            self.track(tensor._values())
            return
        storage = tensor.untyped_storage()
        if storage in self._seen or tensor.device.type == "meta":
            return
        size = storage.nbytes()
        # the callback runs when the storage's last reference goes: its bytes are free again
        self._seen[storage] = size
        weakref.finalize(storage, self._free, size).atexit = False  # nothing to count at shutdown
        self.live += size
        self.peak = max(self.peak, self.live)

    def _free(self, size: int) -> None:
        self.live -= size

    def reset_peak(self) -> None:
        self.peak = self.live

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self.track(value)
        return out


class CudaBytes:
    """The same interface over the CUDA caching allocator's own counters."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @property
    def live(self) -> int:
        return torch.cuda.memory_allocated(self.device)

    @property
    def peak(self) -> int:
        return torch.cuda.max_memory_allocated(self.device)

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def __enter__(self) -> CudaBytes:
        torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc) -> None:
        return None


@dataclass
class Measured:
    """Bytes measured over ``steps`` training steps."""

    device: str
    attention: str  # the SDPA kernel the blocks ran: "math" or "flash"
    steps: int
    weights: int  # parameters, each tensor once
    gradients: int  # every .grad of the last step
    optimizer_states: int  # every tensor in the optimizer's state
    activations: int  # last step: peak from the forward's start to the logits' gradient, over the bytes live before
    peak: int  # peak of live tensor bytes over the whole run (model, optimizer, steps)
    seconds: float


def resolve_device(device: str = "auto") -> torch.device:
    """ "auto" (CUDA when available, else the CPU), "cpu", "cuda" or "cuda:N", as the trainer takes it."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise LlmkitError(f"device '{device}' is not valid", "use auto, cpu, cuda or cuda:N")
    return distributed.init(device).device


def attention_kernel(device: torch.device, seq: int) -> str:
    """The SDPA kernel llmkit's training step runs, as ``llmkit.plan`` names them: "math" where the
    trainer restricts SDPA to it (CPU, short sequences), else "flash" (CPU flash; CUDA's flash or
    memory-efficient kernel, which keep no seq x seq tensor either)."""
    return "math" if attention_kernels(device, seq) == [SDPBackend.MATH] else "flash"


def check_room(needed: float, device: torch.device, share: float = 0.5) -> None:
    """Refuse to measure a step predicted to need more than ``share`` of the device's memory."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
    else:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > share * total:
        raise LlmkitError(
            f"the step is predicted to need {needed / 1e9:.1f} GB, over {share:.0%} of {device}'s {total / 1e9:.1f} GB",
            "measure a smaller --batch or --seq, or a smaller model",
        )


def random_batch(cfg: ModelConfig, batch: int, seq: int, device: torch.device, generator: torch.Generator) -> Batch:
    """Uniform random ids of ``batch`` x ``seq`` with a target at every position; an encoder-decoder gets
    ``seq`` decoder tokens too. Memory depends on the shapes, not on the ids."""

    def ids() -> torch.Tensor:
        return torch.randint(cfg.vocab_size, (batch, seq), generator=generator).to(device)

    if cfg.family == "encoder" and cfg.encoder_head != "mlm":
        raise LlmkitError(
            f"--measure trains language-model heads; this encoder's is {cfg.encoder_head}",
            "use --model.encoder_head mlm",
        )
    inputs = {"input_ids": ids()}
    if cfg.family == "encoder_decoder":
        inputs["decoder_input_ids"] = ids()
    return Batch(inputs, ids())


def measure_training(
    cfg: ModelConfig,
    batch: int,
    seq: int,
    precision: str = "fp32",
    optimizer: str = "adamw",
    checkpointing: bool = False,
    steps: int = 3,
    device: torch.device | None = None,
    seed: int = 0,
    finetune: Finetune | None = None,
) -> Measured:
    """Run ``steps`` steps of llmkit's ``train_step`` and measure their memory.

    Order: start counting -> build the model (seeded) -> ``make_state`` (AdamW;
    replaced by SGD with momentum 0.9 for ``optimizer="sgd"``) -> steps on random batches, hooks
    marking each forward's start and each gradient -> read weights, gradients and states off the
    tensors. ``precision``: "fp32", or "amp" (bf16 autocast over fp32 weights, as llmkit pretrains).
    ``device``: None for CUDA when available, else the CPU. ``finetune`` (lora, qlora): the built
    model is made the frozen base first (``prepare_finetune``); weights then count its quantized
    buffers too.
    """
    device = device or resolve_device("auto")
    if precision not in TRAIN_DTYPES:
        raise LlmkitError(f"--measure runs fp32 or amp, not {precision}", "pass --precision fp32 or --precision amp")
    if optimizer not in ("adamw", "sgd"):
        raise LlmkitError(f"--measure runs adamw or sgd, not {optimizer}", "pass --optimizer adamw or sgd")
    train_cfg = TrainConfig(
        batch_size=batch, block_size=seq, dtype=TRAIN_DTYPES[precision], activation_checkpointing=checkpointing,
        steps=steps, warmup_steps=0, device=str(device), seed=seed,
    )  # fmt: skip
    env = distributed.init(train_cfg.device)
    meter = CudaBytes(env.device) if env.device.type == "cuda" else LiveBytes()
    torch.manual_seed(seed)
    start = time.perf_counter()
    with meter:
        model = prepare_finetune(build_model(cfg, env.device), finetune, precision)
        if finetune is not None and finetune.adapted:
            # the float model built here to be frozen/quantized is gone: a fine-tuning run loads its
            # base already in that form, so the peak counts from the prepared base
            meter.reset_peak()
        state = make_state(model, train_cfg, env)
        if optimizer == "sgd":
            sgd = torch.optim.SGD(state.raw.parameters(), lr=train_cfg.lr, momentum=0.9)
            state = dataclasses.replace(state, optimizer=sgd)
        marks = _Marks(meter, state.raw)
        generator = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            marks.new_step()
            train_step(state, [random_batch(cfg, batch, seq, env.device, generator)])
        marks.remove()
        if env.device.type == "cuda":
            torch.cuda.synchronize(env.device)
    params = list(state.raw.parameters())
    states = {id(t): t for s in state.optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)}
    return Measured(
        device=str(env.device),
        attention=attention_kernel(env.device, seq),
        steps=steps,
        weights=sum(p.nbytes for p in params) + _quantized_bytes(state.raw),
        gradients=marks.gradients,
        optimizer_states=sum(t.nbytes for t in states.values()),
        activations=marks.activations,
        peak=max(marks.overall, meter.peak),
        seconds=time.perf_counter() - start,
    )


def prepare_finetune(model: torch.nn.Module, ft: Finetune | None, precision: str) -> torch.nn.Module:
    """The model a fine-tuning step trains, from a built one. Order: qlora: quantize every linear
    layer and the embeddings (``ft.quant``) -> amp: cast the frozen base to bf16 (it never changes, so
    it needs no fp32 copy; autocast would cast it anyway) -> wrap the targets in fp32 LoRA adapters
    (``llmkit.lora.apply_lora``, which freezes the rest). full or None: the model as built."""
    if ft is None or not ft.adapted:
        return model
    from llmkit.lora import LoraConfig, apply_lora
    from llmkit.quantize import QuantSpec, quantize_model

    if ft.method == "qlora":
        quantize_model(model, QuantSpec(ft.quant, ft.group_size if ft.quant == "int4" else None))
    if precision == "amp":
        model.to(torch.bfloat16)
    apply_lora(model, LoraConfig(rank=ft.rank, alpha=ft.alpha, target_modules=list(ft.targets)))
    return model


def _quantized_bytes(model: torch.nn.Module) -> int:
    """Stored bytes of quantized matrices (buffers, not parameters), each once."""
    from llmkit.quantize import QuantizedMatrix

    return sum(m.qweight.nbytes + m.scales.nbytes for m in model.modules() if isinstance(m, QuantizedMatrix))


class _Marks:
    """Hooks on the bare model that split a step. A forward pre-hook notes the bytes live as the
    forward starts and resets the peak; the gradient of the model's output (the logits), made once
    the loss's backward is done and before any weight's, closes the window: its peak over the start
    is what the step stored for backward plus the loss's working set. Each parameter gradient adds
    its size. The meter's peak is reset every step, so the overall peak is kept here."""

    def __init__(self, meter, model: torch.nn.Module) -> None:
        self.meter, self.gradients, self.activations, self.overall = meter, 0, 0, 0
        self._start = 0
        self._handles = [model.register_forward_pre_hook(self._forward_start)]
        self._handles.append(model.register_forward_hook(self._forward_end))
        self._handles += [p.register_hook(self._grad) for p in model.parameters() if p.requires_grad]

    def new_step(self) -> None:
        self.gradients = 0

    def _forward_start(self, module, args) -> None:
        self.overall = max(self.overall, self.meter.peak)
        self._start = self.meter.live
        self.meter.reset_peak()

    def _forward_end(self, module, args, output) -> None:
        output.logits.register_hook(self._output_grad)

    def _output_grad(self, grad: torch.Tensor) -> None:
        self.activations = self.meter.peak - self._start

    def _grad(self, grad: torch.Tensor) -> None:
        # a lookup's row gradient lands in a dense one of the parameter's size (train.step.sparse_lookups)
        self.gradients += grad.numel() * grad.element_size()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
