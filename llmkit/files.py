"""Files: atomic writes, and reading a text (plain or .gz), JSON, JSON Lines or TOML file with a one-line error.

The write helpers write beside the target and rename into place, so a reader (or a crash) never
sees a half-written file or directory. ``mkstemp``/``mkdtemp`` create owner-only paths; the result
gets the modes the umask allows, like any newly created file.
Standard library only (L0).
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

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

    The commit is three renames, each atomic: the finished temporary directory into a ``.new-*``
    folder (from then on it is known complete), the existing ``target`` aside into an ``.old-*``
    folder, and the new copy into place; then the old one is removed. At every moment one complete
    copy exists, and a crash between the renames leaves it where ``recover_directory`` finds it. On
    an exception the temporary directory is removed and ``target`` is untouched.
    """

    def __init__(self, target: str | os.PathLike) -> None:
        self.target = Path(target)

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}{TMP}", dir=self.target.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        mask = _umask()
        os.chmod(self.tmp, 0o777 & ~mask)
        for path in self.tmp.rglob("*"):
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)
            if path.is_file():
                _fsync(path)  # the data reaches the disk before a rename makes it the checkpoint
        new = Path(tempfile.mkdtemp(prefix=f".{self.target.name}{NEW}", dir=self.target.parent))
        os.replace(self.tmp, new / self.target.name)
        old = None
        if self.target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.target.name}{OLD}", dir=self.target.parent))
            os.replace(self.target, old / self.target.name)
        os.replace(new / self.target.name, self.target)
        _fsync(self.target.parent)
        os.rmdir(new)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# Leftovers of atomic_directory, named ".TARGET" + one of these + a random suffix.
TMP, NEW, OLD = ".tmp-", ".new-", ".old-"


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


def leftovers(target: str | os.PathLike) -> list[Path]:
    """What interrupted ``atomic_directory`` commits of ``target`` left beside it, newest first."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    found = [p for p in target.parent.glob(f".{glob.escape(target.name)}.*-*") if p.is_dir()]
    found = [p for p in found if any(p.name.startswith(f".{target.name}{kind}") for kind in (TMP, NEW, OLD))]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def recover_directory(target: str | os.PathLike, complete: Callable[[Path], bool] | None = None) -> Path | None:
    """Finish what a crash inside ``atomic_directory``'s commit left undone; returns the copy put in place.

    When ``target`` is missing, the newest complete leftover becomes it: a ``.new-*`` copy (the
    save had finished writing), else a ``.tmp-*`` directory that ``complete`` accepts (for example
    one whose manifest verifies), else the previous copy in ``.old-*``. Every other leftover is
    stale and removed. Call it only where no other process is saving ``target``.
    """
    target = Path(target)
    found = leftovers(target)
    chosen = None
    if not target.exists():
        of = {k: [p for p in found if p.name.startswith(f".{target.name}{k}")] for k in (TMP, NEW, OLD)}
        candidates = [p / target.name for p in of[NEW]]
        candidates += [p for p in of[TMP] if complete is not None and complete(p)]
        candidates += [p / target.name for p in of[OLD]]
        chosen = next((c for c in candidates if c.is_dir()), None)
        if chosen is not None:
            os.replace(chosen, target)
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
    return target if chosen is not None else None


@contextlib.contextmanager
def open_text(
    path: str | os.PathLike,
    errors: str = "strict",
    newline: str | None = None,
    hint: str = "restore or re-download it",
) -> Iterator[IO[str]]:
    """A UTF-8 text file open for reading; a ``.gz`` file (as the data sets in data/ are) decompressed on
    the fly. A damaged gzip stream, found on opening or on any read in the ``with`` body, is a one-line
    error naming the file."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", errors=errors, newline=newline) as file:
            yield file
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:  # a cut stream ends in EOFError
        raise LlmkitError(f"{path}: corrupt or truncated gzip file ({err})", hint) from None


JSONL_HINT = "write one JSON object per line"


def read_jsonl(
    path: str | os.PathLike,
    hint: str = JSONL_HINT,
    *,
    objects: bool = True,
    torn_tail: bool = False,
    errors: str = "strict",
    missing_hint: str | None = None,
) -> Iterator[tuple[int, Any]]:
    """(line number, value) for each non-blank line of the JSON Lines file ``path`` (plain or ``.gz``):
    the one reader of every JSONL file llmkit takes or writes.

    Each problem is a one-line ``LlmkitError`` naming the file and, past opening it, the line, with
    ``hint``: a missing file (``missing_hint`` when given), a damaged gzip stream, bytes that are not
    UTF-8 (unless ``errors="replace"``), a line that is not JSON (the parser's reason and column), a value
    that is not a JSON object (when ``objects``). ``torn_tail``: a last line without its newline that does
    not parse is skipped, as a process killed while appending to its own log leaves it.
    """
    path = Path(path)
    if not path.is_file():
        raise LlmkitError(f"{path}: file not found", missing_hint or hint)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            for number, raw in enumerate(file, 1):
                try:  # decoded line by line, so an error names its line
                    line = raw.decode("utf-8", errors)
                except UnicodeDecodeError as err:
                    raise LlmkitError(f"{path}:{number}: not UTF-8 text ({err.reason})", hint) from None
                if not line.strip():
                    continue
                try:
                    value = json.loads(line.rstrip("\r\n"))
                except json.JSONDecodeError as err:
                    if torn_tail and not raw.endswith(b"\n"):
                        return
                    raise LlmkitError(
                        f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno})", hint
                    ) from None
                if objects and not isinstance(value, dict):
                    raise LlmkitError(f"{path}:{number}: not a JSON object ({type(value).__name__})", hint)
                yield number, value
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:  # a cut stream ends in EOFError
        raise LlmkitError(f"{path}: corrupt or truncated gzip file ({err})", hint) from None
    except OSError as err:
        raise LlmkitError(f"{path}: cannot read ({err.strerror or err})", hint) from None


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
