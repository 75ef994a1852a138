"""The IsoFLOP grid of a sweep: the [sweep] table, the model shapes derived from the base model, and
each point's run settings (steps from the budget, the cosine schedule's length, warmup).

Shapes (``shape_for``): a width (d_model) from ``widths``; the depth keeps the base model's ratio of
layers to width (n_layer = round(base n_layer x width / base d_model), at least 1) unless ``layers``
names it; heads keep the base's head_dim (n_head = width / head_dim) and, where it divides, its
number of query heads per key/value head (else the largest divisor of n_head below it); d_ff keeps
the base's ratio to d_model, rounded to a multiple of 8. Everything else (vocabulary, norms, RoPE,
context window) is the base's.

A point of budget C trains a shape for D = C / (FLOPs per token) tokens, FLOPs per token as the
trainer counts them (``llmkit.train.step.flops_per_token``: 6 x matmul weights + PaLM's attention
term at block_size): steps = round(D / (batch_size x grad_accum x processes x block_size)), so the
FLOPs as trained are within half a step of C. The learning rate warms up for ``warmup_fraction`` of
those steps and decays on a cosine to min_lr at the last one (Hoffmann et al. 2022: a schedule longer
than the run overestimates the loss of small-D runs). N is the matmul weights, the N of the 6N.

Three optional rules keep each point on its budget's frontier (docs/scaling.md, "Keeping the points
on their frontier"):

- ``sizes_per_budget`` k: each budget trains only the k widths whose D/N lies nearest
  ``tokens_per_param`` (in log), so that the sizes move with the budget and its IsoFLOP minimum sits
  among them (Hoffmann et al. chose each budget's sizes around its optimum the same way);
- ``lr_width_exponent`` p: a point's lr and min_lr are the base's times (base d_model / width)^p. With
  Adam the update of a weight matrix is about lr per entry whatever its size, so its effect on the
  output grows with the fan-in; p = 1 is muP's rule for hidden matrices (Yang et al. 2022), applied to
  the whole model as Porian et al. (2024) and others tune small-scale sweeps;
- ``target_steps`` S: a point that would train fewer than S steps halves its batch (down to one
  sequence) until it has S, so that no point's schedule is a few dozen steps long. The lr is kept:
  below the critical batch size a smaller batch costs nothing per token (McCandlish et al. 2018).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmkit.config import ModelConfig, TrainConfig
from llmkit.errors import LlmkitError
from llmkit.models import build_model
from llmkit.plan import parse_count
from llmkit.plan.report import sci
from llmkit.train.step import flops_per_token

# [train] settings the sweep decides for every point
SWEEP_OWNED = ("out_dir", "steps", "warmup_steps", "eval_interval")


@dataclass
class SweepConfig:
    """The [sweep] table: budgets (FLOPs) x widths, and how each point's run is set."""

    budgets: list[float] = field(default_factory=list)  # FLOPs; numbers or strings like "3e13"
    widths: list[int] = field(default_factory=list)  # d_model of each size
    layers: list[int] = field(default_factory=list)  # n_layer of each size (empty: the base's depth per width)
    warmup_fraction: float = 0.05  # of each point's steps
    min_steps: int = 20  # points with fewer steps are left out (too few for the schedule to mean much)
    sizes_per_budget: int = 0  # k > 0: per budget, the k widths whose D/N is nearest tokens_per_param; 0: all
    tokens_per_param: float = 20.0  # the centre of each budget's sizes (Chinchilla's ratio) when k > 0
    lr_width_exponent: float = 0.0  # lr (and min_lr) x (base d_model / width)^this; 0: one lr for all
    target_steps: int = 0  # a point short of this many steps halves its batch until it has them; 0: never
    out_dir: str = "runs/scale"  # results.jsonl, sweep.json, runs/POINT/, logs/POINT.log

    def __post_init__(self) -> None:
        where = "[sweep]"
        if not isinstance(self.budgets, list) or not self.budgets:
            raise LlmkitError(f"{where} budgets must be a non-empty list of FLOP counts", "e.g. budgets = [1e13, 3e13]")
        self.budgets = sorted({_flops(b) for b in self.budgets})
        for name in ("widths", "layers"):
            values = getattr(self, name)
            if not isinstance(values, list) or not all(_is_int(v) and v >= 1 for v in values):
                raise LlmkitError(f"{where} {name} must be a list of whole numbers >= 1", f"e.g. {name} = [2, 3, 4]")
        if not self.widths:
            raise LlmkitError(f"{where} widths must name at least one d_model", "e.g. widths = [64, 96, 128]")
        if self.layers and len(self.layers) != len(self.widths):
            raise LlmkitError(
                f"{where} layers has {len(self.layers)} values for {len(self.widths)} widths",
                "give one n_layer per width, or leave layers out",
            )
        if len(set(zip(self.widths, self.layers or self.widths, strict=True))) != len(self.widths):
            raise LlmkitError(f"{where} the same size is listed twice", "list each width (and depth) once")
        if not isinstance(self.warmup_fraction, (int, float)) or not 0 <= self.warmup_fraction < 1:
            raise LlmkitError(f"{where} warmup_fraction={self.warmup_fraction!r} must be in [0, 1)", "e.g. 0.05")
        if not _is_int(self.min_steps) or self.min_steps < 1:
            raise LlmkitError(f"{where} min_steps={self.min_steps!r} must be a whole number >= 1", "e.g. 20")
        if not _is_int(self.sizes_per_budget) or self.sizes_per_budget < 0:
            raise LlmkitError(f"{where} sizes_per_budget={self.sizes_per_budget!r} must be a whole number >= 0",
                              "e.g. 5 (0: every width at every budget)")  # fmt: skip
        for name, hint in (("tokens_per_param", "e.g. 20"), ("lr_width_exponent", "e.g. 1 (muP), 0 (one lr)")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise LlmkitError(f"{where} {name}={value!r} must be a number", hint)
        if self.tokens_per_param <= 0:
            raise LlmkitError(f"{where} tokens_per_param={self.tokens_per_param!r} must be > 0", "e.g. 20")
        if not _is_int(self.target_steps) or self.target_steps < 0:
            raise LlmkitError(f"{where} target_steps={self.target_steps!r} must be a whole number >= 0",
                              "e.g. 200 (0: every point at the base batch_size)")  # fmt: skip
        if not isinstance(self.out_dir, str) or not self.out_dir:
            raise LlmkitError(f"{where} out_dir must be a directory name", 'e.g. out_dir = "runs/scale"')

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LlmkitError(
                f"[sweep]: unknown key(s) {', '.join(unknown)}", f"known keys: {', '.join(sorted(known))}"
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Point:
    """One run of the grid: a shape trained for one budget."""

    name: str
    budget: float
    model: ModelConfig
    train: TrainConfig  # out_dir, steps, warmup_steps, eval/save/log intervals set for this point
    params: int  # N: weights of the matrix multiplies (what 6N counts)
    params_total: int  # every parameter, tied ones once
    flops_per_token: int  # the trainer's count
    tokens: int  # D as trained: steps x rows per step x block_size

    @property
    def flops(self) -> int:
        """C as trained: FLOPs per token x tokens."""
        return self.flops_per_token * self.tokens


def shape_for(base: ModelConfig, width: int, layers: int | None = None) -> ModelConfig:
    """The base model resized to ``width`` (and ``layers``) as the module docstring describes."""
    head_dim = base.head_dim
    if width % head_dim:
        raise LlmkitError(
            f"[sweep] width {width} is not a multiple of the base model's head_dim {head_dim}",
            f"use widths divisible by {head_dim}, or change the base's n_head",
        )
    n_layer = layers if layers is not None else max(1, round(base.n_layer * width / base.d_model))
    n_head = width // head_dim
    per_group = base.n_head / base.n_kv_head  # query heads sharing one key/value head
    most = max(1.0, n_head / per_group)
    n_kv_head = max(d for d in range(1, n_head + 1) if n_head % d == 0 and d <= most + 1e-9)
    d_ff = max(8, 8 * round(base.d_ff * width / base.d_model / 8))
    return base.replace(
        d_model=width, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv_head, head_dim=head_dim, d_ff=d_ff
    )


def shape_name(model: ModelConfig) -> str:
    return f"l{model.n_layer}-d{model.d_model}"


def budget_name(budget: float) -> str:
    """1e13 -> '1e13', 3.5e12 -> '3.5e12': short, and the same for the same budget."""
    mantissa, exponent = f"{budget:.4e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def count_model(model: ModelConfig, block_size: int) -> tuple[int, int, int]:
    """(matmul weights, all parameters, FLOPs per token) of a shape, built on the meta device (no memory)."""
    built = build_model(model, device="meta", init=False)
    matmul = sum(m.weight.numel() for m in built.modules() if isinstance(m, torch.nn.Linear))
    total = sum(p.numel() for p in built.parameters())
    return matmul, total, int(flops_per_token(built, model, block_size))


def plan_points(
    base: ModelConfig, train: TrainConfig, sweep: SweepConfig, world_size: int = 1
) -> tuple[list[Point], list[str]]:
    """Every point of budgets x widths (or each budget's ``sizes_per_budget`` widths), smallest budget
    first and smallest model first within it, and notes on the points left out (fewer than min_steps
    steps). A budget that leaves even the smallest model fewer than min_steps steps raises LlmkitError."""
    if base.family != "decoder":
        raise LlmkitError(
            f"scale sweep trains decoders (causal LM loss); the base model is {base.family}", "use a decoder preset"
        )
    per_row = train.grad_accum * world_size * train.block_size  # tokens per step per sequence of batch_size
    shapes = [shape_for(base, w, sweep.layers[i] if sweep.layers else None) for i, w in enumerate(sweep.widths)]
    # cheapest per token first: it gets the most steps of every budget
    counted = sorted(((s, *count_model(s, train.block_size)) for s in shapes), key=lambda item: item[3])
    points, notes = [], []
    for budget in sweep.budgets:
        kept = []
        for shape, matmul, total, fpt in counted:
            batch = point_batch(budget / (fpt * per_row), train.batch_size, sweep.target_steps)
            steps = round(budget / (fpt * batch * per_row))
            if steps < sweep.min_steps:
                if shape is counted[0][0]:
                    least = sweep.min_steps * fpt * batch * per_row
                    raise LlmkitError(
                        f"budget {sci(budget)} FLOPs trains the smallest model ({shape_name(shape)}, N={matmul:,}) "
                        f"for only {steps} steps (min_steps {sweep.min_steps})",
                        f"raise the budget to at least {sci(least)}, or lower min_steps, batch_size or block_size",
                    )
                notes.append(f"left out {budget_name(budget)} x {shape_name(shape)}: {steps} steps < {sweep.min_steps}")
                continue
            kept.append((shape, matmul, total, fpt, batch, steps))
        if sweep.sizes_per_budget:
            kept = nearest_ratio(kept, budget, sweep.sizes_per_budget, sweep.tokens_per_param)
        for shape, matmul, total, fpt, batch, steps in kept:
            name = f"c{budget_name(budget)}-{shape_name(shape)}"
            scale = width_lr_scale(base.d_model, shape.d_model, sweep.lr_width_exponent)
            run = dataclasses.replace(
                train,
                out_dir=str(Path(sweep.out_dir) / "runs" / name),
                steps=steps,
                warmup_steps=round(sweep.warmup_fraction * steps),
                eval_interval=steps,  # evaluated at the start and the end: only the final loss is fitted
                save_interval=min(train.save_interval, steps),
                log_interval=min(train.log_interval, steps),
                batch_size=batch,
                lr=train.lr * scale,
                min_lr=train.min_lr * scale,
            )
            model = shape.replace(name=name)
            tokens = steps * batch * per_row
            points.append(Point(name, budget, model, run, matmul, total, fpt, tokens))
    return points, notes


def point_batch(rows_steps: float, batch_size: int, target_steps: int) -> int:
    """The batch of a point with ``rows_steps`` = steps x batch (its tokens / tokens per row): the base
    batch_size, halved while the point would train fewer than ``target_steps`` steps (0: never), not
    below one sequence."""
    batch = batch_size
    while target_steps and batch > 1 and rows_steps / batch < target_steps:
        batch = max(1, batch // 2)
    return batch


def width_lr_scale(base_width: int, width: int, exponent: float) -> float:
    """The factor on lr and min_lr of a point of ``width``: (base width / width)^exponent."""
    return (base_width / width) ** exponent


def nearest_ratio(kept: list[tuple], budget: float, k: int, ratio: float) -> list[tuple]:
    """The ``k`` planned sizes of one budget (rows of (shape, N, total, FLOPs per token, batch, steps),
    cheapest first) whose tokens per parameter D/N = budget / (FLOPs per token x N) is nearest
    ``ratio`` in log, kept in their order. D/N falls with N, so they are neighbours in the list."""
    distance = [abs(math.log(budget / (row[3] * row[1]) / ratio)) for row in kept]
    chosen = sorted(sorted(range(len(kept)), key=distance.__getitem__)[:k])
    return [kept[i] for i in chosen]


def _flops(value: Any) -> float:
    if isinstance(value, str):
        return float(parse_count(value))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise LlmkitError(f"[sweep] budget {value!r} is not a positive FLOP count", "e.g. budgets = [1e13, 3e13]")
    return float(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
