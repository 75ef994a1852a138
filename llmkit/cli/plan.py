"""`llmkit plan`: parameters, memory (inference and training), FLOPs, GPU-days and compute-optimal
sizes for a model before it exists; ``--measure`` holds the memory against real training steps."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from llmkit.cli._options import add_model_flags, model_overrides
from llmkit.cli._options import whole_number as _int
from llmkit.errors import LlmkitError
from llmkit.files import read_json

_DESCRIPTION = """\
Plan a model before building it. MODEL is a preset (gpt2, smollm2-135m, ...), an llmkit checkpoint
directory or its config.json, a run config (.toml with a [model] table; its [train] batch_size,
block_size, dtype and activation_checkpointing become the defaults here), or a bare parameter count
(7e9, 1.3B, 350M). A bare count is shaped like GPT-3 (width 128 x layers, heads of 128,
d_ff 4 x width, vocabulary 50257): memory and 6N use the count, the shape only sizes activations,
the KV cache and attention FLOPs.

Printed: parameters by component (tied weights once); inference memory (weights + KV cache for
--batch x --seq); training memory per GPU (weights, master weights, gradients, optimizer states,
activations stored for backward + the backward working set, overhead, peak); training FLOPs,
petaFLOP/s-days and days on V100 / A100 / H100 / H200; with --flops, the compute-optimal model
size and tokens (with --law RESULTS, from a law fitted to your own sweep: docs/scaling.md). Bytes are
decimal: 1 GB = 1e9 bytes.

Bytes per parameter (weights + master + gradients + optimizer states, AdamW):
  fp32   4 + 0 + 4 + 8 = 16     fp32 activations
  amp    4 + 0 + 4 + 8 = 16     torch.autocast bf16 as llmkit pretrains; 16-bit copies of the
                                weights (2 bytes) and of the matmul inputs are kept for backward
  mixed  2 + 4 + 2 + 8 = 16     Megatron/DeepSpeed: 16-bit weights, fp32 master copy, 16-bit grads
                                (ZeRO paper's 2 + 2 + 12); gradient buffers persist across steps
  bf16, fp16  2 + 0 + 2 + 4 = 8 pure 16 bits, optimizer states included
  int8 1, int4 0.5              weight-only quantization, inference only (scales not counted)
SGD with momentum keeps one state value (4 bytes in fp32), 8-bit AdamW two 1-byte values.

Activations follow Korthikanti et al. 2022 (s*b*h*(34 + 5*a*s/h) bytes per GPT layer in 16 bits
with dropout), counted tensor by tensor for llmkit's models: flash kernels keep no s x s term;
--checkpointing keeps only each block's input (full recomputation, what llmkit pretrain's
activation_checkpointing does) and recomputes one block at a time; --checkpointing selective drops
the attention probabilities only (Megatron's selective recomputation; not in llmkit's trainer).

FLOPs per token: 6N (N = weights of matrix multiplies) plus PaLM's attention term 12 x layers x
heads x head_dim x seq; time = FLOPs / (GPUs x peak x MFU), peaks 125 (V100 fp16), 312 (A100
bf16), 989 (H100 and H200 SXM bf16) TFLOP/s dense. Compute-optimal: 20 tokens per parameter
(C = 6ND -> N = sqrt(C/120)) and Chinchilla's parametric fit (Hoffmann et al. 2022, approach 3).

