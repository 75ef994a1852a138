"""Small C kernels for the CPU (cpu_kernels.c: dropout; cpu_matmul.c: matrix products with quantized
and bf16 weights), compiled once per machine into one library and called through ctypes on raw tensor
memory (llmkit.models.dropout and llmkit.quantize.kernels are the callers).

Why C: dropout in torch ops is three to five passes over the tensor (random draws on one thread,
compare, select, multiply, a multiply in backward); the kernel draws, compares and multiplies in one
pass on torch's threads and keeps no mask. A training step of all-MiniLM-L6-v2 has 20-60 dropouts,
57 with LoRA on its six linear layers (each adapter drops its input). docs/finetuning.md has the
figures.

The shared library is built with the system C compiler (``$CC``, else ``cc``) into
``$XDG_CACHE_HOME/llmkit/kernels`` (``~/.cache/llmkit/kernels``) under a name hashing the source, the
flags, the compiler's version and the CPU's flags (``-march=native`` code runs only where it was
built), written beside and renamed into place, so processes starting together never load a half-written
file; when that folder cannot be written, a per-user temporary one. Each folder and library must
belong to this user and be writable by no one else (made 0700; a shared temporary folder is where
another user could plant a library that every llmkit process would load). Without a compiler, when the build
fails, or with ``LLMKIT_CPU_KERNELS=0``, ``library()`` is None and callers keep their torch-op path;
``reason()`` says why. Standard library only (L0): ``llmkit plan`` asks ``available()`` without torch.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("cpu_kernels.c")
# every C file of the library: dropout (cpu_kernels.c), the quantized matrix products (cpu_matmul.c) and the
# native decoding step (cpu_decode.c)
SOURCES = (SOURCE, Path(__file__).with_name("cpu_matmul.c"), Path(__file__).with_name("cpu_decode.c"))
HEADERS = (Path(__file__).with_name("cpu_bf16.h"),)  # included by SOURCES: part of the build's key, not compiled
ENV_SWITCH = "LLMKIT_CPU_KERNELS"  # "0": never build or use them
# -fopenmp links libgomp.so.1, the soname of torch's own libgomp: the dynamic loader reuses the copy
# torch loaded, so the kernels run on torch's thread pool rather than a second one.
FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-fopenmp"]
# the target flags in place of -march=native, e.g. "-mavx2 -mfma -mf16c" (the AVX2 path) or "-march=x86-64"
# (portable C): to build for an older machine, or to test every vector path of cpu_matmul.c on this one
ARCH_ENV = "LLMKIT_CPU_KERNEL_ARCH"


def flags() -> list[str]:
    arch = os.environ.get(ARCH_ENV, "").split()
    return FLAGS if not arch else [f for f in FLAGS if f != "-march=native"] + arch


_why_not: str | None = None


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llmkit" / "kernels"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _build(compiler: str) -> Path:
    """Compile SOURCES into the cache (or a temporary folder) unless there already; the library's path.
    Raises OSError or subprocess.SubprocessError when that fails."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    texts = [source.read_text() for source in (*SOURCES, *HEADERS)]
    key = hashlib.sha256("\0".join([*texts, *flags(), version, _cpu_flags()]).encode()).hexdigest()[:16]
    refused = []
    for folder in (cache_dir(), Path(tempfile.gettempdir()) / f"llmkit-kernels-{os.getuid()}"):
        path = folder / f"cpu_kernels-{key}.so"
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            folder.mkdir(mode=0o700, exist_ok=True)
            _check_private(folder)
            if path.exists():
                _check_private(path)
                return path
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
        except OSError as e:
            refused.append(str(e))
            continue
        try:
            subprocess.run(
                [compiler, *flags(), *map(str, SOURCES), "-o", tmp], check=True, capture_output=True, timeout=120
            )
            os.chmod(tmp, 0o700)  # whatever the umask: ours alone, as _check_private wants it next time
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return path
    raise OSError(f"no safe writable folder for the compiled kernels: {'; '.join(refused)}")


def _check_private(path: Path) -> None:
    """Refuse a folder or library that another user could have written: the library is loaded into
    every llmkit process, so a planted one would run its code there. It must be ours (not a link)
    and writable by no one else. Raises OSError naming the problem."""
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        raise OSError(f"{path} is a symbolic link")
    if info.st_uid != os.getuid():
        raise OSError(f"{path} belongs to uid {info.st_uid}, not this user ({os.getuid()})")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise OSError(f"{path} is writable by other users (mode {stat.S_IMODE(info.st_mode):o})")


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels with their signatures set, or None (``reason()`` says why)."""
    global _why_not
    _why_not = None
    if os.environ.get(ENV_SWITCH, "1") == "0":
        _why_not = f"{ENV_SWITCH}=0"
        return None
    compiler = shutil.which(os.environ.get("CC") or "cc")
    if compiler is None:
        _why_not = "no C compiler on PATH (cc, or $CC)"
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", None) or str(e) or type(e).__name__
        detail = detail.decode(errors="replace") if isinstance(detail, bytes) else detail
        _why_not = f"building the C kernels failed: {detail.strip().splitlines()[0] if detail.strip() else e}"
        return None
    i64, u64, ptr = ctypes.c_int64, ctypes.c_uint64, ctypes.c_void_p
    for name in ("llmkit_dropout_f32", "llmkit_dropout_bf16"):
        getattr(lib, name).argtypes = [ptr, ptr, i64, u64, ctypes.c_uint32, ctypes.c_float, ctypes.c_int]
        getattr(lib, name).restype = None
    lib.llmkit_dropout_draws.argtypes = [i64, u64, ptr]
    lib.llmkit_dropout_draws.restype = None
    # x, rows, in, bits, count, q[], scales[], mins[], outs[], group, y[], threads
    c_int = ctypes.c_int
    lib.llmkit_quantized_matmul.argtypes = [ptr, i64, i64, c_int, i64, ptr, ptr, ptr, ptr, i64, ptr, c_int]
    lib.llmkit_quantized_matmul.restype = ctypes.c_int
    # bits, q, scales, mins, rows, in, group, w, threads, bf16 (w's dtype: 0 fp32, 1 bf16)
    lib.llmkit_dequantize.argtypes = [c_int, ptr, ptr, ptr, i64, i64, i64, ptr, c_int, c_int]
    lib.llmkit_dequantize.restype = ctypes.c_int
    lib.llmkit_bf16_matmul.argtypes = [ptr, i64, i64, ptr, i64, ptr, ctypes.c_int]  # x, rows, in, w, out, y, threads
    lib.llmkit_bf16_matmul.restype = ctypes.c_int
    return lib


def available() -> bool:
    return library() is not None


def reason() -> str | None:
    """Why ``library()`` is None, else None."""
    library()
    return _why_not
