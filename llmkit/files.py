"""Files: atomic writes, and reading a JSON or TOML file with a one-line error.

The write helpers write beside the target and rename into place, so a reader (or a crash) never
sees a half-written file or directory. ``mkstemp``/``mkdtemp`` create owner-only paths; the result
gets the modes the umask allows, like any newly created file.
Standard library only (L0).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli backport
    import tomli as tomllib

from llmkit.errors import LlmkitError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer to fill; on success it is renamed over
    ``path`` (with the umask's modes), on an exception removed, so ``path`` is whole or untouched."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


class atomic_directory:
    """Context manager yielding a temporary directory that replaces ``target`` only on success.

    An existing ``target`` is moved aside first and removed after the rename, so at every moment
    one complete copy exists; on an exception the temporary directory is removed and ``target``
    is untouched.
    """

    def __init__(self, target: str | os.PathLike) -> None:
        self.target = Path(target)

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.tmp-", dir=self.target.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        mask = _umask()
        os.chmod(self.tmp, 0o777 & ~mask)
        for path in self.tmp.rglob("*"):
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)
        old = None
        if self.target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.old-", dir=self.target.parent))
            os.replace(self.target, old / self.target.name)
        os.replace(self.tmp, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def read_json(path: str | os.PathLike, hint: str, missing_hint: str | None = None) -> dict[str, Any]:
    """The JSON object in ``path``.

    A missing file, text that is not JSON (the parser's message gives line and column) or another
    top-level value than an object raises ``LlmkitError`` naming the file, with ``hint``
    (``missing_hint`` for a missing file, when given).
    """
    return _read_table(Path(path), json.loads, (json.JSONDecodeError,), "JSON", hint, missing_hint)


def read_toml(path: str | os.PathLike, hint: str, missing_hint: str | None = None) -> dict[str, Any]:
    """The tables of the TOML file ``path``; errors as ``read_json`` (TOML's top level is always a table)."""
    return _read_table(Path(path), tomllib.loads, (tomllib.TOMLDecodeError,), "TOML", hint, missing_hint)


def _read_table(
    path: Path,
    parse: Callable[[str], Any],
    errors: tuple[type[Exception], ...],
    kind: str,
    hint: str,
    missing_hint: str | None,
) -> dict[str, Any]:
    if not path.is_file():
        raise LlmkitError(f"{path}: file not found", missing_hint or hint)
    try:
        data = parse(path.read_text(encoding="utf-8"))
    except (*errors, UnicodeDecodeError) as err:
        raise LlmkitError(f"{path}: not valid {kind} ({err})", hint) from None
    except OSError as err:  # e.g. no permission to read it
        raise LlmkitError(f"{path}: cannot read ({err.strerror})", hint) from None
    if not isinstance(data, dict):
        raise LlmkitError(f"{path}: expected a {kind} object, found {type(data).__name__}", hint)
    return data
