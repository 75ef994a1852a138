"""Numbers for people: bytes and counts with a unit prefix, one formatter for `llmkit plan` and `llmkit inspect`.

The two commands differ on purpose: the planner quotes decimal units as hardware and papers do
(1 GB = 1e9 bytes, so 1B fp32 parameters take 4 GB) with three significant digits; inspect quotes
binary units as operating systems show files (1 MiB = 2**20 bytes) with fixed decimals.
Standard library only (L0).
"""

from __future__ import annotations

_BYTE_UNITS = {1000: ("B", "KB", "MB", "GB", "TB"), 1024: ("B", "KiB", "MiB", "GiB", "TiB")}
_COUNT_UNITS = ("", "K", "M", "B", "T")


def human_bytes(n: float, base: int = 1000, decimals: int | None = None) -> str:
    """``n`` bytes in the largest unit it reaches: base 1000 (KB, MB, GB, TB) or 1024 (KiB, MiB, GiB, TiB).

    ``decimals`` None: three significant digits, none after the point from 100 up (37.7 MB, 169 MB, 4 GB);
    otherwise that many decimals (474.7 MiB). Below one kilobyte: whole bytes (12 B).
    """
    if base not in _BYTE_UNITS:
        raise ValueError(f"base must be 1000 or 1024, got {base}")
    value, unit = _scaled(n, base, _BYTE_UNITS[base], decimals)
    return f"{value} {unit}"


def human_count(n: float, decimals: int | None = None) -> str:
    """``n`` with a decimal suffix K, M, B or T (124M, 1.3B); ``decimals`` as in ``human_bytes``."""
    value, unit = _scaled(n, 1000, _COUNT_UNITS, decimals)
    return f"{value}{unit}"


def _scaled(n: float, base: int, units: tuple[str, ...], decimals: int | None) -> tuple[str, str]:
    """(number, unit) for ``n`` in ``units[k]`` = base**k, the largest that ``n`` reaches."""
    k = 0
    while k + 1 < len(units) and n >= base ** (k + 1):
        k += 1
    value = n / base**k
    if k == 0:
        return f"{value:.0f}", units[0]
    if decimals is not None:
        return f"{value:.{decimals}f}", units[k]
    # from 100 up, .3g would switch to exponent form when rounding reaches 1000 (1e+03)
    return (f"{value:.3g}" if value < 100 else f"{value:.0f}"), units[k]
