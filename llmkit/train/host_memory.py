"""Keep freed host memory inside the process while training on the CPU (glibc's malloc).

glibc serves every allocation over 128 KiB-32 MiB with its own mmap and hands it back to the kernel
on free, and gives back the top of its heap once 128 KiB of it is free. A training step frees and
allocates the same large tensors every step (activations, the bf16 copies autocast makes of each
weight, and above all each fresh gradient: all-MiniLM-L6-v2's word-embedding gradient alone is 47
MB, 11,446 pages), so every step page-faults all of them in again: measured here, 11,000-13,000
faults and 21-38 ms of kernel time in a 140 ms SST-2 step, and on this VM a fault sometimes costs
7 us instead of 0.8 (a 47 MB zeros then takes 75 ms instead of 9), which made run-to-run speed
vary by a third. Inside ``keep_freed_memory`` malloc takes large blocks from its heap too and
keeps what is freed: from the second step on the same pages are reused (20-600 faults a step).
The price is that the process keeps its peak memory until the block ends.

The settings are process-wide (mallopt), so the block sets glibc's starting values again when it
ends (a program timed after it, as the Trainer in bench/finetune_sentiment.py, runs as in a fresh
process but for glibc's dynamic thresholds, which mallopt turns off). On other C libraries (macOS,
musl) it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import platform
from collections.abc import Iterator

# mallopt parameters (malloc.h) and glibc's defaults for them
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
DEFAULT_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536  # trim and mmap thresholds start at 128 KiB
KEEP_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: free heap kept up to 2 GiB


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not hasattr(libc, "mallopt"):
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return libc


def supported() -> bool:
    """Whether this process's C library is glibc (the only one whose malloc this tunes)."""
    return _glibc() is not None


@contextlib.contextmanager
def keep_freed_memory(enabled: bool = True) -> Iterator[bool]:
    """Within the block, malloc serves large blocks from its heap (no mmap) and does not give freed
    heap back to the kernel; yields whether that took effect."""
    libc = _glibc() if enabled else None
    if libc is None:
        yield False
        return
    ok = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_TRIM_THRESHOLD))
    try:
        yield ok
    finally:
        # glibc's starting values (its dynamic threshold, which mallopt turns off, may have raised them)
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        libc.mallopt(M_MMAP_THRESHOLD, DEFAULT_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_THRESHOLD)
