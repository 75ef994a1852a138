"""Files of a Hub repository at one commit, through ``huggingface_hub`` and its cache, each one checked.

Online, for ``ORG/NAME@REV``: ``model_info`` resolves the revision to its commit and lists the files
(``GET /api/models/ORG/NAME/revision/REV``); ``get_paths_info`` gives the size, git blob id and, for
LFS files, the SHA-256 of the files asked for (``POST .../paths-info/COMMIT``); ``hf_hub_download``
fetches each into the hub cache (``HEAD`` then ``GET /ORG/NAME/resolve/REV/FILE``, with its own
progress bar; a connection dropped mid-file is resumed with a ``Range`` request, up to five times)
and records REV -> commit in the cache's refs. Every file is then checked against that metadata:
size, and SHA-256 for LFS files or the git blob SHA-1 for the others. A mismatch removes the file
from the cache, so the next run downloads it again, and is a one-line error.

Offline (``HF_HUB_OFFLINE=1``) the cache alone answers: the revision's snapshot folder lists the files,
and each is checked against the hash its cache blob is named by (the ETag the Hub sent: SHA-256 for
LFS files, the git blob SHA-1 for the others).

``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HOME``/``HF_HUB_CACHE`` and ``HF_TOKEN`` are read by
``huggingface_hub`` itself. Its errors become LlmkitError lines (``hub_errors``).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from llmkit.data.download import git_blob_sha1, sha256_of
from llmkit.errors import LlmkitError
from llmkit.hub.names import HubName
from llmkit.units import human_bytes

DEFAULT_REVISION = "main"
TOKEN_HINT = "then set HF_TOKEN to a token of that account, or run `hf auth login`"
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass
class RemoteFile:
    """What the Hub (or, offline, the cache) says one file must be."""

    path: str
    size: int | None = None
    sha256: str | None = None  # LFS files
    git_sha1: str | None = None  # files kept in git itself


@dataclass
class Snapshot:
    """A repository at one commit: the files it lists and, once described, their expected sizes and hashes."""

    name: HubName
    commit: str
    files: list[str]
    offline: bool
    endpoint: str
    folder: Path | None = None  # offline: the cache's snapshot folder
    expected: dict[str, RemoteFile] = field(default_factory=dict)
    fetched_bytes: int = 0  # bytes that came over the network in this run

    @property
    def revision(self) -> str:
        return self.name.revision or DEFAULT_REVISION


def _hub():
    """huggingface_hub, imported when a Hub name is used (it costs about a second)."""
    import huggingface_hub
    import huggingface_hub.constants  # submodules are attributes of the package only once imported
    import huggingface_hub.errors
    import huggingface_hub.file_download  # noqa: F401

    return huggingface_hub


def endpoint() -> str:
    """The Hub address in use: $HF_ENDPOINT as huggingface_hub read it, else https://huggingface.co."""
    return _hub().constants.ENDPOINT


def offline() -> bool:
    return _hub().constants.is_offline_mode()


def resolve(name: HubName) -> Snapshot:
    """The revision's commit and file list: from the Hub, or offline from the cache."""
    if offline():
        return _resolve_cached(name)
    with hub_errors(name):
        info = _hub().HfApi().model_info(name.repo_id, revision=name.revision)
    files = [s.rfilename for s in info.siblings or []]
    return Snapshot(name, info.sha, files, offline=False, endpoint=endpoint())


def _resolve_cached(name: HubName) -> Snapshot:
    hub = _hub()
    try:
        folder = Path(hub.snapshot_download(name.repo_id, revision=name.revision, local_files_only=True))
    except hub.errors.LocalEntryNotFoundError:
        raise _cache_miss(name, f"revision {name.revision or DEFAULT_REVISION}") from None
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return Snapshot(name, folder.name, files, offline=True, endpoint=endpoint(), folder=folder)


def _cache_miss(name: HubName, what: str) -> LlmkitError:
    return LlmkitError(
        f"{name}: {what} is not in the Hugging Face cache ({_hub().constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1 "
        "forbids downloading",
        "run once with the network (HF_HUB_OFFLINE unset), or point HF_HOME or HF_HUB_CACHE at the cache that has it",
    )


def describe(snapshot: Snapshot, paths: list[str]) -> None:
    """Fill ``snapshot.expected`` for ``paths``: the Hub's paths-info online, the cache's blob names offline."""
    if snapshot.offline:
        for path in paths:
            snapshot.expected[path] = _cached_expectation(snapshot, path)
        return
    with hub_errors(snapshot.name):
        infos = _hub().HfApi().get_paths_info(snapshot.name.repo_id, paths, revision=snapshot.commit)
    for info in infos:
        if hasattr(info, "size"):  # a RepoFile (a RepoFolder has no size)
            lfs = info.lfs
            snapshot.expected[info.path] = RemoteFile(
                info.path, info.size, lfs.sha256 if lfs else None, None if lfs else info.blob_id
            )
    missing = [p for p in paths if p not in snapshot.expected]
    if missing:
        raise LlmkitError(
            f"{snapshot.name}: the Hub lists {missing[0]} but gives no metadata for it", "try again later"
        )


def _cached_expectation(snapshot: Snapshot, path: str) -> RemoteFile:
    """Offline: the cache stores each file under the ETag the Hub sent, its SHA-256 (LFS) or git SHA-1."""
    assert snapshot.folder is not None
    pointer = snapshot.folder / path
    if not pointer.is_file():
        raise _cache_miss(snapshot.name, path)
    blob = _blob(pointer).name
    if not _HEX.match(blob):  # a copy, not a link into blobs/ (no symlinks on this file system): nothing to check
        return RemoteFile(path)
    return RemoteFile(path, None, blob if len(blob) == 64 else None, blob if len(blob) == 40 else None)


