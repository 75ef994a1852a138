"""What every llmkit picture shares: a colour-blind-safe palette, a bare Agg figure, atomic PNGs.

Figures are ``matplotlib.figure.Figure`` objects on a ``FigureCanvasAgg``, never pyplot: no display
is needed, no global figure state is kept, and the caller's matplotlib backend is left alone.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

from llmkit.errors import LlmkitError
from llmkit.files import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Okabe & Ito (2008), "Color Universal Design": eight colours told apart with every common colour-vision
# deficiency. Heatmaps use viridis (perceptually uniform, readable in grey and by colour-blind viewers).
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "purple": "#CC79A7",
}
HEATMAP = "viridis"
DPI = 100  # small files for docs; every picture is sized in inches for this


def new_figure(width: float, height: float, layout: str | None = None) -> Figure:
    """A bare Figure with an Agg canvas attached (``width`` x ``height`` inches at ``DPI``).

    ``layout="constrained"`` lets matplotlib place colour bars and labels without overlaps.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: str | os.PathLike) -> Path:
    """Render ``fig`` to PNG in memory and write it atomically: a reader never sees half a picture."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise LlmkitError(f"{path}: pictures are written as PNG", "give a file name ending in .png")
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, png_bytes(fig))


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes: drawn by Agg, stored as RGB (the pictures are opaque; RGBA costs ~10% more)."""
    import numpy as np
    from PIL import Image  # matplotlib's own dependency for writing images

    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())  # (H, W, 4)
    buffer = io.BytesIO()
    Image.fromarray(rgba[..., :3]).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def text_colour(rgba: tuple[float, ...]) -> str:
    """Black or white, whichever reads better on a cell of colour ``rgba`` (by its luminance)."""
    red, green, blue = rgba[:3]
    return "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"


def shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters with an ellipsis, for titles and tick labels."""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"
