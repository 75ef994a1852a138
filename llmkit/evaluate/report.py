"""An EvalReport as a table (shots x metrics, with counts), as JSON, and as a metric-against-shots PNG."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

from llmkit.evaluate.evaluator import EvalReport
from llmkit.files import atomic_write

# Okabe & Ito's colour-blind-safe colours (as llmkit.viz.style uses; not imported: L3 builds on L0-L2 only)
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9")


def table(report: EvalReport) -> str:
    """Rows per shot count: n, each metric (accuracy with correct/n), demonstrations dropped, prompt tokens."""
    head = f"{report.task} ({report.kind}, {report.method})" + (f" - {report.model}" if report.model else "")
    lines = [head]
    header = ["shots", "n", *report.metrics, "cut prompts", "mean tokens"]
    rows = []
    for r in report.results:
        cells = [str(r.shots), str(r.n)]
        for m in report.metrics:
            value = r.metrics[m]
            if m == "accuracy":
                cells.append(f"{value:.3f} ({r.counts['correct']}/{r.n})")
            elif m in ("bleu", "chrf"):
                cells.append(f"{value:.2f}")
            else:
                cells.append(f"{value:.3f}")
        dropped = r.counts["prompts_with_dropped_examples"]
        cells.append(f"{dropped} (-{r.counts['dropped_examples']} ex.)" if dropped else "0")
        cells.append(f"{r.mean_prompt_tokens:.0f}")
        rows.append(cells)
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]
    for cells in [header, *rows]:
        lines.append("  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)))
    if report.chance is not None:
        lines.append(f"chance accuracy {report.chance:.3f}")
    if report.skipped:
        shown = ", ".join(map(str, report.skipped[:10])) + (", ..." if len(report.skipped) > 10 else "")
        lines.append(
            f"skipped {len(report.skipped)} items whose input alone exceeds the {report.window}-token window "
            f"(index {shown})"
        )
    unparsed = sum(r.counts.get("unparsed", 0) for r in report.results)
    if unparsed:
        lines.append(f"{unparsed} generated answers named no label (counted wrong)")
    return "\n".join(lines)


def write_json(report: EvalReport, path: str | os.PathLike) -> Path:
    """The whole report, per-item predictions included, written atomically."""
    return atomic_write(path, json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")


def plot(report: EvalReport, path: str | os.PathLike) -> Path:
    """The task's metrics against the shot count, saved as a PNG (accuracy and F1 or ROUGE on a 0-1 axis,
    with a chance line for classification; BLEU and chrF on their 0-100 axis).

    Drawn on a bare ``Figure`` rendered by Agg, never pyplot: no display is needed, no global figure
    state is kept, and the caller's matplotlib backend is left alone. Written atomically.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100, layout="constrained")
    ax = fig.subplots()
    shots = [r.shots for r in report.results]
    for m, colour in zip(report.metrics, OKABE_ITO, strict=False):  # a task reports at most five
        values = [r.metrics[m] for r in report.results]
        ax.plot(shots, values, "o-", color=colour, label=m, linewidth=1.4, markersize=5)
    if report.chance is not None:
        ax.axhline(report.chance, color="black", linestyle="--", linewidth=1, label="chance")
    hundred = any(m in ("bleu", "chrf") for m in report.metrics)
    if not hundred:
        ax.set_ylim(0, 1.02)
    ax.set_xticks(shots)
    ax.set_xlabel("shots (demonstrations in the prompt)")
    ax.set_ylabel("score (BLEU, chrF: 0-100)" if hundred else "score")
    ax.set_title(f"{report.task}: {report.model}" if report.model else report.task)
    ax.grid(alpha=0.3)
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return atomic_write(path, buffer.getvalue())  # a reader never sees half a PNG
