"""`llmkit quantize` end to end: the calibration text, the quantized checkpoint, and the perplexity change
on a held-out sample of that text under the float model, the result and (when calibrated) plain
round-to-nearest, so that what calibration buys is measured on text it never saw."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from llmkit import checkpoint
from llmkit.errors import LlmkitError
from llmkit.evaluate.perplexity import perplexity
from llmkit.quantize.calibration import BUILTIN, EVAL_TOKENS, HELD_OUT, MAX_WINDOW, SAMPLES, calibration_set
from llmkit.quantize.layers import quantize_model
from llmkit.quantize.spec import QuantSpec
from llmkit.quantize_checkpoint import QuantizeReport, check_paths, quantize_checkpoint

WARN_ABOVE = 0.10  # a perplexity increase above this gets a warning line


@dataclass
class PerplexityChange:
    """Perplexities of one held-out sample under the float model, the quantized result and, for a
    calibrated result, the same format rounded to nearest."""

    sample: str
    tokens: int  # tokens scored
    float_ppl: float
    result_ppl: float
    rtn_ppl: float | None = None

    def change(self, ppl: float) -> float:
        return ppl / self.float_ppl - 1

    def lines(self, method: str) -> list[str]:
        """'perplexity on ...: float 23.79 -> int4 24.10 (+1.30%)' and, when calibrated, the RTN line."""
        label = f"{method} (GPTQ)" if self.rtn_ppl is not None else method
        lines = [
            f"perplexity on {self.sample} ({self.tokens:,} tokens scored): float {self.float_ppl:.3f} -> "
            f"{label} {self.result_ppl:.3f} ({self.change(self.result_ppl):+.2%})"
        ]
        if self.rtn_ppl is not None:
            change = self.change(self.rtn_ppl)
            lines.append(f"  same format rounded to nearest (no calibration): {self.rtn_ppl:.3f} ({change:+.2%})")
        return lines

    def warning(self, threshold: float = WARN_ABOVE) -> str | None:
        """One line when the result's perplexity rose by more than ``threshold``, else None."""
        change = self.change(self.result_ppl)
        if change <= threshold:
            return None
        hint = "try --calibrate, " if self.rtn_ppl is None else ""
        return (
            f"warning: perplexity up {change:.1%} (more than {threshold:.0%}): {hint}a smaller --group-size, "
            "int8, or --keep-embeddings; check the model on your task before you rely on it"
        )


def quantize_and_measure(
    source: str | os.PathLike,
    out: str | os.PathLike,
    spec: QuantSpec,
    calibrate: str | None = None,
    samples: int = SAMPLES,
    eval_tokens: int = EVAL_TOKENS,
    progress: bool = True,
    verify: bool = True,
) -> tuple[QuantizeReport, PerplexityChange | None, str | None]:
    """Quantize ``source`` into ``out``; with ``calibrate`` (``builtin`` or a text file) by GPTQ on
    ``samples`` windows of its first 90%; then score ``eval_tokens`` held-out tokens of that text (the
    built-in one when not calibrating) under each model. Returns (the quantize report, the perplexity
    change or None, why there is none or None).

    Order: paths checked -> tokenizer and text read, split, windows drawn -> ``quantize_checkpoint`` ->
    perplexity of the float model, of ``out`` as ``llmkit.load`` reads it, and (calibrated) of the
    source rounded to nearest in memory.
    """
    source, out = Path(source), Path(out)
    check_paths(source, out)
    if calibrate is not None and spec.is_cast:
        raise LlmkitError(f"--calibrate applies to int8 and int4, not {spec.method}", "drop --calibrate")
    if calibrate is not None and samples < 1:
        raise LlmkitError(f"--calibration-samples {samples}: at least 1", f"e.g. --calibration-samples {SAMPLES}")
    cfg = checkpoint.load_config(source)
    tokenizer = checkpoint.load_tokenizer(source, cfg)
    skip = _why_no_report(cfg.family, cfg.decoder_head, tokenizer is not None, eval_tokens)
    if tokenizer is None and calibrate is not None:
        raise LlmkitError(f"{source} has no tokenizer.json: calibration text cannot be encoded", "save its tokenizer")
    data = None
    if calibrate is not None or skip is None:
        window = min(cfg.max_seq_len, MAX_WINDOW)
        data = calibration_set(tokenizer, calibrate or BUILTIN, samples if calibrate else 0, window, eval_tokens)
    report = quantize_checkpoint(source, out, spec, data if calibrate else None, progress, verify)
    if skip is not None:
        return report, None, skip
    return report, _measure(source, out, spec, data, calibrate is not None, progress, verify), None


def _why_no_report(family: str, head: str, has_tokenizer: bool, eval_tokens: int) -> str | None:
    if eval_tokens <= 0:
        return "perplexity report skipped (--eval-tokens 0)"
    if family != "decoder" or head != "lm":
        return "perplexity report skipped: it needs a decoder-only language model"
    if not has_tokenizer:
        return "perplexity report skipped: the checkpoint has no tokenizer.json"
    return None


def _measure(  # noqa: ANN001 - data: a CalibrationSet
    source: Path, out: Path, spec: QuantSpec, data, calibrated: bool, progress: bool, verify: bool
) -> PerplexityChange:
    """Perplexity of ``data.held_out`` under the float source, the written result and (calibrated) RTN."""
    score = lambda model: perplexity(model, data.held_out, progress=progress)  # noqa: E731
    base = score(checkpoint.load(source, verify=verify))
    result = score(checkpoint.load(out))
    rtn = score(quantize_model(checkpoint.load(source, verify=verify), spec)).perplexity if calibrated else None
    share = f"from the last {HELD_OUT:.0%}"
    sample = f"{len(data.held_out):,} held-out tokens ({share}) of {data.source}"
    return PerplexityChange(sample, base.tokens, base.perplexity, result.perplexity, rtn)
