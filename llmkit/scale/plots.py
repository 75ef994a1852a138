"""The pictures of a scaling fit (matplotlib Agg, llmkit.viz.style's palette, atomic PNGs):

- isoflop.png: the loss against N per budget, each with its fitted parabola and its minimum N*;
- optimal.png: N* and D* against C on log-log axes, approach 2's minima and power laws, approach 3's
  closed form, and Chinchilla's 20 tokens per parameter for reference;
- frontier.png: every point's loss against the FLOPs it trained with, and approach 3's
  compute-optimal loss L(N_opt(C), D_opt(C)) extended beyond the sweep (plus any held-out points).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llmkit.plan.compute import TOKENS_PER_PARAMETER
from llmkit.scale.report import ScalingFit
from llmkit.viz.style import OKABE_ITO, new_figure, save_png

COLOURS = [OKABE_ITO[k] for k in ("blue", "orange", "green", "vermillion", "purple", "sky_blue", "yellow", "black")]
NAMES = ("isoflop.png", "optimal.png", "frontier.png")


def write_plots(
    fit: ScalingFit,
    directory: str | os.PathLike,
    held_out: Sequence[tuple[float, float, str]] = (),
    prefix: str = "",
) -> list[Path]:
    """The three pictures into ``directory`` (named ``prefix`` + isoflop.png, ...); ``held_out``: (FLOPs,
    measured loss, label) points drawn on the frontier. Returns their paths."""
    directory = Path(directory)
    figures = (isoflop_figure(fit), optimal_figure(fit), frontier_figure(fit, held_out))
    return [save_png(figure, directory / f"{prefix}{name}") for figure, name in zip(figures, NAMES, strict=True)]


def isoflop_figure(fit: ScalingFit):
    fig = new_figure(7, 4.5, layout="constrained")
    ax = fig.subplots()
    budgets = sorted({r.budget for r in fit.results})
    curves = {c.budget: c for c in fit.approach2.curves}
    for i, budget in enumerate(budgets):
        colour = COLOURS[i % len(COLOURS)]
        mine = [r for r in fit.results if r.budget == budget]
        ax.scatter([r.params for r in mine], [r.val_loss for r in mine], color=colour, s=22, label=f"C = {budget:.2g}")
        curve = curves.get(budget)
        if curve is None:
            continue
        x = np.linspace(math.log(curve.params.min()) - 0.15, math.log(curve.params.max()) + 0.15, 100)
        ax.plot(np.exp(x), np.polyval(curve.coeffs, x), color=colour, linewidth=1.2)
        ax.plot([curve.n_opt], [curve.loss_opt], marker="*", color=colour, markersize=12, markeredgecolor="black")
    ax.set_xscale("log")
    ax.set_xlabel("parameters N (weights of the matrix multiplies)")
    ax.set_ylabel("final validation loss (nats per token)")
    ax.set_title("IsoFLOP curves: loss against model size per budget (stars: fitted minima)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def optimal_figure(fit: ScalingFit):
    fig = new_figure(10, 4.2, layout="constrained")
    axes = fig.subplots(1, 2)
    a2 = fit.approach2
    budgets = [c.budget for c in a2.curves] or sorted({r.budget for r in fit.results})
    c = np.geomspace(min(budgets) / 3, max(budgets) * 30, 50)
    fitted = [fit.law.optimal(x) for x in c]
    rule = np.sqrt(c / (6 * TOKENS_PER_PARAMETER))
    for ax, index, label, minima, law in (
        (axes[0], 0, "N* (parameters)", [k.n_opt for k in a2.curves], a2.n_law),
        (axes[1], 1, "D* (tokens)", [k.d_opt for k in a2.curves], a2.d_law),
    ):
        ax.scatter([k.budget for k in a2.curves], minima, color=OKABE_ITO["blue"], zorder=3, label="approach 2 minima")
        if law is not None:
            ax.plot(c, law(c), color=OKABE_ITO["blue"], linewidth=1.2, label=f"approach 2: C^{law.exponent:.2f}")
        exponent = fit.law.a if index == 0 else fit.law.b
        ax.plot(c, [f[index] for f in fitted], color=OKABE_ITO["vermillion"], linewidth=1.2,
                label=f"approach 3: C^{exponent:.2f}")  # fmt: skip
        reference = rule if index == 0 else TOKENS_PER_PARAMETER * rule
        ax.plot(c, reference, "--", color=OKABE_ITO["black"], linewidth=1, label="20 tokens per parameter")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("compute C (FLOPs)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("compute-optimal model size and tokens against compute")
    return fig


def frontier_figure(fit: ScalingFit, held_out: Sequence[tuple[float, float, str]] = ()):
    fig = new_figure(7, 4.5, layout="constrained")
    ax = fig.subplots()
    budgets = sorted({r.budget for r in fit.results})
    for i, budget in enumerate(budgets):
        mine = [r for r in fit.results if r.budget == budget]
        ax.scatter([r.flops for r in mine], [r.val_loss for r in mine], color=COLOURS[i % len(COLOURS)], s=18,
                   alpha=0.8, label=f"sweep, C = {budget:.2g}")  # fmt: skip
    top = max([budgets[-1]] + [h[0] for h in held_out])
    c = np.geomspace(budgets[0] / 3, top * 10, 60)
    frontier = [float(fit.law.loss(*fit.law.optimal(x))) for x in c]
    # black and grey: the budgets' scatter takes the palette's colours
    ax.plot(c, frontier, color=OKABE_ITO["black"], linewidth=1.5, label="approach 3: L(N_opt(C), D_opt(C))")
    ax.axhline(fit.law.E, color="#777777", linestyle=":", linewidth=1, label=f"E = {fit.law.E:.3f}")
    for flops, loss, label in held_out:
        ax.plot([flops], [loss], marker="D", color=OKABE_ITO["black"], markersize=7, linestyle="none", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("compute C (FLOPs, as the trainer counts them)")
    ax.set_ylabel("final validation loss (nats per token)")
    ax.set_title("loss against compute: the sweep and the fitted frontier")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig
