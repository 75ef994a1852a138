"""A local stand-in for the Hugging Face Hub: tests download models by name without the network.

Repositories live on disk per commit, as the Hub keeps them:

    ROOT/ORG/NAME/commits/<sha>/<files>   the files of one commit
    ROOT/ORG/NAME/refs/<branch or tag>    the commit a branch or tag points to

and are served at the endpoints huggingface_hub 2.4 calls for `llmkit models get` (read from its source:
hf_api.model_info, hf_api.get_paths_info, file_download.get_hf_file_metadata and http_get):

    GET  /api/models/ORG/NAME[/revision/REV][?blobs=true]  model info: sha, siblings (+ size, blobId, lfs)
    POST /api/models/ORG/NAME/paths-info/REV               form paths=...: size, oid, lfs {oid, size, pointerSize}
    HEAD /ORG/NAME/resolve/REV/PATH                        X-Repo-Commit, ETag (git blob SHA-1; SHA-256 for LFS
                                                           files, with X-Linked-Etag and X-Linked-Size)
    GET  /ORG/NAME/resolve/REV/PATH                        the bytes; Range: bytes=N- answers 206

with the Hub's error replies: 401 + X-Error-Code RepoNotFound (unknown or private), 401 (no token) or 403
(a token without access) + GatedRepo, 404 + RevisionNotFound, 404 + EntryNotFound. No xet headers are sent,
so huggingface_hub downloads over plain HTTP.

Faults a test can switch on: ``cut[path] = n`` drops the connection after n bytes of that file's next GET
(once); ``wrong_sha256`` lists files whose metadata states another SHA-256 than their bytes have;
``gated`` maps a repository to the tokens that may read it.

``HubServer(root).start()`` binds 127.0.0.1 on a free port; ``env(home)`` is the environment that points
huggingface_hub at it (HF_ENDPOINT, HF_HOME; for a subprocess), ``environment(home)`` the same applied to
this process (huggingface_hub reads its settings at import, so it reloads its constants).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".model", ".h5", ".onnx", ".msgpack")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
HF_VARIABLES = ("HF_ENDPOINT", "HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN",
                "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_XET", "HUGGING_FACE_HUB_TOKEN")  # fmt: skip


@dataclass(frozen=True)
class Blob:
    """One file as the Hub describes it."""

    size: int
    git_sha1: str  # of the file, or of its LFS pointer
    sha256: str | None  # LFS files only
    pointer_size: int | None


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def describe(path: Path) -> Blob:
    data = path.read_bytes()
    if not path.name.endswith(LFS_SUFFIXES):
        return Blob(len(data), git_sha1(data), None, None)
    sha256 = hashlib.sha256(data).hexdigest()
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n".encode()
    return Blob(len(data), git_sha1(pointer), sha256, len(pointer))


class HubServer:
    """Serves the repositories under ``root``; add them with ``add``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.cut: dict[str, int] = {}  # file path -> bytes sent before the connection drops (next GET, once)
        self.wrong_sha256: set[str] = set()  # file paths whose stated SHA-256 is not their bytes'
        self.gated: dict[str, set[str]] = {}  # repo id -> tokens with access
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self._blobs: dict[Path, Blob] = {}
        self._http: ThreadingHTTPServer | None = None

    # ---- repositories ------------------------------------------------------------------------
    def add(
        self, repo_id: str, files: Path | dict[str, bytes], branch: str = "main", tags: tuple[str, ...] = ()
    ) -> str:
        """A new commit of ``repo_id`` holding ``files`` (a folder's files, or name -> bytes), made the head of
        ``branch`` and of each tag; returns its sha."""
        if isinstance(files, Path):
            files = {p.relative_to(files).as_posix(): p.read_bytes() for p in sorted(files.rglob("*")) if p.is_file()}
        repo = self.root / repo_id
        parent = self.ref(repo_id, branch) or ""
        digest = hashlib.sha1(f"{repo_id}\n{parent}\n".encode())
        for name in sorted(files):
            digest.update(f"{name} {git_sha1(files[name])}\n".encode())
        sha = digest.hexdigest()
        for name, data in files.items():
            path = repo / "commits" / sha / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        for ref in (branch, *tags):
            (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
            (repo / "refs" / ref).write_text(sha)
        return sha

    def ref(self, repo_id: str, revision: str) -> str | None:
        """The commit a branch, tag or sha names, or None."""
        repo = self.root / repo_id
        if COMMIT.match(revision):
            return revision if (repo / "commits" / revision).is_dir() else None
        ref = repo / "refs" / revision
        return ref.read_text() if ref.is_file() and ref.resolve().is_relative_to(repo.resolve()) else None

    def files(self, repo_id: str, commit: str) -> dict[str, Path]:
        folder = self.root / repo_id / "commits" / commit
        return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}

    def blob(self, path: Path) -> Blob:
        if path not in self._blobs:
            self._blobs[path] = describe(path)
        return self._blobs[path]

    def stated_sha256(self, name: str, blob: Blob) -> str | None:
        """The SHA-256 the metadata states: the real one, unless the test asked for a wrong one."""
        if blob.sha256 is None or name not in self.wrong_sha256:
            return blob.sha256
        return hashlib.sha256(blob.sha256.encode()).hexdigest()

    # ---- life ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._http is not None, "start() the server first"
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._http.daemon_threads = True
        self._http.hub = self  # type: ignore[attr-defined]
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def env(self, home: Path, offline: bool = False, token: str | None = None) -> dict[str, str]:
        """This process's environment with huggingface_hub pointed at this server and cache ``home``."""
        env = {k: v for k, v in os.environ.items() if k not in HF_VARIABLES}
        env.update(HF_ENDPOINT=self.url if self._http else "http://127.0.0.1:9", HF_HOME=str(home))
        env["HF_HUB_OFFLINE"] = "1" if offline else "0"
        env["HF_HUB_DISABLE_TELEMETRY"] = "1"
        if token:
            env["HF_TOKEN"] = token
        return env

    @contextlib.contextmanager
    def environment(self, home: Path, offline: bool = False, token: str | None = None) -> Iterator[None]:
        """``env`` applied to this process, huggingface_hub's constants re-read from it; restored after."""
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(self.env(home, offline, token))
        _reload_hub_constants()
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)
            _reload_hub_constants()


