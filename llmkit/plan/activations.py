"""Activation memory of a training step, tensor by tensor, after Korthikanti et al. 2022."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from llmkit import cpu_kernels
from llmkit.config import ModelConfig
from llmkit.errors import LlmkitError
from llmkit.plan.parameters import block_matmul_weights, head_matmul_weights, matmul_weights, stacks
from llmkit.plan.precision import ATTENTION, DEVICES, RECOMPUTE, Precision
from llmkit.plan.setup import TrainingSetup

# What a training step keeps for backward, tensor by tensor, following Korthikanti et al. 2022
# ("Reducing Activation Recomputation in Large Transformer Models", sec. 4.1). Their count for a GPT
# layer in 16 bits with dropout is s*b*h*(34 + 5*a*s/h) bytes: attention 11sbh + 5as^2b, MLP 19sbh,
# norms 4sbh. The same accounting is generalised here to llmkit's variants (d_ff, gated MLPs,
# grouped-query attention, RMSNorm, no dropout, flash kernels, autocast) and checked against
# measured steps; with the paper's settings it reproduces their formula exactly (tests/test_plan.py).


@dataclass(frozen=True)
class _Step:
    """One training step's shapes: ``b`` sequences of ``s`` tokens, kernel, precision, recomputation,
    and the device type, where PyTorch's CPU and CUDA kernels keep different tensors."""

    cfg: ModelConfig
    p: Precision
    b: int
    s: int
    attention: str
    recompute: str
    device: str
    frozen: bool = False  # a frozen base (LoRA): no weight gradient, so a linear layer keeps no input

    @property
    def t(self) -> int:
        return self.b * self.s

    def mask(self, dtype_bytes: int) -> int:
        """Bytes per element of a dropout mask: CUDA's fused kernel keeps a bool; on the CPU llmkit's
        compiled kernel keeps none (backward regenerates the mask from its seed) and its torch-op
        fallback a scaled mask in the activation's dtype (llmkit.models.dropout)."""
        if self.device == "cuda":
            return 1
        return 0 if cpu_kernels.available() else dtype_bytes

    @property
    def math_bytes(self) -> int:
        """Bytes of the math kernel's tensors: on CPU it computes 16-bit inputs in fp32."""
        return 4 if self.p.autocast and self.device == "cpu" else self.p.matmul


def _norm_saved(st: _Step, in_bytes: float) -> float:
    """Bytes per token a norm keeps: LayerNorm its input and fp32 mean and rstd; llmkit's RMSNorm an
    fp32 copy of its input (the same tensor when it already is fp32), the normalized values and rsqrt
    (the normalized values only for the gain's gradient: not with a frozen gain)."""
    h = st.cfg.d_model
    if st.cfg.norm == "layernorm":
        return in_bytes * h + 8
    return 4 * h + (0 if st.frozen else in_bytes * h) + 4


def _attention_core(st: _Step, s_k: int, kernel: str) -> dict[str, float]:
    """Bytes the attention itself keeps for ``b`` x ``s`` queries over ``s_k`` keys.

    math: Q, K, V (expanded to every head under grouped-query attention) and the probabilities
    a x s x s_k per sequence (+ dropout's mask and output). flash (FlashAttention, Dao et al. 2022;
    PyTorch's flash and memory-efficient kernels): q, k, v, the output and an fp32 logsumexp per
    query and head, no s x s_k term.
    """
    cfg, p, b, s = st.cfg, st.p, st.b, st.s
    a, qd, kvd = cfg.n_head, cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    if kernel == "flash":
        return {"q, k, v, output": p.matmul * (2 * b * s * qd + 2 * b * s_k * kvd), "logsumexp": 4 * b * a * s}
    att = st.math_bytes
    probs = b * a * s * s_k
    out = {"Q, K, V": att * (b * s * qd + 2 * b * s_k * qd), "probabilities": att * probs}
    if cfg.dropout > 0:  # the dropout mask and its output, which the product with V keeps
        out["probabilities"] += (st.mask(att) + att) * probs
    if not st.frozen:  # a frozen o needs no input
        out["output projection input"] = p.matmul * b * s * qd  # a reshaped copy of the kernel's output
    return out


