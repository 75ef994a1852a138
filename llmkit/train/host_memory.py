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

The settings are process-wide (mallopt), and mallopt turns glibc's dynamic thresholds off for good,
so when the block ends it sets them where glibc's own adjustment settles for large blocks (mmap from
32 MiB, trim past 64 MiB). The side-by-side benches run the peer first, in an untouched process.
On other C libraries (macOS, musl) it does nothing.
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
DEFAULT_MMAP_MAX = 65536
# glibc raises its mmap threshold to each freed mmapped block's size, up to 32 MiB on 64-bit systems,
# and its trim threshold to twice that: where a program handling large tensors settles
SETTLED_MMAP_THRESHOLD = 32 * 2**20
SETTLED_TRIM_THRESHOLD = 2 * SETTLED_MMAP_THRESHOLD
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
        # mallopt turned glibc's dynamic thresholds off: leave them where that would have settled
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        libc.mallopt(M_MMAP_THRESHOLD, SETTLED_MMAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, SETTLED_TRIM_THRESHOLD)
