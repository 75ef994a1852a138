"""Which tokens attend to which: attention maps from one forward pass, as heatmaps and raw numbers.

A map is one head's softmax weights (queries, keys): row i says how token i spreads its attention
over the tokens it may see, and sums to 1. The models return them with ``output_attentions=True``:
that call runs attention as an explicit softmax so the weights exist as a tensor, while every other
call (training, generation) keeps the fused SDPA kernel, which never materializes them.

Kinds: ``encoder`` self-attention (BERT, T5's encoder; every token sees all), ``decoder`` causal
self-attention (GPT-2, Llama, T5's decoder; each token sees itself and those before it), and
``cross`` attention (T5's decoder tokens over the encoder's tokens).
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from llmkit.errors import LlmkitError
from llmkit.files import atomic_write
from llmkit.viz.style import HEATMAP, new_figure, shorten

if TYPE_CHECKING:
    from matplotlib.figure import Figure

KINDS = ("encoder", "decoder", "cross")
_KINDS_OF = {"decoder": ("decoder",), "encoder": ("encoder",), "encoder_decoder": KINDS}
_TITLE = {"encoder": "encoder self-attention", "decoder": "causal self-attention", "cross": "cross-attention"}


@dataclass
class AttentionMaps:
    """Every layer's maps of one kind for one input, and the tokens on each axis."""

    kind: str
    layers: list[torch.Tensor]  # per layer (H, T, S): queries T, keys S
    query_labels: list[str]
    key_labels: list[str]

    def select(self, layer: int, head: int | None) -> tuple[torch.Tensor, list[int], int]:
        """Weights (heads, T, S) of ``layer`` (negative counts from the last) for one head or all.

        Returns the weights, the head numbers shown and the layer number (non-negative).
        """
        n_layers, n_heads = len(self.layers), self.layers[0].shape[0]
        if not -n_layers <= layer < n_layers:
            raise LlmkitError(
                f"--layer {layer} is out of range: the {self.kind} stack has {n_layers} layers (0-{n_layers - 1})",
                f"give --layer between 0 and {n_layers - 1} (or -1 for the last)",
            )
        layer %= n_layers
        if head is None:
            return self.layers[layer], list(range(n_heads)), layer
        if not -n_heads <= head < n_heads:
            raise LlmkitError(
                f"--head {head} is out of range: layer {layer} has {n_heads} heads (0-{n_heads - 1})",
                f"give --head between 0 and {n_heads - 1}, or --all for every head",
            )
        head %= n_heads
        return self.layers[layer][head : head + 1], [head], layer


def default_kind(family: str) -> str:
    """The attention a model of ``family`` is known for: a decoder's causal map, else the encoder's."""
    return "decoder" if family == "decoder" else "encoder"


@torch.no_grad()
def attention_maps(
    model: nn.Module,
    input_ids: list[int],
    kind: str,
    query_labels: list[str],
    key_labels: list[str],
    decoder_input_ids: list[int] | None = None,
) -> AttentionMaps:
    """One forward pass with ``output_attentions=True``; the maps of ``kind`` for the one sequence.

    ``decoder_input_ids`` (T5's decoder side) are needed for ``decoder`` and ``cross`` maps of an
    encoder-decoder model; labels name the tokens on the query and key axes.
    """
    family = model.config.family
    if kind not in _KINDS_OF[family]:
        allowed = ", ".join(_KINDS_OF[family])
        raise LlmkitError(f"a {family} model has no {kind} attention", f"choose --kind {allowed}")
    device = next(model.parameters()).device
    ids = torch.tensor([input_ids], device=device)  # (1, S)
    if family != "encoder_decoder":
        out = model(ids, output_attentions=True)
        chosen = out.attentions
    else:
        if kind != "encoder" and not decoder_input_ids:
            raise LlmkitError(f"{kind} attention needs the decoder's tokens", 'give them with --target "TEXT"')
        decoder_ids = torch.tensor([decoder_input_ids or [model.config.decoder_start_token_id]], device=device)
        out = model(ids, decoder_input_ids=decoder_ids, output_attentions=True)
        chosen = {"encoder": out.encoder_attentions, "decoder": out.attentions, "cross": out.cross_attentions}[kind]
    layers = [weights[0].float().cpu() for weights in chosen]  # each (H, T, S)
    return AttentionMaps(kind, layers, list(query_labels), list(key_labels))


