"""`llmkit quantize --explain VALUE`: how one number is stored in fp32, fp16, bf16, int8 and int4.

Every figure is computed from the value: the float formats by casting with torch and reading the
bits back (``Tensor.view`` of the same bytes as an integer), the integer formats with the same
rule the quantizer runs (``tensors.symmetric_grid``), for a group whose absmax is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from llmkit.errors import LlmkitError
from llmkit.quantize import tensors

# format -> (dtype, integer view of the same width, exponent bits, fraction bits)
FLOATS = {
    "fp32": (torch.float32, torch.int32, 8, 23),
    "fp16": (torch.float16, torch.int16, 5, 10),
    "bf16": (torch.bfloat16, torch.int16, 8, 7),
}
INTS = {"int8": tensors.INT8_MAX, "int4": tensors.INT4_MAX}


@dataclass
class Stored:
    """``value`` as stored in ``format``: the bit fields (name -> bits) and the value read back."""

    format: str
    value: float
    stored: float
    fields: dict[str, str]
    note: str = ""

    @property
    def abs_error(self) -> float:
        return abs(self.stored - self.value)

    @property
    def rel_error(self) -> float:
        return self.abs_error / abs(self.value) if self.value else (0.0 if not self.stored else math.inf)


def float_bits(value: float, fmt: str) -> Stored:
    """Round ``value`` to ``fmt`` (nearest, ties to even, as torch casts) and split its bits into
    sign | exponent | fraction; the note decodes them (bias 2^(e-1) - 1, implicit leading 1)."""
    dtype, int_view, exp_bits, frac_bits = FLOATS[fmt]
    x = torch.tensor(value, dtype=torch.float64).to(dtype)
    width = 1 + exp_bits + frac_bits
    word = int(x.view(int_view).item()) & ((1 << width) - 1)  # two's complement -> unsigned bits
    bits = format(word, f"0{width}b")
    sign, exponent, fraction = bits[0], bits[1 : 1 + exp_bits], bits[1 + exp_bits :]
    return Stored(fmt, value, float(x.item()), {"sign": sign, "exponent": exponent, "fraction": fraction},
                  _decode(sign, exponent, fraction))  # fmt: skip


def _decode(sign: str, exponent: str, fraction: str) -> str:
    """sign x (implicit 1 + fraction) x 2^(exponent - bias), spelled out; all-zero exponent: subnormal."""
    bias = 2 ** (len(exponent) - 1) - 1
    e, f = int(exponent, 2), int(fraction, 2)
    signed = "-" if sign == "1" else "+"
    if e == 2 ** len(exponent) - 1:
        return f"{signed}inf (exponent all ones, fraction 0)" if f == 0 else "nan (exponent all ones)"
    if e == 0 and f == 0:
        return f"{signed}0 (exponent and fraction all zeros)"
    if e == 0:
        mantissa = f / 2 ** len(fraction)
        return f"{signed}{mantissa!r} x 2^{1 - bias} (subnormal: no implicit 1, exponent 1 - bias {bias})"
    mantissa = 1 + f / 2 ** len(fraction)
    return f"{signed}{mantissa!r} x 2^{e - bias} (exponent {e} - bias {bias}, implicit leading 1)"


def int_bits(value: float, fmt: str, absmax: float) -> Stored:
    """``value`` in a group whose largest magnitude is ``absmax``, in the symmetric scheme: scale =
    absmax / qmax rounded to fp16 (as stored), q = round(value / scale) clamped to [-qmax, qmax], read
    back as q * scale."""
    qmax = INTS[fmt]
    scale = (torch.tensor(absmax, dtype=torch.float32) / qmax).half().float()
    q = int(torch.round(torch.tensor(value, dtype=torch.float32) / scale).clamp(-qmax, qmax).item())
    stored = float((torch.tensor(q, dtype=torch.float32) * scale).item())
    if fmt == "int8":
        fields = {"q": f"{q} = {q & 0xFF:08b} (two's complement)"}
    else:
        fields = {"q": f"{q}, nibble {q + tensors.INT4_ZERO:04b} (q + {tensors.INT4_ZERO})"}
    ratio = value / float(scale) if float(scale) else 0.0
    note = f"scale = fp16({absmax!r}/{qmax}) = {float(scale):.9g}; q = round(value / scale) = round({ratio:.6g}) = {q}"
    if abs(value) > absmax:
        note += f"; |value| > absmax {absmax!r}: clamped"
    return Stored(fmt, value, stored, fields, note)


def explain(value: float, absmax: float = 4.0) -> list[Stored]:
    """``value`` in fp32, fp16, bf16, then int8 and int4 with scales from ``absmax``."""
    if not math.isfinite(value):
        raise LlmkitError(f"--explain {value!r}: not a finite number", "pass a number such as 3.141592653589793")
    if not (math.isfinite(absmax) and absmax > 0):
        raise LlmkitError(f"--absmax {absmax!r} must be a positive number", "pass the largest |weight| of the tensor")
    return [float_bits(value, f) for f in FLOATS] + [int_bits(value, f, absmax) for f in INTS]


def explain_table(value: float, absmax: float = 4.0) -> str:
    """The lines ``llmkit quantize --explain`` prints."""
    rows = explain(value, absmax)
    lines = [
        f"{value!r} stored in each format (abs error = |stored - value|, rel error = abs error / |value|)",
        f"{'format':<7}{'sign':<6}{'exponent':<10}{'fraction':<25}{'stored':<25}{'abs error':<11}rel error",
    ]
    for r in rows:
        if "sign" in r.fields:
            bits = f"{r.fields['sign']:<6}{r.fields['exponent']:<10}{r.fields['fraction']:<25}"
        else:
            bits = f"{'q ' + r.fields['q']:<41}"
        lines.append(f"{r.format:<7}{bits}{r.stored!r:<25}{r.abs_error:<11.3g}{r.rel_error:.3g}")
    lines.append("")
    for r in rows:
        lines.append(f"{r.format}: {r.note}")
    return "\n".join(lines)
