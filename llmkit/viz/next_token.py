"""`llmkit generate --explain --plot`: the next-token distribution at one generated position, drawn once
per temperature (``distribution.py``), from the scores the explain run saw there."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmkit.errors import LlmkitError
from llmkit.inference.explain import Explanation, explain, token_text
from llmkit.viz import distribution  # the module, not its names: tests spy on distribution.temperature_panels
from llmkit.viz.style import save_png
from llmkit.viz.tokens import visible


@dataclass
class PlotRequest:
    """Where the picture goes, which generated position it shows (0 = the first new token), the
    temperatures (one panel each) and the tokens shown per panel."""

    path: Path
    position: int
    temperatures: list[float]
    top: int


def plot_request(path: Path, position: int, top: int, temperatures: str, explaining: bool) -> PlotRequest:
    """The checked request, before any model loads: --explain on, a .png name, position >= 0, top >= 1,
    and a comma-separated list of temperatures above 0."""
    if not explaining:
        raise LlmkitError("--plot draws the distribution --explain computes", "add --explain")
    if path.suffix.lower() != ".png":
        raise LlmkitError(f"--plot {path}: pictures are written as PNG", "give a file name ending in .png")
    if position < 0 or top < 1:
        raise LlmkitError("--plot-position must be >= 0 and --plot-top >= 1", "e.g. --plot-position 0 --plot-top 10")
    try:
        values = [float(t) for t in temperatures.split(",") if t.strip()]
    except ValueError:
        raise LlmkitError(f"--plot-temperatures {temperatures!r} is not a list of numbers",
                          "e.g. --plot-temperatures 0.5,1.0,1.5") from None  # fmt: skip
    if not values or any(t <= 0 for t in values):
        raise LlmkitError("--plot-temperatures needs numbers above 0", "e.g. --plot-temperatures 0.5,1.0,1.5")
    return PlotRequest(path, position, values, top)


def explain_with_scores(
    model: nn.Module, prompt: str, top: int, position: int | None = None, **overrides: Any
) -> tuple[Explanation, torch.Tensor | None]:
    """``explain`` and, when ``position`` is given, the model's whole (V,) scores there (None when the
    completion ended before it)."""
    scores: dict[int, torch.Tensor] = {}

    def keep_scores(t: int, step_scores: torch.Tensor, tokens: torch.Tensor) -> None:
        if t == position:
            scores[t] = step_scores[0].float().clone()  # (V,)

    result = explain(model, prompt, top=top, observer=keep_scores if position is not None else None, **overrides)
    return result, scores.get(position)


def plot_next_token(
    model: nn.Module, result: Explanation, scores: torch.Tensor | None, request: PlotRequest, name: str
) -> str:
    """Bar charts of softmax(scores / T) at the request's position, one panel per temperature, written as
    a PNG; returns the line that says so. ``name`` titles the picture."""
    position = request.position
    if scores is None:
        raise LlmkitError(
            f"--plot-position {position}: the completion has {len(result.steps)} tokens (positions 0-"
            f"{len(result.steps) - 1})",
            "choose a smaller --plot-position or raise --max-new-tokens",
        )
    settings = result.settings
    filters = distribution.Filters(settings["top_k"], settings["top_p"], settings["min_p"])
    panels = distribution.temperature_panels(
        scores, request.temperatures, lambda i: visible(token_text(model.tokenizer, i)), request.top, filters
    )
    # the text the model had read when it scored this position: the prompt and the tokens drawn before it
    before = model.tokenizer.decode([s.drawn_id for s in result.steps[:position]]) if model.tokenizer else ""
    context = ((result.prompt or "") + before).replace("\n", "↵")
    context = context if len(context) <= 40 else "…" + context[-39:]  # its end is what matters here
    title = f"{name}: next-token probabilities at position {position}, after “{context}”"
    sampling = settings["temperature"] if settings["do_sample"] else None
    path = save_png(distribution.draw_distribution(panels, title, filters, sampling), request.path)
    return f"wrote {path}: position {position}, temperatures {', '.join(f'{t:g}' for t in request.temperatures)}"
