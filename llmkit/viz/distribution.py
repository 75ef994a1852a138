"""How temperature sharpens or flattens the next-token distribution, and where the filters cut it.

From the model's scores at one position (the logits after the repetition penalty and the EOS mask,
exactly what the sampler sees), each temperature T gives ``softmax(scores / T)``: T < 1 sharpens it
toward the top token, T > 1 flattens it. A panel shows the ``top`` most likely tokens (the same
tokens at every T: dividing by T keeps the order) and one "other" bar for the rest of the
vocabulary, so its bars sum to 1. The sampler's filters (top-k -> top-p -> min-p) run on the
tempered scores, so where they cut moves with T; the cut is marked per panel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from llmkit.errors import LlmkitError
from llmkit.inference.sampling import warp
from llmkit.viz.style import OKABE_ITO, new_figure, shorten

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_KEPT, _CUT, _OTHER = OKABE_ITO["blue"], OKABE_ITO["vermillion"], "#999999"


@dataclass
class Filters:
    """The sampler's filters as configured (0 / 1.0 / 0.0 switch each off)."""

    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0

    def describe(self) -> str:
        parts = [f"top-k {self.top_k}" if self.top_k > 0 else "", f"top-p {self.top_p:g}" if self.top_p < 1 else ""]
        parts.append(f"min-p {self.min_p:g}" if self.min_p > 0 else "")
        shown = " -> ".join(p for p in parts if p)
        return shown or "no top-k/top-p/min-p filter"


@dataclass
class DistributionPanel:
    """One temperature's distribution over the shown tokens, and what the filters keep of it."""

    temperature: float
    token_ids: list[int]
    labels: list[str]
    probs: list[float]  # softmax(scores / T) of the shown tokens, most likely first
    other: float  # the rest of the vocabulary: 1 - sum(probs)
    kept: list[bool]  # each shown token survives top-k -> top-p -> min-p at this temperature
    n_kept: int  # tokens of the whole vocabulary that survive
    vocab_size: int

    @property
    def bars(self) -> list[float]:
        """The bar heights drawn: the shown tokens, then "other"; they sum to 1."""
        return [*self.probs, self.other]


def temperature_panels(
    scores: torch.Tensor,
    temperatures: list[float],
    label: Callable[[int], str],
    top: int = 10,
    filters: Filters | None = None,
) -> list[DistributionPanel]:
    """scores (V,) -> one panel per temperature: softmax(scores / T) of the top tokens, the rest, the cut.

    ``label`` names a token id for the picture. Order per temperature: divide by T -> softmax (the
    distribution drawn) and, on the same tempered scores, top-k -> top-p -> min-p (the cut).
    """
    filters = filters or Filters()
    if any(t <= 0 for t in temperatures):
        raise LlmkitError("temperatures must be above 0", "e.g. --plot-temperatures 0.5,1.0,1.5")
    scores = scores.detach().float().cpu()  # (V,)
    shown = torch.topk(scores, min(top, scores.shape[-1])).indices  # (N,) the same tokens at every T
    labels = [label(int(i)) for i in shown]
    panels = []
    for t in temperatures:
        probs = (scores / t).softmax(-1)  # (V,)
        kept = torch.isfinite(warp(scores[None], t, filters.top_k, filters.top_p, filters.min_p)[0])  # (V,)
        top_probs = probs[shown].tolist()
        panels.append(
            DistributionPanel(t, shown.tolist(), labels, top_probs, 1.0 - sum(top_probs), kept[shown].tolist(),
                              int(kept.sum()), scores.shape[-1])
        )  # fmt: skip
    return panels


def draw_distribution(
    panels: list[DistributionPanel], title: str, filters: Filters, sampling_temperature: float | None = None
) -> Figure:
    """One horizontal bar chart per temperature, side by side, sharing both axes (same tokens, same scale)."""
    n = len(panels)
    rows = len(panels[0].bars)
    fig = new_figure(2.9 * n + 1.6, 0.3 * rows + 2.3)
    axes = fig.subplots(1, n, sharex=True, sharey=True, squeeze=False)[0]
    top = max(max(p.bars) for p in panels)
    for ax, panel in zip(axes, panels, strict=True):
        _draw_panel(ax, panel, top)
        used = " (sampling)" if panel.temperature == sampling_temperature else ""
        kept = f"{panel.n_kept:,} of {panel.vocab_size:,} tokens kept"
        ax.set_title(f"temperature {panel.temperature:g}{used}\n{kept}", fontsize=10)
        ax.set_xlabel("probability")
    fig.suptitle(title, fontsize=11)
    fig.legend(handles=_legend_handles(filters), loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def _draw_panel(ax, panel: DistributionPanel, top: float) -> None:
    colours = [_KEPT if k else _CUT for k in panel.kept] + [_OTHER]
    hatches = ["" if k else "//" for k in panel.kept] + [""]  # the cut shows without colour too
    y = list(range(len(panel.bars)))
    bars = ax.barh(y, panel.bars, color=colours, edgecolor="white", linewidth=0.5)
    for bar, hatch in zip(bars, hatches, strict=True):
        bar.set_hatch(hatch)
    for i, value in enumerate(panel.bars):
        ax.text(value + top * 0.02, i, f"{value:.3f}", va="center", fontsize=7)
    others = panel.vocab_size - len(panel.probs)
    ax.set_yticks(y, [shorten(label, 14) for label in panel.labels] + [f"other {others:,} tokens"], fontsize=8)
    ax.set_ylim(len(y) - 0.5, -0.5)  # most likely at the top
    ax.set_xlim(0, top * 1.3)
    shown_kept = sum(panel.kept)
    # The filters keep a most-likely-first prefix, so the cut is a line under the last kept bar when it
    # falls among the shown tokens (or right after them); past them it lies inside "other".
    if shown_kept < len(panel.kept) or panel.n_kept == shown_kept:
        ax.axhline(shown_kept - 0.5, color=OKABE_ITO["black"], linestyle="--", linewidth=1.0)
    ax.grid(axis="x", alpha=0.3)


def _legend_handles(filters: Filters) -> list:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    return [
        Patch(facecolor=_KEPT, label=f"kept by {filters.describe()}"),
        Patch(facecolor=_CUT, hatch="//", edgecolor="white", label="cut by the filters"),
        Patch(facecolor=_OTHER, label="every other token"),
        Line2D([], [], color=OKABE_ITO["black"], linestyle="--", label="the cut"),
    ]