Fine-tuning (--finetune full | lora | qlora, or --lora R): full is the training count above. lora
keeps the base frozen in 16 bits (amp) and trains fp32 adapters of rank R on --lora-targets (llmkit
names, peft's suffix rule; default attn.q,attn.v): weights = base + adapter, gradients and optimizer
states for the adapter only; activations as a 16-bit step keeps them, plus each adapted layer's
input copy. qlora stores the base's matrices (and embeddings) in --quant int4 (default) or int8, and
adds the 16-bit copy each dequantized matrix keeps for backward.

--measure runs a few real training steps (llmkit's train_step on random tokens, on CUDA when
available, else the CPU; with --finetune, on the base made frozen/quantized and wrapped by
llmkit.lora) and prints measured peak memory and its parts next to the prediction.
"""

_EPILOG = """\
examples:
  llmkit plan gpt2 --batch 8 --seq 1024 --precision amp
  llmkit plan 7e9 --precision mixed --gpus 8 --zero 3 --checkpointing --tokens 1T
  llmkit plan configs/tiny-decoder.toml --measure
  llmkit plan --flops 5.76e23 --json
  llmkit plan --flops 1e16 --law runs/scale/results.jsonl
  llmkit plan smollm2-135m --batch 4 --seq 512 --precision amp --finetune qlora --lora 16
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="parameters, memory, FLOPs, GPU-days and compute-optimal size of a model, before building it",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", nargs="?", help="preset, checkpoint dir, config.json, .toml, or a count")
    g = p.add_argument_group("shape of a step")
    g.add_argument("--batch", metavar="N", help="sequences per GPU per step (default 1, or [train] batch_size)")
    g.add_argument("--seq", metavar="T", help="tokens per sequence (default: the context window, or block_size)")
    g = p.add_argument_group("precision and optimizer")
    g.add_argument("--precision", choices=("fp32", "amp", "mixed", "bf16", "fp16", "int8", "int4"),
                   help="byte accounting above (default mixed, or amp with --measure, as llmkit trains; "
                   "a .toml's dtype bf16 means amp)")  # fmt: skip
    g.add_argument("--optimizer", choices=("adamw", "sgd", "adamw8bit"), default="adamw",
                   help="AdamW (2 states), SGD with momentum (1), 8-bit AdamW (2 one-byte); default adamw")  # fmt: skip
    g.add_argument("--checkpointing", nargs="?", const="full", choices=("none", "full", "selective"),
                   help="activation recomputation: alone means full (llmkit's activation checkpointing); "
                   "selective recomputes attention only; default none")  # fmt: skip
    g.add_argument("--attention", choices=("flash", "math"),
                   help="flash: memory-efficient kernels, no seq x seq term (default); math: explicit "
                   "softmax, probabilities kept (Korthikanti's count); --measure uses the kernel it runs")  # fmt: skip
    g = p.add_argument_group("fine-tuning")
    g.add_argument("--finetune", choices=("full", "lora", "qlora"),
                   help="plan fine-tuning: every parameter (full), a LoRA adapter over a frozen 16-bit base, or over "
                   "a quantized base (qlora); default: pretraining, or lora with --lora")  # fmt: skip
    g.add_argument("--lora", metavar="R", help="LoRA rank (default 8 with --finetune lora/qlora)")
    g.add_argument("--lora-targets", metavar="NAMES",
                   help="comma-separated llmkit layer names the adapter wraps (default attn.q,attn.v; e.g. "
                   "attn.q,attn.k,attn.v,attn.o,mlp.up,mlp.gate,mlp.down)")  # fmt: skip
    g.add_argument("--quant", choices=("int4", "int8"), default="int4",
                   help="qlora: the frozen base's format (default int4, group size 64)")  # fmt: skip
    g = p.add_argument_group("hardware and budget")
    g.add_argument(
        "--gpus", metavar="N", default="1", help="data-parallel GPUs: ZeRO divides by N, time too (default 1)"
    )
    g.add_argument("--zero", metavar="STAGE", default="0",
                   help="ZeRO stage: 1 shards optimizer states (and master weights), 2 also gradients, 3 also "
                   "weights (default 0, off)")  # fmt: skip
    g.add_argument("--tokens", metavar="D", help="training tokens, e.g. 300B (default: 20 per parameter)")
    g.add_argument("--mfu", metavar="F", default="0.4", help="model FLOPs utilization for GPU-days (default 0.4)")
    g.add_argument("--overhead", metavar="F", default="0.1",
                   help="memory overhead as a fraction of tensor bytes: allocator fragmentation, workspaces "
                   "(default 0.1; the CUDA context, ~0.5 GB per GPU, is not included)")  # fmt: skip
    g.add_argument("--flops", metavar="C", help="FLOP budget: print the compute-optimal parameters and tokens")
    g.add_argument("--law", metavar="RESULTS",
                   help="with --flops: the optimum from L(N, D) fitted to your own sweep (results.jsonl "
                   "of `llmkit scale sweep`; approach 3, docs/scaling.md), not Chinchilla's published one")  # fmt: skip
    g = p.add_argument_group("output and measurement")
    g.add_argument("--json", action="store_true", help="print JSON instead of tables")
    g.add_argument("--measure", action="store_true",
                   help="run real training steps here (fp32 or amp, adamw or sgd, one device) and compare")  # fmt: skip
    g.add_argument("--steps", metavar="N", default="3", help="training steps --measure runs (default 3)")
    g.add_argument("--device", default="auto",
                   help="where the step runs: auto, cpu, cuda or cuda:N. Plans are for CUDA unless cpu "
                   "(PyTorch's CPU kernels keep some tensors apart); --measure runs there, auto: CUDA if "
                   "available")  # fmt: skip
    add_model_flags(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from llmkit.plan import PlanOptions, make_plan, render, render_measured

    model, defaults = load_model(args.model, model_overrides(args), _int("--seq", args.seq))
    opts = PlanOptions(
        batch=_int("--batch", args.batch, defaults.get("batch", 1)),
        seq=_int("--seq", args.seq, defaults.get("seq")),
        # --measure runs real training steps, and llmkit trains in amp (bf16 autocast over fp32 weights)
        precision=args.precision or defaults.get("precision") or ("amp" if args.measure else "mixed"),
        optimizer=args.optimizer,
        recompute=args.checkpointing or defaults.get("recompute", "none"),
        attention=args.attention or "flash",
        device="cpu" if args.device == "cpu" else "cuda",
        gpus=_int("--gpus", args.gpus),
        zero=_int("--zero", args.zero, minimum=0),
        tokens=_count("--tokens", args.tokens),
        mfu=_float("--mfu", args.mfu),
        overhead=_float("--overhead", args.overhead),
        flops=_count("--flops", args.flops),
        finetune=_finetune(args),
    )
    if args.law is not None:
        if opts.flops is None:
            raise LlmkitError(
                "--law gives the compute-optimal size for a budget: it needs --flops C", "add --flops 1e16"
            )
        opts.law, opts.law_source = fitted_law(args.law)
    measured = device = None
    if args.measure:
        from llmkit.train.memory import attention_kernel, resolve_device

        _check_measurable(model, opts)
        device = resolve_device(args.device)
        opts.attention = attention_kernel(device, opts.seq or model.cfg.max_seq_len)  # the kernel the steps run
        opts.device = device.type
    plan = make_plan(model, opts)
    if args.measure:
        measured = _measure(plan, _int("--steps", args.steps), device)
    if args.json:
        report = plan.to_dict()
        if measured is not None:
            report["measured_bytes"] = vars(measured)
        print(json.dumps(report, indent=2))
        return
    print(render(plan))
    if measured is not None:
        print(render_measured(plan, measured))


# ---- inputs -------------------------------------------------------------------------------------
def fitted_law(path: str) -> tuple[dict[str, float], str]:
    """L(N, D) fitted (approach 3, no bootstrap) to a sweep's results file, and how the plan names it."""
    from llmkit.scale.fit import fit_law
    from llmkit.scale.results import read_results

    results = read_results(path)
    law = fit_law([r.params for r in results], [r.tokens for r in results], [r.val_loss for r in results])
    return law.to_dict(), f"law fitted to {path} (approach 3, {len(results)} points)"


def _finetune(args: argparse.Namespace):
    """The Finetune the flags ask for, or None for a pretraining plan."""
    from llmkit.plan import Finetune

    method = args.finetune or ("lora" if args.lora is not None else None)
    if method is None:
        if args.lora_targets is not None:
            raise LlmkitError("--lora-targets needs --lora R or --finetune lora", "add --lora 8")
        return None
    if method == "full" and (args.lora is not None or args.lora_targets is not None):
        raise LlmkitError("--finetune full trains every parameter: no --lora", "use --finetune lora or qlora")
    targets = tuple(t.strip() for t in (args.lora_targets or "attn.q,attn.v").split(",") if t.strip())
    return Finetune(method, rank=_int("--lora", args.lora, 8), targets=targets, quant=args.quant)


def load_model(text: str | None, overrides: dict[str, Any], seq: int | None = None):
    """(ModelSize or None, defaults for the options) from MODEL: a preset, a checkpoint directory or
    its config.json, a run config .toml, or a bare parameter count (its assumed context: ``seq``,
    at least 2048)."""
    from llmkit.config import PRESETS, ModelConfig
    from llmkit.plan import ModelSize, parse_count

    if text is None:
        return None, {}
    path = Path(text)
    if text in PRESETS:
        return ModelSize.from_config(ModelConfig.from_name(text, **overrides), f"preset {text}"), {}
    if path.is_dir() or path.suffix == ".json":
        return ModelSize.from_config(_read_config_json(path, overrides), str(path)), {}
    if path.suffix == ".toml":
        return _read_toml(path, overrides)
    try:
        count = parse_count(text)
    except LlmkitError:
        raise LlmkitError(
            f"'{text}' is not a preset, a checkpoint directory, a config file or a parameter count",
            f"presets: {', '.join(PRESETS)}; or a count like 7e9, 1.3B, 350M",
        ) from None
    if overrides:
        raise LlmkitError("--model.FIELD overrides need a preset or a config file", "drop them or name a preset")
    return ModelSize.from_count(count, seq or 2048), {}


def _read_config_json(path: Path, overrides: dict[str, Any]):
    from llmkit.config import ModelConfig

    file = path / "config.json" if path.is_dir() else path
    data = read_json(file, "re-save the checkpoint", "point MODEL at an llmkit checkpoint directory or its config.json")
    if data.get("format") != "llmkit":
        raise LlmkitError(f"{file} is not an llmkit config", "for a Hugging Face checkpoint run llmkit convert first")
    data = {k: v for k, v in data.items() if k not in ("format", "format_version", "quantization")}
    try:
        return ModelConfig.from_dict({**data, **overrides}, source=str(file))
    except TypeError as err:
        raise LlmkitError(f"{file}: invalid config ({err})", "re-save the checkpoint") from None
    except LlmkitError as err:  # a bad value: name the file it came from (plan's --model.FIELD can override it)
        if err.message.startswith(str(file)):
            raise
        raise LlmkitError(f"{file}: {err.message}", f"{err.hint} (or correct it in {file.name})") from None


def _read_toml(path: Path, overrides: dict[str, Any]):
    """The model a run config trains, and its [train] shape as defaults: what ``llmkit pretrain`` would run."""
    from llmkit.plan import ModelSize
    from llmkit.runconfig import load_run_config

    cfg, train = load_run_config(path, overrides)
    defaults = {
        "batch": train.batch_size,
        "seq": train.block_size,
        "precision": "amp" if train.dtype == "bf16" else "fp32",
        "recompute": "full" if train.activation_checkpointing else "none",
    }
    return ModelSize.from_config(cfg, str(path)), defaults


def _float(flag: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise LlmkitError(f"{flag} '{text}' is not a number", f"e.g. {flag} 0.4") from None
    if not math.isfinite(value):
        raise LlmkitError(f"{flag} {text} must be finite", f"change {flag}")
    return value


def _count(flag: str, text: str | None) -> float | None:
    from llmkit.plan import parse_count

    if text is None:
        return None
    try:
        return float(parse_count(text))
    except LlmkitError:
        raise LlmkitError(f"{flag} '{text}' is not a positive count", f"e.g. {flag} 3e11 or {flag} 300B") from None


def _check_measurable(model, opts) -> None:
    if model is None or model.assumed_shape:
        raise LlmkitError("--measure needs a model shape", "name a preset, a checkpoint or a config file")
    if opts.gpus != 1 or opts.zero != 0:
        raise LlmkitError("--measure runs on one device", "drop --gpus and --zero")
    if opts.recompute == "selective":
        raise LlmkitError("llmkit's trainer has no selective recomputation", "use --checkpointing (full) or none")


def _measure(plan, steps: int, device):
    """Real steps of the planned training on ``device``, after checking the prediction fits there."""
    from llmkit.train.memory import check_room, measure_training

    if plan.training is None:
        raise LlmkitError(f"--measure trains, and {plan.options.precision} is inference-only", "use fp32 or amp")
    check_room(plan.training.tensors_peak, device)
    o = plan.options
    return measure_training(
        plan.model.cfg, o.batch, plan.seq, o.precision, o.optimizer, o.recompute == "full", steps, device,
        finetune=o.finetune,
    )  # fmt: skip