def _reload_hub_constants() -> None:
    # huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE once, when imported; its modules read the
    # values through the constants module at call time, so reloading that module applies a new environment
    import huggingface_hub.constants

    importlib.reload(huggingface_hub.constants)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive as the Hub; every reply states its Content-Length

    @property
    def hub(self) -> HubServer:
        return self.server.hub  # type: ignore[attr-defined]

    def log_message(self, *args: object) -> None:  # quiet: tests read hub.requests instead
        pass

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    # ---- routing ---------------------------------------------------------------------------
    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        self.hub.requests.append((method, url.path, self.headers.get("Range")))
        parts = [unquote(p) for p in url.path.split("/")[1:]]  # split first: a revision may hold an encoded '/'
        if len(parts) >= 4 and parts[:2] == ["api", "models"]:
            repo_id, rest = "/".join(parts[2:4]), parts[4:]
            if method == "GET" and (not rest or (len(rest) == 2 and rest[0] == "revision")):
                blobs = parse_qs(url.query).get("blobs", ["false"])[0].lower() == "true"
                return self._model_info(repo_id, rest[1] if rest else "main", blobs)
            if method == "POST" and len(rest) == 2 and rest[0] == "paths-info":
                return self._paths_info(repo_id, rest[1])
        elif len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(method, "/".join(parts[:2]), parts[3], "/".join(parts[4:]))
        self._error(404, None, "Not Found")

    def _commit(self, repo_id: str, revision: str) -> str | None:
        """The commit, after access checks; None when an error reply was sent."""
        if not (self.hub.root / repo_id / "refs").is_dir():
            self._error(401, "RepoNotFound", "Repository not found")
            return None
        if repo_id in self.hub.gated:
            token = (self.headers.get("authorization") or "").removeprefix("Bearer ").strip()
            if token not in self.hub.gated[repo_id]:
                message = f"Access to model {repo_id} is restricted. You must have access to it and be authenticated."
                self._error(403 if token else 401, "GatedRepo", message)
                return None
        commit = self.hub.ref(repo_id, revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    # ---- endpoints -------------------------------------------------------------------------
    def _model_info(self, repo_id: str, revision: str, blobs: bool) -> None:
        commit = self._commit(repo_id, revision)
        if commit is None:
            return
        siblings = []
        for name, path in self.hub.files(repo_id, commit).items():
            entry: dict = {"rfilename": name}
            if blobs:
                blob = self.hub.blob(path)
                entry.update(size=blob.size, blobId=blob.git_sha1)
                if blob.sha256:
                    sha = self.hub.stated_sha256(name, blob)
                    entry["lfs"] = {"size": blob.size, "sha256": sha, "pointerSize": blob.pointer_size}
            siblings.append(entry)
        info = {
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24], "id": repo_id, "modelId": repo_id,
            "author": repo_id.split("/")[0], "sha": commit, "private": False, "disabled": False,
            "gated": "manual" if repo_id in self.hub.gated else False, "tags": [], "downloads": 0, "likes": 0,
            "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z", "siblings": siblings,
        }  # fmt: skip
        self._json(info, commit)

    def _paths_info(self, repo_id: str, revision: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode())
        commit = self._commit(repo_id, revision)
        if commit is None:
            return
        files = self.hub.files(repo_id, commit)
        out = []
        for name in form.get("paths", []):
            if name in files:
                blob = self.hub.blob(files[name])
                entry: dict = {"type": "file", "oid": blob.git_sha1, "size": blob.size, "path": name}
                if blob.sha256:
                    sha = self.hub.stated_sha256(name, blob)
                    entry["lfs"] = {"oid": sha, "size": blob.size, "pointerSize": blob.pointer_size}
                out.append(entry)
        self._json(out, commit)

    def _resolve(self, method: str, repo_id: str, revision: str, name: str) -> None:
        commit = self._commit(repo_id, revision)
        if commit is None:
            return
        path = self.hub.files(repo_id, commit).get(name)
        if path is None:
            return self._error(404, "EntryNotFound", f"{name} does not exist on {revision}", commit)
        blob = self.hub.blob(path)
        start, end = 0, blob.size - 1
        ranged = _byte_range(self.headers.get("Range"), blob.size) if method == "GET" else None
        if ranged == "unsatisfiable":
            return self._error(416, None, "Range Not Satisfiable", commit, {"Content-Range": f"bytes */{blob.size}"})
        if ranged is not None:
            start, end = ranged
        self.send_response(206 if ranged else 200)
        stated = self.hub.stated_sha256(name, blob)
        etag = stated or blob.git_sha1
        self.send_header("ETag", f'"{etag}"')
        self.send_header("X-Repo-Commit", commit)
        if blob.sha256:  # what the Hub sends for LFS files (and, on its redirect, before the CDN's reply)
            self.send_header("X-Linked-Etag", f'"{etag}"')
            self.send_header("X-Linked-Size", str(blob.size))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{end}/{blob.size}")
        cut = self.hub.cut.pop(name, None) if method == "GET" else None
        if cut is not None:
            self.send_header("Connection", "close")
        self.end_headers()
        if method == "HEAD":
            return
        with path.open("rb") as f:
            f.seek(start)
            body = f.read(end - start + 1)
        if cut is not None:  # the promised length is not delivered: the client sees the connection drop
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    # ---- replies ---------------------------------------------------------------------------
    def _json(self, data: object, commit: str) -> None:
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(
        self, status: int, code: str | None, message: str, commit: str | None = None, extra: dict | None = None
    ) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _byte_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """``bytes=N-`` or ``bytes=N-M`` -> (first, last) byte; None without one; "unsatisfiable" past the end."""
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", header or "")
    if match is None:
        return None
    first = int(match.group(1))
    last = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
    return "unsatisfiable" if first >= size or last < first else (first, last)
