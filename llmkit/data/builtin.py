"""Corpora every Python installation already carries, so quickstarts and tests need no download.

- ``python-docs``: the reference documentation topics in ``pydoc_data.topics`` (what ``help()``
  shows), about 0.5 MB of English prose with code.
- ``python-stdlib``: the source of the standard library's ``.py`` files, tens of MB of code.

Standard library only: this module must import in milliseconds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

# Folders of the standard library that are not "library source": installed third-party packages,
# the test suites (which include deliberately broken and non-UTF-8 fixtures), and the IDLE app.
_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib"})


def python_docs_texts() -> Iterator[str]:
    """Yield the text of every topic in ``pydoc_data.topics``, in sorted topic order."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield topics[name]


def stdlib_source_files() -> list[Path]:
    """List the standard library's ``.py`` files, sorted, without site-packages, tests and idlelib.

    The library root is the directory of ``os.__file__``, which in a virtual environment is still
    the base interpreter's library (venvs do not copy it).
    """
    root = Path(os.__file__).resolve().parent
    files = []
    for folder, dirs, names in os.walk(root):
        # Prune in place so os.walk never descends into site-packages (often the biggest tree).
        dirs[:] = [d for d in dirs if d not in _EXCLUDED_DIRS]
        files.extend(Path(folder, name) for name in names if name.endswith(".py"))
    return sorted(files)


def stdlib_source_texts() -> Iterator[str]:
    """Yield the contents of each file from :func:`stdlib_source_files`."""
    for path in stdlib_source_files():
        # A handful of stdlib files declare a non-UTF-8 coding; replacing a few bytes beats failing.
        yield path.read_text(encoding="utf-8", errors="replace")


# Name -> callable yielding the corpus texts; the names are what `--builtin` accepts.
BUILTIN_CORPORA: dict[str, Callable[[], Iterator[str]]] = {
    "python-docs": python_docs_texts,
    "python-stdlib": stdlib_source_texts,
}
