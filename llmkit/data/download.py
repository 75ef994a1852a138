"""Download a data set's upstream files, resumably, and check them against the catalog's pins.

Order for each file: a finished file that verifies is kept -> an existing ``NAME.part`` is
continued with an HTTP ``Range: bytes=N-`` request (a 206 reply appends; a 200 reply, from a
server that ignores ranges, restarts from byte 0; a 416 reply means the part already holds every
byte) -> the bytes stream into the ``.part`` file -> its size, SHA-256 and git blob SHA-1 are
checked -> on a match it is renamed into place, on a mismatch it is removed and the error names
both hashes. An interrupted transfer leaves the ``.part`` for the next run.

Standard library only (urllib, hashlib): progress goes to a tqdm-like factory the caller passes.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.data.catalog import RAW_BASE, DataSet, UpstreamFile, UpstreamRepo
from llmkit.errors import LlmkitError

CHUNK = 1 << 16
TIMEOUT_S = 60
BarFactory = Callable[..., Any]  # tqdm-like: factory(total=, initial=, desc=) -> object with update(n), close()


@dataclass
class Fetched:
    """One downloaded file: where it is, its size, and whether it was already there."""

    path: Path
    size: int
    reused: bool


def git_blob_sha1(path: Path) -> str:
    """The id git gives the file's content: sha1 of ``b"blob <size>\\0"`` followed by the bytes."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    _feed(digest, path)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    """SHA-256 of the file's bytes, read in chunks."""
    digest = hashlib.sha256()
    _feed(digest, path)
    return digest.hexdigest()


def _feed(digest: Any, path: Path) -> None:
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)


def check_file(path: Path, pin: UpstreamFile) -> str | None:
    """None when ``path`` matches the pin (size, SHA-256, git blob SHA-1), else what differs."""
    size = path.stat().st_size
    if size != pin.size:
        return f"size {size:,} bytes, expected {pin.size:,}"
    got = sha256_of(path)
    if got != pin.sha256:
        return f"SHA-256 {got}, expected {pin.sha256}"
    blob = git_blob_sha1(path)
    if blob != pin.git_blob:
        return f"git blob SHA-1 {blob}, expected {pin.git_blob}"
    return None


def download_dataset(dataset: DataSet, out: Path, base: str = RAW_BASE, bar: BarFactory | None = None) -> list[Fetched]:
    """Fetch every upstream file of ``dataset`` into ``out`` (created), each checked against its pin.

    A data set whose upstream is a whole repository has nothing to fetch file by file: that is an
    error whose hint is the clone command.
    """
    if isinstance(dataset.upstream, UpstreamRepo):
        raise LlmkitError(
            f"{dataset.name}: the upstream is the whole repository {dataset.upstream.repo} "
            f"at commit {dataset.upstream.commit}",
            f"clone it: {dataset.upstream.clone_command()}",
        )
    out.mkdir(parents=True, exist_ok=True)
    return [fetch_file(pin, out / pin.name, base, bar) for pin in dataset.upstream]


def fetch_file(pin: UpstreamFile, dest: Path, base: str = RAW_BASE, bar: BarFactory | None = None) -> Fetched:
    """Download ``pin`` to ``dest`` through ``dest.part`` (resumed if present), verify, rename into place."""
    if dest.is_file() and check_file(dest, pin) is None:
        return Fetched(dest, pin.size, reused=True)
    part = dest.with_name(dest.name + ".part")
    url = pin.url(base)
    _transfer(url, part, pin.size, bar)
    problem = check_file(part, pin)
    if problem is not None:
        part.unlink()
        raise LlmkitError(f"{url}: download does not match its pin: {problem}", "partial file removed; run again")
    os.replace(part, dest)
    return Fetched(dest, pin.size, reused=False)


def _transfer(url: str, part: Path, total: int, bar: BarFactory | None) -> None:
    """Stream ``url`` into ``part``, continuing from its current size when the server allows it."""
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "llmkit"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing after byte `have`: the part is complete (or too long)
            return
        raise LlmkitError(f"{url}: HTTP {err.code} {err.reason}", "check the name and --mirror") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise LlmkitError(f"{url}: cannot connect ({reason})", "check the network, or pass --mirror BASE_URL") from None
    with response:
        if response.status != 206:  # a 200 reply is the whole file: start over
            have = 0
        progress = bar(total=total, initial=have, desc=part.name[: -len(".part")]) if bar else None
        reason = "connection closed early"
        try:
            with part.open("ab" if have else "wb") as f:
                while block := response.read(CHUNK):
                    f.write(block)
                    if progress is not None:
                        progress.update(len(block))
        except (http.client.HTTPException, OSError) as err:
            reason = type(err).__name__
        finally:
            if progress is not None:
                progress.close()
    # read(n) returns b"" on a connection closed before Content-Length: judge by the bytes received
    got = part.stat().st_size
    if got < total:
        raise LlmkitError(
            f"{url}: download interrupted after {got:,} of {total:,} bytes ({reason})",
            f"run the same command again to resume from {part}",
        )