def weights_record(maps: AttentionMaps, layer: int, heads: list[int], model_name: str) -> dict[str, Any]:
    """What --weights writes as JSON: the shown weights (heads, T, S) with their tokens and indices."""
    weights = maps.layers[layer][heads]  # (heads, T, S)
    return {
        "model": model_name,
        "kind": maps.kind,
        "layer": layer,
        "heads": heads,
        "query_tokens": maps.query_labels,
        "key_tokens": maps.key_labels,
        "shape": ["heads", "queries", "keys"],
        "weights": weights.tolist(),
    }


def save_weights(path: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write the record as JSON (everything) or .npy (the weights array alone, float32), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        return atomic_write(path, json.dumps(record, ensure_ascii=False) + "\n")
    if path.suffix.lower() == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(record["weights"], dtype=np.float32))
        return atomic_write(path, buffer.getvalue())
    raise LlmkitError(f"{path}: weights are written as .json or .npy", "give a file name ending in .json or .npy")


# ---- drawing --------------------------------------------------------------------------------------


def draw_attention(maps: AttentionMaps, layer: int, heads: list[int], title: str) -> Figure:
    """One heatmap per head in ``heads`` (a near-square grid), token labels on both axes, one colour scale.

    In a causal map the cells a token may not see (later tokens) are drawn white, apart from the
    dark of a weight near 0 that a token could have given but did not.
    """
    import matplotlib

    weights = maps.layers[layer][heads].clone()  # (heads, T, S)
    if maps.kind == "decoder":
        T, S = weights.shape[1:]
        future = torch.ones(T, S, dtype=torch.bool).triu(1 + S - T)  # (T, S): key after query
        weights[:, future] = float("nan")
    n = len(heads)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    tokens = max(weights.shape[1], weights.shape[2])
    panel = min(max(0.2 * tokens + 1.4, 3.0 if n > 1 else 4.5), 9.0 if n == 1 else 5.0)
    fig = new_figure(cols * panel + 1.3, rows * panel + 0.9, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    cmap = matplotlib.colormaps[HEATMAP].with_extremes(bad="white")
    # One scale for all panels, from 0 to the largest weight shown, so heads compare by colour.
    vmax = max(float(weights.nan_to_num(0.0).max()), 1e-6)
    used, image = [], None
    for k, ax in enumerate(axes.flat):
        if k >= n:
            fig.delaxes(ax)  # the grid's spare cells: the figure keeps one axes per head
            continue
        image = ax.imshow(weights[k].numpy(), cmap=cmap, vmin=0.0, vmax=vmax, aspect="auto")
        _label_axes(ax, maps, show_y=k % cols == 0, show_x=k + cols >= n, many=n > 1)
        if n > 1:
            ax.set_title(f"head {heads[k]}", fontsize=9)
        used.append(ax)
    fig.suptitle(title, fontsize=11)
    label = "attention weight" + (" (white: later tokens, masked)" if maps.kind == "decoder" else "")
    fig.colorbar(image, ax=used, shrink=0.8, label=label)
    return fig


def attention_title(model_name: str, kind: str, layer: int, heads: list[int]) -> str:
    """E.g. ``quickstart: causal self-attention, layer 3, head 0``."""
    which = f"head {heads[0]}" if len(heads) == 1 else f"all {len(heads)} heads"
    return f"{shorten(model_name, 40)}: {_TITLE[kind]}, layer {layer}, {which}"


def _label_axes(ax, maps: AttentionMaps, show_y: bool, show_x: bool, many: bool) -> None:
    """Token labels on both axes; in a grid only the outer panels carry them, thinned past 40 tokens."""
    size = 7 if many else 8
    for labels, setter, show, rotation in (
        (maps.key_labels, ax.set_xticks, show_x, 90),
        (maps.query_labels, ax.set_yticks, show_y, 0),
    ):
        step = max(1, math.ceil(len(labels) / 40))
        ticks = list(range(0, len(labels), step))
        setter(ticks, [shorten(labels[i], 12) for i in ticks] if show else [], rotation=rotation, fontsize=size)
    if show_x:
        ax.set_xlabel("key: token attended to", fontsize=size + 1)
    if show_y:
        ax.set_ylabel("query: token attending", fontsize=size + 1)
