"""Memory to serve a model (weights + KV cache) and to train it (weights, gradients, optimizer states,
activations; ZeRO sharding), per GPU."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from llmkit.config import ModelConfig
from llmkit.errors import LlmkitError
from llmkit.plan.activations import Activations, activation_memory
from llmkit.plan.finetune import frozen_weight_bytes, lora_parameters, lora_targets
from llmkit.plan.parameters import ModelSize
from llmkit.plan.precision import PRECISIONS, Precision, optimizer_bytes
from llmkit.plan.setup import TrainingSetup


@dataclass
class InferenceMemory:
    """Bytes to serve ``batch`` sequences of ``seq`` tokens: weights + KV cache (+ overhead)."""

    weights: float
    kv_cache: float
    overhead: float

    @property
    def total(self) -> float:
        return self.weights + self.kv_cache + self.overhead


def kv_cache_bytes(cfg: ModelConfig, batch: int, seq: int, precision: Precision) -> float:
    """Keys and values of every self-attention layer, 2 x layers x batch x seq x (kv heads x head dim);
    T5's decoder also keeps the cross-attention keys and values of the encoder output. Encoders
    keep none. Weight-only quantization (int8/int4) leaves the cache in 16 bits."""
    kvd = cfg.n_kv_head * cfg.head_dim
    if cfg.family == "encoder":
        return 0.0
    layers = cfg.n_layer if cfg.family == "decoder" else 2 * cfg.n_decoder_layer
    return 2 * layers * batch * seq * kvd * precision.kv


def inference_memory(
    model: ModelSize, batch: int, seq: int, precision: Precision, overhead: float = 0.0
) -> InferenceMemory:
    weights = model.parameters * precision.weights
    cache = kv_cache_bytes(model.cfg, batch, seq, precision)
    return InferenceMemory(weights, cache, overhead * (weights + cache))


@dataclass
class TrainingMemory:
    """Bytes per GPU of a training step, by component, and the peak.

    With gradients freed between steps (PyTorch's ``zero_grad(set_to_none=True)``, llmkit's step) the
    peak is the larger of two moments: backward starting (stored activations + their working set, no
    gradient yet) and backward ending (every gradient + ``gradient_working``: the logits the step
    still holds and, for an embedding used twice (tied head, T5), its gradients being summed). With
    persistent gradient buffers (Megatron, DeepSpeed) gradients and activations add up.
    """

    weights: float
    master_weights: float
    gradients: float
    optimizer_states: float
    activations: Activations
    gradient_working: float
    persistent_grads: bool
    overhead_fraction: float
    method: str = "full"  # full, lora or qlora (llmkit.plan.finetune)
    trainable: int | None = None  # parameters that get gradients (None: all of them)

    @property
    def tensors_peak(self) -> float:
        act, end = self.activations.total, self.gradients + self.gradient_working
        moving = self.gradients + act if self.persistent_grads else max(act, end)
        return self.weights + self.master_weights + self.optimizer_states + moving

    @property
    def overhead(self) -> float:
        return self.overhead_fraction * self.tensors_peak

    @property
    def peak(self) -> float:
        return self.tensors_peak + self.overhead


def training_memory(model: ModelSize, setup: TrainingSetup) -> TrainingMemory:
    """Per-GPU memory of data-parallel training, ``setup.batch`` sequences per GPU.

    ZeRO (Rajbhandari et al. 2020) over ``gpus``: stage 1 divides the optimizer states (with the
    fp32 master weights, which are part of them) by ``gpus``, stage 2 also the gradients, stage 3
    also the weights. Mixed precision with AdamW is the paper's 2 + 2 + 12 = 16 bytes per parameter.
    ``setup.finetune`` lora/qlora: see ``adapter_training_memory``; full (or None) is this function's count.
    """
    precision = setup.precision
    if not precision.trainable:
        raise LlmkitError(f"{precision.name} is an inference format", "train in fp32, amp, mixed or bf16")
    if setup.finetune is not None and setup.finetune.adapted:
        return adapter_training_memory(model, setup)
    n, cfg = model.parameters, model.cfg
    shard = [setup.gpus if setup.zero >= stage else 1 for stage in (1, 2, 3)]
    activations = activation_memory(cfg, setup)
    # The token embedding takes a gradient from each use (the lookup, T5's second lookup, a tied
    # head); autograd sums them pairwise into new tensors, holding three V x d gradients at once.
    tied = cfg.tie_embeddings and (cfg.family != "encoder" or cfg.encoder_head == "mlm")
    uses = (2 if cfg.family == "encoder_decoder" else 1) + (1 if tied else 0)
    summed = 2 * cfg.vocab_size * cfg.d_model * precision.grads if uses > 1 else 0
    return TrainingMemory(
        weights=n * precision.weights / shard[2],
        master_weights=n * precision.master / shard[0],
        gradients=n * precision.grads / shard[1],
        optimizer_states=n * optimizer_bytes(setup.optimizer, precision) / shard[0],
        activations=activations,
        gradient_working=activations.stored.get("logits", 0.0) + summed,
        persistent_grads=precision.persistent_grads,
        overhead_fraction=setup.overhead,
    )


ADAPTER_BYTES = 4  # LoRA's A and B stay fp32 whatever the base (peft's autocast_adapter_dtype, llmkit.lora)


def adapter_training_memory(model: ModelSize, setup: TrainingSetup) -> TrainingMemory:
    """Per-GPU memory of LoRA (or QLoRA) fine-tuning (``setup.finetune``): a frozen base, fp32 adapters that train.

    Order: the frozen base in its precision (16 bits under autocast, ``precision.weights`` otherwise;
    qlora: quantized matrices + scales, the rest in float) -> the adapter's parameters, gradients and
    optimizer states in fp32 -> activations: the base's as a 16-bit step keeps them (with autocast
    the 16-bit base needs no casts), plus each adapted layer's input, copied for A, and A's output.
    A quantized matrix keeps nothing for backward (``quantize.layers.FrozenMatmul`` dequantizes it
    again there). No embedding gradient is summed: the embeddings are frozen.
    """
    cfg, ft, precision, batch, seq = model.cfg, setup.finetune, setup.precision, setup.batch, setup.seq
    shard = [setup.gpus if setup.zero >= stage else 1 for stage in (1, 2, 3)]
    trainable = lora_parameters(cfg, ft)
    base = PRECISIONS["bf16"] if precision.autocast else precision  # how the frozen base's step keeps tensors
    acts = activation_memory(cfg, replace(setup, precision=base), frozen=True)
    # each adapted layer keeps its input (A's own 16-bit copy) and A's output, rank wide
    kept = {name: batch * seq * (n_in + ft.rank) * base.matmul for name, (n_in, _) in lora_targets(cfg, ft).items()}
    if setup.recompute == "full":  # inside a checkpointed block they live only while that one block is recomputed
        blocks: dict[str, float] = {}
        for name, value in kept.items():
            block = re.match(r"(.*\.layers\.\d+)\.", name)
            blocks[block[1] if block else name] = blocks.get(block[1] if block else name, 0.0) + value
        in_blocks = {k: v for k, v in blocks.items() if ".layers." in k}
        acts.layer_working += max(in_blocks.values(), default=0.0)
        kept = {k: v for k, v in blocks.items() if k not in in_blocks}
    extra = {"LoRA inputs and A outputs": sum(kept.values())}
    if precision.autocast:
        extra["autocast adapter copies"] = 2 * trainable
    acts.stored.update(extra)
    float_bytes = 2 if precision.autocast else precision.weights
    fp32 = PRECISIONS["fp32"]
    return TrainingMemory(
        weights=(frozen_weight_bytes(cfg, model.parameters, ft, float_bytes) + trainable * ADAPTER_BYTES) / shard[2],
        master_weights=0.0,
        gradients=trainable * ADAPTER_BYTES / shard[1],
        optimizer_states=trainable * optimizer_bytes(setup.optimizer, fp32) / shard[0],
        activations=acts,
        gradient_working=acts.stored.get("logits", 0.0),
        persistent_grads=precision.persistent_grads,
        overhead_fraction=setup.overhead,
        method=ft.method,
        trainable=trainable,
    )
