"""The plan as text: the tables `llmkit plan` prints, and measured bytes beside the prediction.

Standard library only (L0), like the rest of the package. Bytes are decimal (1 GB = 1e9 bytes).
"""

from __future__ import annotations

from llmkit.config import ModelConfig
from llmkit.plan.precision import PRECISIONS, optimizer_bytes
from llmkit.units import human_bytes, human_count


def describe(cfg: ModelConfig) -> str:
    """One line: family, layers, widths, heads, vocabulary and context window."""
    layers = f"{cfg.n_layer}+{cfg.n_decoder_layer}" if cfg.family == "encoder_decoder" else str(cfg.n_layer)
    kv = f", {cfg.n_kv_head} kv heads" if cfg.n_kv_head != cfg.n_head else ""
    return (
        f"{cfg.family}, {layers} layers, d_model {cfg.d_model}, {cfg.n_head} heads x {cfg.head_dim}{kv}, "
        f"d_ff {cfg.d_ff} {cfg.mlp}, vocab {cfg.vocab_size}, context {cfg.max_seq_len}"
    )


def sci(x: float) -> str:
    """3 significant digits, exponent without padding: 3.15e23."""
    mantissa, _, exponent = f"{x:.3g}".partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa


def _rows(rows: list[tuple[str, str, str]]) -> list[str]:
    return [f"  {name:<34}{value:>12}  {note}".rstrip() for name, value, note in rows]


def render(plan) -> str:
    """The plan as text tables."""
    lines: list[str] = []
    if plan.model is not None:
        lines += _render_model(plan)
    if plan.inference is not None:
        lines += _render_inference(plan)
    if plan.training is not None:
        lines += _render_training(plan)
    if plan.compute is not None:
        lines += _render_compute(plan)
    if plan.optimum is not None:
        lines += _render_optimum(plan.optimum)
    lines += [f"note: {note}" for note in plan.notes]
    return "\n".join(lines)