def _mlp_saved(st: _Step) -> float:
    """Bytes the feed-forward keeps: its input (autocast: one 16-bit copy per linear that reads it)
    and the d_ff-wide tensors: standard: activation input and output (ReLU keeps its output only,
    which down also reads); gated: gate output, activation output, up output and their product."""
    cfg, p, t = st.cfg, st.p, st.t
    copies = (2 if cfg.mlp == "gated" else 1) if p.autocast else 1
    wide = {("standard", False): 2, ("standard", True): 1, ("gated", False): 4, ("gated", True): 3}
    if st.frozen:  # frozen up/gate/down keep no input: only the activation's and the product's operands
        copies, wide = 0, {("standard", False): 1, ("standard", True): 1, ("gated", False): 3, ("gated", True): 2}
    return p.matmul * t * (copies * cfg.d_model + wide[cfg.mlp, cfg.activation == "relu"] * cfg.d_ff)


def _kernel(st: _Step) -> str:
    """Self-attention's kernel: an additive bias that needs a gradient (T5's relative positions) sends
    PyTorch's SDPA to the math kernel, which keeps the probabilities."""
    return "math" if st.cfg.pos == "relative" else st.attention


def layer_activations(st: _Step, cross: bool = False) -> dict[str, float]:
    """Bytes one block keeps for backward, by part (no recomputation). ``cross``: a T5 decoder block,
    whose cross-attention reads the encoder output of ``s`` tokens."""
    cfg, p, t, h = st.cfg, st.p, st.t, st.cfg.d_model
    n_norm = 3 if cross else 2
    parts = {"norms": t * n_norm * _norm_saved(st, p.residual)}
    # q, k and v read one input; autocast makes each its own 16-bit copy; frozen, none is kept
    parts["attention input"] = 0 if st.frozen else p.matmul * t * h * (3 if p.autocast else 1)
    for name, value in _attention_core(st, st.s, _kernel(st)).items():
        parts[f"attention {name}"] = value
    if cross:  # q reads the block's stream; k and v the encoder output (shared across layers unless cast)
        parts["cross-attention inputs"] = 0 if st.frozen else p.matmul * t * h * (3 if p.autocast else 1)
        for name, value in _attention_core(st, st.s, st.attention).items():
            parts[f"cross-attention {name}"] = value
    parts["feed-forward"] = _mlp_saved(st)
    if cfg.dropout > 0:  # masks after attention, cross-attention and the MLP (their outputs are 16-bit)
        parts["dropout masks"] = t * h * n_norm * st.mask(p.matmul)
    return parts


def _layer_backward(st: _Step, cross: bool) -> float:
    """Working memory of backward through one block: an operation holds the gradient of its output
    and of its input at once; the largest such pair is the attention probabilities (math kernel) or
    the d_ff-wide feed-forward tensors."""
    cfg, p, t = st.cfg, st.p, st.t
    largest = [p.matmul * t * cfg.d_ff, p.residual * t * cfg.d_model]
    for kernel in [_kernel(st)] + ([st.attention] if cross else []):
        if kernel == "math":
            largest.append(st.math_bytes * st.b * cfg.n_head * st.s * st.s)
    return 2 * max(largest)


@dataclass
class Activations:
    """Activation memory of one training step, bytes: what is stored for backward, by part, and the
    largest transient on top of it (the backward working set)."""

    stored: dict[str, float]
    per_layer: dict[str, float]  # one block of the (first) stack, without recomputation
    loss_working: float  # backward of the loss: two fp32 gradients of the log-probabilities
    layer_working: float  # backward of one block (+ its recomputed activations under recomputation)
    recompute: str
    attention: str

    @property
    def working(self) -> float:
        return max(self.loss_working, self.layer_working)

    @property
    def total(self) -> float:
        return sum(self.stored.values()) + self.working


def activation_memory(cfg: ModelConfig, setup: TrainingSetup, frozen: bool = False) -> Activations:
    """Bytes a training step of ``setup.batch`` x ``setup.seq`` tokens keeps for backward, and its working
    set (the setup's precision, recompute, attention kernel and device decide; its other fields do not).

    Order: the blocks (all of their activations; with ``selective`` recomputation all but the attention
    probabilities; with ``full`` recomputation -- llmkit's activation checkpointing -- each block's
    input only, as Korthikanti et al. sec. 5) -> outside the blocks: token ids and labels, norms,
    the head's input, the logits the step holds, the loss's fp32 log-probabilities, autocast's 16-bit
    weight copies. The working set is the larger of the loss's backward (two fp32 gradients of the
    log-probabilities) and one block's backward (with that block's recomputed activations under
    recomputation). An encoder-decoder gives both stacks ``seq`` tokens. ``device``: "cuda" or "cpu".
    ``frozen``: the base's weights take no gradient (LoRA): linear layers and norm gains keep nothing
    of their inputs for it (an adapter's own copies are counted by ``plan.memory``).
    """
    recompute, attention, device = setup.recompute, setup.attention, setup.device
    if recompute not in RECOMPUTE or attention not in ATTENTION or device not in DEVICES:
        raise LlmkitError(
            f"recompute={recompute!r}, attention={attention!r}, device={device!r}",
            f"choose from {RECOMPUTE}, {ATTENTION} and {DEVICES}",
        )
    st = _Step(cfg, setup.precision, setup.batch, setup.seq, attention, recompute, device, frozen)
    stored, layer_work = _blocks(st)
    stored.update(_outside_blocks(st))
    lm = cfg.family != "encoder" or cfg.encoder_head == "mlm"
    return Activations(
        stored={k: v for k, v in stored.items() if v},
        per_layer=layer_activations(st),
        loss_working=2 * 4 * st.t * cfg.vocab_size if lm else 0,
        layer_working=layer_work,
        recompute=recompute,
        attention=attention,
    )


