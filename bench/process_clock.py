"""A clock for one process's phases (bench/finetune_process.py's children): exclusive seconds per
label, from spans (``with clock.span(label)``) and from functions wrapped in place
(``clock.wrap(owner, name, label)``); a span or call inside another counts for its own label only.
Standard library only, so importing it costs the process nothing measurable."""

from __future__ import annotations

import functools
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class Clock:
    def __init__(self, t0: float) -> None:
        self.t0 = t0  # time.time() at the process's first line
        self.phases: dict[str, float] = {}
        self.calls: dict[str, list[float]] = {}  # every call's own seconds, for labels wrapped with record=True
        self._inner: list[float] = []  # per open span: seconds spent in spans opened inside it

    @contextmanager
    def span(self, label: str, record: bool = False):
        self._inner.append(0.0)
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            inner = self._inner.pop()
            self.phases[label] = self.phases.get(label, 0.0) + elapsed - inner
            if record:
                self.calls.setdefault(label, []).append(elapsed)
            if self._inner:
                self._inner[-1] += elapsed

    def add(self, label: str, seconds: float) -> None:
        """``seconds`` measured elsewhere (a callback pair) for ``label``, inside the span open now."""
        self.phases[label] = self.phases.get(label, 0.0) + seconds
        self.calls.setdefault(label, []).append(seconds)
        if self._inner:
            self._inner[-1] += seconds

    def wrap(self, owner: Any, name: str, label: str, record: bool = False) -> None:
        """Replace ``owner.name`` (a module's function or a class's method) by a timed call of it."""
        function = getattr(owner, name)
        clock = self

        @functools.wraps(function)
        def timed(*args, **kwargs):
            with clock.span(label, record):
                return function(*args, **kwargs)

        setattr(owner, name, timed)

    def write(self, path: str | Path, **extra: Any) -> None:
        """The report the parent reads: the phases, ``t0`` and ``t_end`` (time.time(), to place the
        process's start and exit in the parent's clock) and ``extra``."""
        report = {"phases": self.phases, "calls": self.calls, **extra, "t0": self.t0}
        report["t_end"] = time.time()
        Path(path).write_text(json.dumps(report))