def _render_model(plan) -> list[str]:
    m = plan.model
    lines = [f"{m.source}: {describe(m.cfg)}" if not m.assumed_shape else m.source]
    lines.append(f"parameters: {m.parameters:,} ({human_count(m.parameters)}); in matrix multiplies (6N's N): "
                 f"{m.matmul_parameters:,}")  # fmt: skip
    if not m.assumed_shape:
        lines.append(f"  {'component':<34}{'parameters':>12}  share")
        for name, count in sorted(m.components.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {name:<34}{count:>12,}  {count / m.parameters:.1%}")
    return lines


def _render_inference(plan) -> list[str]:
    i, o, p = plan.inference, plan.options, PRECISIONS[plan.options.precision]
    lines = [f"inference, batch {o.batch} x {plan.seq} tokens, {p.name} ({p.weights:g} bytes per weight):"]
    return lines + _rows([
        ("weights", human_bytes(i.weights), ""),
        ("KV cache", human_bytes(i.kv_cache), f"{p.kv} bytes per value; encoders keep none"),
        (f"overhead ({o.overhead:.0%})", human_bytes(i.overhead), ""),
        ("total", human_bytes(i.total), ""),
    ])  # fmt: skip


def _render_training(plan) -> list[str]:
    t, o, p = plan.training, plan.options, PRECISIONS[plan.options.precision]
    a = t.activations
    shard = f", ZeRO-{o.zero} over {o.gpus} GPUs" if o.zero else f", {o.gpus} GPU{'s' * (o.gpus > 1)}"
    lines = [
        f"training per GPU, batch {o.batch} x {plan.seq} tokens, {p.name} ({p.description}),",
        f"  {o.optimizer}, recomputation {a.recompute}, {a.attention} attention{shard}:",
    ]
    if t.trainable is not None:
        return lines + _adapter_rows(plan)
    rows = [
        ("weights", human_bytes(t.weights), f"{p.weights:g} bytes/param"),
        ("master weights (fp32)", human_bytes(t.master_weights), f"{p.master:g} bytes/param"),
        ("gradients", human_bytes(t.gradients), f"{p.grads:g} bytes/param"),
        ("optimizer states", human_bytes(t.optimizer_states), f"{optimizer_bytes(o.optimizer, p):g} bytes/param"),
        ("activations stored for backward", human_bytes(sum(a.stored.values())), ""),
    ]
    if not p.master:
        del rows[1]
    rows += [(f"  {name}", human_bytes(value), "") for name, value in a.stored.items()]
    rows += [
        ("backward working set", human_bytes(a.working), "loss" if a.loss_working >= a.layer_working else "one block"),
        ("peak of tensors", human_bytes(t.tensors_peak), _peak_rule(t)),
        (f"overhead ({o.overhead:.0%})", human_bytes(t.overhead), ""),
        ("peak", human_bytes(t.peak), ""),
    ]
    per_layer = sum(a.per_layer.values()) / (o.batch * plan.seq)
    lines += _rows(rows)
    lines.append(f"  one block keeps {per_layer:,.0f} bytes per token ({o.batch * plan.seq:,} tokens)")
    return lines


def _adapter_rows(plan) -> list[str]:
    """The training table of LoRA / QLoRA fine-tuning: frozen base, fp32 adapter, activations."""
    t, o, ft = plan.training, plan.options, plan.options.finetune
    a, n = t.activations, plan.model.parameters
    base = f"{ft.quant} matrices + 16-bit rest" if ft.method == "qlora" else "16-bit frozen base"
    lines = [
        f"  {ft.method} rank {ft.rank} on {', '.join(ft.targets)}: {t.trainable:,} trainable parameters "
        f"({t.trainable / n:.2%} of {human_count(n)})"
    ]
    rows = [
        ("weights", human_bytes(t.weights), f"{base} + fp32 adapter"),
        ("gradients", human_bytes(t.gradients), "adapter only, fp32"),
        ("optimizer states", human_bytes(t.optimizer_states), "adapter only, fp32"),
        ("activations stored for backward", human_bytes(sum(a.stored.values())), ""),
    ]
    rows += [(f"  {name}", human_bytes(value), "") for name, value in a.stored.items()]
    rows += [
        ("backward working set", human_bytes(a.working), "loss" if a.loss_working >= a.layer_working else "one block"),
        ("peak of tensors", human_bytes(t.tensors_peak), _peak_rule(t)),
        (f"overhead ({o.overhead:.0%})", human_bytes(t.overhead), ""),
        ("peak", human_bytes(t.peak), ""),
    ]
    return lines + _rows(rows)


def _peak_rule(t) -> str:
    if t.persistent_grads:
        return "weights + master + states + grads + activations"
    return "weights + master + states + max(activations, grads + end of backward)"


def _render_compute(plan) -> list[str]:
    c = plan.compute
    budget = " (20 per parameter; set --tokens)" if c.tokens_from_rule else ""
    days = " | ".join(f"{gpu} {d:,.0f}" if d >= 100 else f"{gpu} {d:.3g}" for gpu, d in c.days.items())
    return [
        "compute:",
        f"  FLOPs per token: 6N {sci(c.flops_per_token_6n)}; with attention (PaLM) {sci(c.flops_per_token)}",
        f"  {sci(c.tokens)} tokens{budget}: {sci(c.flops)} FLOPs (6ND {sci(c.flops_6nd)}) = "
        f"{c.pf_days:,.4g} petaFLOP/s-days (6ND: {c.pf_days_6nd:,.4g})",
        f"  days on {c.gpus} GPU{'s' * (c.gpus > 1)} at {c.mfu:.0%} MFU: {days}",
    ]


def _render_optimum(o) -> list[str]:
    def sizes(parameters: float, tokens: float, loss: float) -> str:
        return f"{human_count(parameters)} parameters, {human_count(tokens)} tokens (fitted loss {loss:.3f})"

    return [
        f"compute-optimal for {sci(o.flops)} FLOPs (C = 6ND):",
        f"  20 tokens per parameter: {sizes(o.rule_parameters, o.rule_tokens, o.rule_loss)}",
        f"  {o.law_source}: {sizes(o.fit_parameters, o.fit_tokens, o.fit_loss)} = "
        f"{o.fit_tokens / o.fit_parameters:.1f} tokens per parameter",
    ]


def render_measured(plan, m) -> str:
    """Measured bytes next to the prediction for the same step (tensors only, no overhead)."""
    t = plan.training
    a = t.activations
    rows = [
        ("weights", t.weights, m.weights),
        ("gradients", t.gradients, m.gradients),
        ("optimizer states", t.master_weights + t.optimizer_states, m.optimizer_states),
        ("activations + loss working set", sum(a.stored.values()) + a.loss_working, m.activations),
        ("peak of tensors", t.tensors_peak, m.peak),
    ]
    lines = [
        f"measured on {m.device}: {m.steps} step{'s' if m.steps != 1 else ''} of llmkit's train_step, "
        f"{m.attention} attention, {m.seconds:.1f} s (tensor bytes, no overhead):",
        f"  {'':<34}{'predicted':>12}{'measured':>12}  measured/predicted",
    ]
    for name, predicted, measured in rows:
        ratio = f"{measured / predicted:.3f}" if predicted else "-"
        lines.append(f"  {name:<34}{human_bytes(predicted):>12}{human_bytes(measured):>12}  {ratio}")
    return "\n".join(lines)