def _blob(pointer: Path) -> Path:
    """The cache's ``blobs/<etag>`` entry a snapshot file links to (one level only: the blob may itself link
    into huggingface_hub's shared store, whose names are Xet hashes), or the file itself when it is a copy."""
    if not pointer.is_symlink():
        return pointer
    return Path(os.path.normpath(pointer.parent / os.readlink(pointer)))


def fetch(snapshot: Snapshot, path: str) -> Path:
    """One file in the cache, downloaded if needed, checked against ``snapshot.expected[path]``."""
    hub = _hub()
    name = snapshot.name
    if snapshot.offline:
        local = snapshot.folder / path
    else:
        cached = _in_cache(snapshot, path)
        with hub_errors(name):
            # the revision as asked (not the commit), so the cache records REV -> commit for offline runs
            local = Path(hub.hf_hub_download(name.repo_id, path, revision=snapshot.revision))
        if local.parent.parts[-1 - path.count("/")] != snapshot.commit:
            raise LlmkitError(
                f"{name}: revision {snapshot.revision} moved to another commit during the download",
                "run the command again (or pin a commit: ORG/NAME@SHA)",
            )
        if not cached:
            snapshot.fetched_bytes += local.stat().st_size
    verify(local, snapshot.expected.get(path, RemoteFile(path)), name)
    return local


def _in_cache(snapshot: Snapshot, path: str) -> bool:
    """Whether the file's bytes are in the cache already: at this commit, or as the blob of another commit
    (a new commit that changed only the card reuses the weights' blob: nothing to download)."""
    hub = _hub()
    if isinstance(hub.try_to_load_from_cache(snapshot.name.repo_id, path, revision=snapshot.commit), str):
        return True
    expected = snapshot.expected.get(path)
    etag = expected and (expected.sha256 or expected.git_sha1)  # the cache names blobs by the Hub's ETag
    folder = hub.file_download.repo_folder_name(repo_id=snapshot.name.repo_id, repo_type="model")
    return bool(etag) and (Path(hub.constants.HF_HUB_CACHE) / folder / "blobs" / etag).is_file()


def verify(local: Path, expected: RemoteFile, name: HubName) -> None:
    """Size and hash against the Hub's metadata; on a mismatch the file leaves the cache and this raises."""
    size = local.stat().st_size
    problem = None
    if expected.size is not None and size != expected.size:
        problem = f"{human_bytes(size)} where the Hub says {human_bytes(expected.size)}"
    elif expected.sha256 is not None and (actual := sha256_of(local)) != expected.sha256:
        problem = f"SHA-256 {actual[:12]}... where the Hub says {expected.sha256[:12]}..."
    elif expected.git_sha1 is not None and (actual := git_blob_sha1(local)) != expected.git_sha1:
        problem = f"git blob SHA-1 {actual[:12]}... where the Hub says {expected.git_sha1[:12]}..."
    if problem is None:
        return
    _evict(local)
    raise LlmkitError(
        f"{name}: {expected.path} is corrupt ({problem}); it was removed from the cache",
        "run the command again to download it afresh; if it fails again, the mirror (HF_ENDPOINT) serves bad data",
    )


def _evict(pointer: Path) -> None:
    """Remove a snapshot entry and the blob it points to, so no later run takes the bad bytes for good ones."""
    blob = _blob(pointer)
    pointer.unlink(missing_ok=True)
    if blob != pointer:
        blob.unlink(missing_ok=True)


@contextlib.contextmanager
def hub_errors(name: HubName) -> Iterator[None]:
    """huggingface_hub's exceptions -> one-line LlmkitErrors that say what to do."""
    hub = _hub()
    errors = hub.errors
    page = f"{endpoint()}/{name.repo_id}"
    try:
        yield
    except errors.GatedRepoError:
        raise LlmkitError(
            f"{name.repo_id} is a gated model: accept its terms on {page} while logged in", TOKEN_HINT
        ) from None
    except errors.RevisionNotFoundError:
        raise LlmkitError(
            f"{name.repo_id}: revision '{name.revision}' does not exist",
            f"use a branch, tag or commit from {page}/tree/main (leave @REVISION out for main)",
        ) from None
    except errors.RepositoryNotFoundError:
        raise LlmkitError(
            f"{name.repo_id}: no such model on {endpoint()}, or it is private",
            f"check the name on {endpoint()}; for a private model you can see when logged in, {TOKEN_HINT}",
        ) from None
    except errors.RemoteEntryNotFoundError as err:
        raise LlmkitError(
            f"{name}: the Hub has no file {err.response.url}", "the repository changed; run again"
        ) from None
    except errors.LocalEntryNotFoundError as err:  # offline: not cached; online: the Hub did not answer
        if offline():
            raise _cache_miss(name, "a file") from None
        raise LlmkitError(f"cannot download {name} from {endpoint()}: {err}", _NETWORK_HINT) from None
    except errors.HfHubHTTPError as err:
        code = err.response.status_code if err.response is not None else "?"
        raise LlmkitError(f"{endpoint()} answered HTTP {code} for {name}", "try again later") from None
    except (ConnectionError, OSError) as err:  # httpx's connect/timeout errors are neither; see below
        raise LlmkitError(f"cannot download {name} from {endpoint()}: {err}", _NETWORK_HINT) from None
    except Exception as err:
        if type(err).__module__.startswith(("httpx", "httpcore")):  # httpx2.ConnectError, TimeoutException, ...
            raise LlmkitError(f"cannot reach {endpoint()} for {name}: {err}", _NETWORK_HINT) from None
        raise


_NETWORK_HINT = (
    "check the network and HF_ENDPOINT; a model already in the cache loads without the network with HF_HUB_OFFLINE=1"
)