def _blocks(st: _Step) -> tuple[Counter[str], float]:
    """What the blocks keep, and the largest working set of backward through one of them."""
    cfg, p = st.cfg, st.p
    stored: Counter[str] = Counter()
    work = 0.0
    for layers, cross in stacks(cfg):
        parts = layer_activations(st, cross)
        full = sum(parts.values())
        probs = sum(v for k, v in parts.items() if k.endswith("probabilities"))
        if st.recompute == "full":  # checkpoint() keeps each block's input; backward recomputes one block
            stored["blocks"] += layers * p.residual * st.t * cfg.d_model
            copies = 2 * block_matmul_weights(cfg, cross) if p.autocast else 0  # the recompute's weight casts
            work = max(work, full + copies + _layer_backward(st, cross))
        elif st.recompute == "selective":  # the probabilities are recomputed, one block at a time
            stored["blocks"] += layers * (full - probs)
            work = max(work, probs + _layer_backward(st, cross))
        else:
            stored["blocks"] += layers * full
            work = max(work, _layer_backward(st, cross))
        if cfg.pos == "relative":
            stored["position-bias bucket ids"] += 8 * st.s * st.s  # int64 (s, s) per stack
        if cfg.norm_placement == "pre":
            stored["final norms"] += st.t * _norm_saved(st, p.residual)
        if cfg.dropout > 0:  # the stack's input and output dropout
            stored["dropout masks"] += 2 * st.t * cfg.d_model * st.mask(p.residual)
    return stored, work


def _outside_blocks(st: _Step) -> dict[str, float]:
    """Token ids and labels, BERT's embedding norm, T5's encoder output, the head, and autocast's
    16-bit copies of the weights (a checkpointed block's die with the forward, the head's stay)."""
    cfg, p, t = st.cfg, st.p, st.t
    lookups = 2 if cfg.type_vocab_size else 1  # token (and token-type) ids, int64, kept by the embedding
    out = {"token ids and labels": 8 * t * (lookups + 1 + (1 if cfg.family == "encoder_decoder" else 0))}
    if cfg.norm_placement == "post":
        out["embedding norm"] = t * _norm_saved(st, p.residual)
    if cfg.family == "encoder_decoder" and not p.autocast and not st.frozen:
        out["encoder output"] = p.matmul * t * cfg.d_model  # one tensor every cross-attention reads
    out.update(_head(st))
    if p.autocast:
        copied = head_matmul_weights(cfg) if st.recompute == "full" else matmul_weights(cfg)
        out["autocast weight copies"] = 2 * copied
    return out


def _head(st: _Step) -> dict[str, float]:
    """The head's input, the logits the training step holds, and the fp32 log-probabilities the loss
    keeps (it casts the logits to fp32 first). BERT's MLM head: dense -> act -> norm -> decoder."""
    cfg, p, t, h = st.cfg, st.p, st.t, st.cfg.d_model
    if cfg.family == "encoder" and cfg.encoder_head != "mlm":
        return {"head input": 0 if st.frozen else p.matmul * st.b * h}  # the first token only
    out = {"head input": 0 if st.frozen else p.matmul * t * h}
    if cfg.family == "encoder":  # dense input, activation input, norm input (16-bit), decoder input
        linear_inputs = 0 if st.frozen else 2  # frozen dense and decoder keep none
        out["head input"] = p.matmul * t * h * (1 + linear_inputs) + t * _norm_saved(st, p.matmul)
    # BERT's decoder output plus its fp32 bias promotes the logits to fp32 under autocast
    mlm_fp32 = cfg.family == "encoder" and p.autocast
    out["logits"] = (4 if mlm_fp32 else p.matmul) * t * cfg.vocab_size
    out["log-probabilities (fp32)"] = 4 * t * cfg.vocab_size
    return out
