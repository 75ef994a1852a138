"""Calibration text for ``llmkit quantize --calibrate``: the token windows GPTQ runs on and a held-out
sample for the perplexity report, from one text.

``builtin`` is the reference documentation every Python installation carries (``pydoc_data.topics``,
what ``help()`` shows: about 0.5 MB of English prose with code, under the Python Software Foundation
License, llmkit.data.builtin's ``python-docs``): no download, and the domain of the quickstart model.
Any UTF-8 text file (or .gz) serves too, e.g. data/tinyshakespeare/input.txt.gz (public domain) for a
model that reads English prose.

The text's token ids are cut once: the last ``HELD_OUT`` of them are held out (the perplexity report
reads its first ``eval_tokens``), and the calibration windows are drawn (seeded, at random offsets, as
GPTQ draws its C4 segments) from the rest only, so the report scores text calibration never saw.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from llmkit.data.builtin import python_docs_texts
from llmkit.data.tokenizer import Tokenizer
from llmkit.errors import LlmkitError
from llmkit.files import open_text

BUILTIN = "builtin"
HELD_OUT = 0.1  # the last tenth of the text's tokens, never calibrated on
SAMPLES = 128  # calibration windows (the GPTQ paper's count)
MAX_WINDOW = 256  # tokens per window at most (the model's context if shorter): 32k tokens by default
EVAL_TOKENS = 4096  # held-out tokens the perplexity report scores
SEED = 0


@dataclass
class CalibrationSet:
    """Calibration windows (N, T) (None when only the held-out sample is wanted) and held-out token ids."""

    source: str
    windows: torch.Tensor | None
    held_out: list[int]
    calibration_tokens: int  # the part the windows are drawn from

    def describe(self) -> str:
        """'128 windows of 256 tokens from the first 90% (117,000 tokens) of SOURCE'."""
        if self.windows is None:
            return f"no calibration; held-out sample from {self.source}"
        n, t = self.windows.shape
        share = f"{1 - HELD_OUT:.0%}"
        return f"{n} windows of {t} tokens from the first {share} ({self.calibration_tokens:,} tokens) of {self.source}"


def read_source(source: str) -> tuple[str, str]:
    """``builtin`` or a text file path -> (the text, how to name it in reports and model cards)."""
    if source == BUILTIN:
        return "\n\n".join(python_docs_texts()), "the Python reference documentation (pydoc_data.topics, PSF License)"
    path = Path(source)
    if not path.is_file():
        raise LlmkitError(
            f"--calibrate {source}: no such file", f"pass '{BUILTIN}' or a UTF-8 text file (e.g. a .txt or .txt.gz)"
        )
    try:
        with open_text(path) as file:
            return file.read(), str(path)
    except UnicodeDecodeError as err:
        raise LlmkitError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})", "pass a text file") from None


def calibration_set(
    tokenizer: Tokenizer,
    source: str | os.PathLike = BUILTIN,
    samples: int = SAMPLES,
    window: int = MAX_WINDOW,
    eval_tokens: int = EVAL_TOKENS,
    seed: int = SEED,
) -> CalibrationSet:
    """Encode ``source`` -> hold out its last ``HELD_OUT`` of tokens (the first ``eval_tokens`` of them
    kept) -> draw ``samples`` windows of ``window`` tokens (0 samples: none) from the rest."""
    text, name = read_source(str(source))
    ids = tokenizer.encode(text, add_special_tokens=False)  # one long text: no BOS/CLS at its ends
    split = int(len(ids) * (1 - HELD_OUT))
    head, held_out = ids[:split], ids[split:][:eval_tokens]
    if samples <= 0:
        return CalibrationSet(name, None, held_out, split)
    if len(head) < window:
        raise LlmkitError(
            f"{name}: {len(head):,} calibration tokens, fewer than one window of {window}",
            "pass a longer text to --calibrate (a few hundred KB is plenty)",
        )
    return CalibrationSet(name, sample_windows(head, samples, window, seed), held_out, split)


def sample_windows(ids: list[int], samples: int, window: int, seed: int = SEED) -> torch.Tensor:
    """``samples`` windows of ``window`` consecutive ids at seeded random offsets: (samples, window) int64."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - window + 1, (samples,), generator=g).tolist()
    data = torch.tensor(ids, dtype=torch.long)
    return torch.stack([data[s : s + window] for s in starts])
