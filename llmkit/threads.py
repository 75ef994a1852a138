"""How many CPU threads a command gives torch, and how idle threads wait: decided in one place.

Precedence: ``--threads N`` > ``LLMKIT_THREADS`` > ``OMP_NUM_THREADS`` > a measured default. The
measured default is what the process can really use: the cores of its affinity mask, capped by a
cgroup CPU quota and by the physical cores among them, minus the cores other processes keep busy
right now (two /proc/stat samples ~0.1 s apart; the load average lags by a minute), at least one.
Under torchrun the usable cores are shared among the node's processes instead.

Why: torch's default is one OpenMP thread per core. On a 2-core machine with one other busy
process, a 2-thread training step took 1-3 s instead of 0.15 s: every parallel region waits at a
barrier for the thread whose core the other process holds (docs/benchmarks.md, "Threads").

The decision is applied through the environment before torch is imported (OMP_NUM_THREADS, and
OMP_WAIT_POLICY=WAIT_POLICY when that is set and the user set no wait policy: waiting threads then
sleep instead of spinning on a core someone else needs; off by default, see WAIT_POLICY); when
torch is already loaded, through torch.set_num_threads.
``LLMKIT_THREADS_POLICY=off`` leaves torch's defaults alone (the old behaviour, for benchmarks).

Standard library only (L0): the CLI decides before any handler imports torch.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

from llmkit.errors import LlmkitError

ENV_THREADS = "LLMKIT_THREADS"
ENV_POLICY = "LLMKIT_THREADS_POLICY"  # "off": torch's defaults, no wait policy (the old behaviour)
PROC_STAT = Path("/proc/stat")
CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = Path("/sys/fs/cgroup/cpu")  # cpu.cfs_quota_us and cpu.cfs_period_us
SYS_CPU = Path("/sys/devices/system/cpu")
SAMPLE_SECONDS = 0.1  # /proc/stat counts in 10 ms ticks: 0.1 s resolves a tenth of a core
# A core counts as taken when others kept it busy at least this share of the sample. A busy loop
# holds a whole core (1.0), and half a core taken already stalls, at every barrier, the thread that
# needs it. A judgment, not a fit: the shared machine of docs/benchmarks.md never went idle enough
# to calibrate it.
BUSY_THRESHOLD = 0.5
# OMP_WAIT_POLICY to set when the user set none. None: in a quiet moment PASSIVE made 2-thread steps
# 40-90% slower than libgomp's default spinning (a futex wake per parallel region), though on the
# loaded machine it made them 2-3x faster (docs/benchmarks.md, "Threads"). "PASSIVE" switches it on.
WAIT_POLICY: str | None = None


@dataclass(frozen=True)
class Threads:
    """A thread decision: ``count`` threads (None: left to torch), where it came from and why.

    ``source`` is "--threads", "LLMKIT_THREADS", "OMP_NUM_THREADS", "measured", "torchrun", "off"
    (LLMKIT_THREADS_POLICY=off) or "caller" (torch was imported before the command ran, so the
    program that imported it keeps its setting). ``wait_policy`` is the OMP_WAIT_POLICY to set, or
    None to leave it.
    """

    count: int | None
    source: str
    reason: str
    cores: int | None = None
    busy: float | None = None
    wait_policy: str | None = None

    def describe(self) -> str:
        """One line for a command's start, e.g. 'threads: 1 of 2 cores (1 busy with other work)'."""
        if self.count is None:
            return f"threads: torch's default ({self.reason})"
        return f"threads: {self.count}" + (f" of {self.cores} cores" if self.cores else "") + f" ({self.reason})"


def parse_count(value: str | int, source: str) -> int:
    """A thread count from a flag or an environment variable: a whole number >= 1, else LlmkitError."""
    try:
        count = int(str(value).strip())
    except ValueError:
        count = 0
    if count < 1:
        raise LlmkitError(f"{source} {value!r} is not a thread count", "give a whole number >= 1, e.g. --threads 2")
    return count


# ---- what the process may use ---------------------------------------------------------------
def affinity_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity mask; every CPU where there is no such call)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def cgroup_quota(v2: Path = CGROUP_V2, v1: Path = CGROUP_V1) -> float | None:
    """The cgroup CPU quota in cores (e.g. 1.5), or None when there is none or it is unreadable.

    cgroup v2: ``cpu.max`` holds "QUOTA PERIOD" or "max PERIOD". v1: ``cpu.cfs_quota_us`` (-1: none)
    over ``cpu.cfs_period_us``.
    """
    try:
        if v2.is_file():
            quota, _, period = v2.read_text().strip().partition(" ")
            if quota == "max":
                return None
            return int(quota) / int(period or 100_000)
        quota_file, period_file = v1 / "cpu.cfs_quota_us", v1 / "cpu.cfs_period_us"
        if quota_file.is_file() and period_file.is_file():
            quota = int(quota_file.read_text())
            return None if quota <= 0 else quota / int(period_file.read_text())
    except (OSError, ValueError, ZeroDivisionError):
        return None
    return None


def physical_cores(cpus: set[int], sys_cpu: Path = SYS_CPU) -> int:
    """How many physical cores the CPUs sit on (hyperthread siblings share one); len(cpus) if unknown."""
    cores = set()
    try:
        for cpu in cpus:
            topology = sys_cpu / f"cpu{cpu}" / "topology"
            package = (topology / "physical_package_id").read_text().strip()
            cores.add((package, (topology / "core_id").read_text().strip()))
    except OSError:
        return len(cpus)
    return len(cores) or len(cpus)


# ---- what others keep busy ------------------------------------------------------------------
def cpu_times(text: str, cpus: set[int] | None = None) -> dict[int, tuple[int, int]]:
    """Per-CPU (busy, total) ticks from the text of /proc/stat, for ``cpus`` (all when None).

    Busy is user + nice + system + irq + softirq + steal; idle is idle + iowait. Guest time is
    already inside user and nice, so it is not added again.
    """
    out = {}
    for line in text.splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        cpu = int(name[3:])
        if cpus is not None and cpu not in cpus:
            continue
        ticks = [int(f) for f in fields[:8]] + [0] * (8 - len(fields[:8]))
        user, nice, system, idle, iowait, irq, softirq, steal = ticks
        busy = user + nice + system + irq + softirq + steal
        out[cpu] = (busy, busy + idle + iowait)
    return out


def busy_cores(before: Mapping[int, tuple[int, int]], after: Mapping[int, tuple[int, int]], own: float = 0.0) -> float:
    """Cores kept busy between two ``cpu_times`` samples, less ``own`` (this process's share, in cores)."""
    total = 0.0
    for cpu, (busy_after, total_after) in after.items():
        if cpu not in before:
            continue
        busy_before, total_before = before[cpu]
        elapsed = total_after - total_before
        if elapsed > 0:
            total += (busy_after - busy_before) / elapsed
    return max(0.0, total - own)


def sample_busy(cpus: set[int], seconds: float = SAMPLE_SECONDS, stat: Path = PROC_STAT) -> float | None:
    """Cores that other processes keep busy among ``cpus``, from two /proc/stat samples; None if unreadable."""
    try:
        first = cpu_times(stat.read_text(), cpus)
        wall, cpu = time.perf_counter(), time.process_time()
        time.sleep(seconds)
        second = cpu_times(stat.read_text(), cpus)
        own = (time.process_time() - cpu) / max(time.perf_counter() - wall, 1e-9)
    except (OSError, ValueError):
        return None
    return busy_cores(first, second, own)


# ---- the decision ---------------------------------------------------------------------------
def decide(
    flag: str | int | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    torch_loaded: bool | None = None,
    cpus: set[int] | None = None,
    stat: Path = PROC_STAT,
    cgroup_v2: Path = CGROUP_V2,
    cgroup_v1: Path = CGROUP_V1,
    sys_cpu: Path = SYS_CPU,
    sample_seconds: float = SAMPLE_SECONDS,
) -> Threads:
    """The thread count for this process and why.

    Order: ``flag`` (--threads) -> LLMKIT_THREADS -> OMP_NUM_THREADS (each checked: a bad value is an
    LlmkitError) -> LLMKIT_THREADS_POLICY=off (torch's default) -> torch already imported (the
    caller's setting stays) -> under torchrun the usable cores over LOCAL_WORLD_SIZE -> the usable
    cores minus those others keep busy, at least 1. Paths are injectable for tests.
    """
    env = os.environ if environ is None else environ
    policy_on = env.get(ENV_POLICY, "").strip().lower() != "off"
    wait = WAIT_POLICY if WAIT_POLICY and policy_on and not _wait_policy_set(env) else None
    explicit = [(flag, "--threads")] + [(env.get(name), name) for name in (ENV_THREADS, "OMP_NUM_THREADS")]
    for value, source in explicit:
        if value is not None and str(value).strip() != "":
            return Threads(parse_count(value, source), source, f"set by {source}", wait_policy=wait)
    if not policy_on:
        return Threads(None, "off", f"{ENV_POLICY}=off")
    if torch_loaded if torch_loaded is not None else torch_imported():
        return Threads(None, "caller", "torch was imported before the command: its setting stays")
    cpus = affinity_cpus() if cpus is None else cpus
    usable = len(cpus)
    quota = cgroup_quota(cgroup_v2, cgroup_v1)
    if quota is not None:
        usable = min(usable, max(1, int(quota)))  # more threads than the quota get throttled in turn
    usable = min(usable, physical_cores(cpus, sys_cpu))
    local_world = parse_count(env.get("LOCAL_WORLD_SIZE", "1"), "LOCAL_WORLD_SIZE")
    if local_world > 1:
        # the node's other ranks start alongside: sampling would count them as other work
        count = max(1, usable // local_world)
        return Threads(count, "torchrun", f"{usable} cores shared by {local_world} processes", usable, wait_policy=wait)
    busy = sample_busy(cpus, sample_seconds, stat)
    taken = math.floor(busy + 1 - BUSY_THRESHOLD) if busy is not None else 0  # cores others hold
    count = max(1, usable - taken)
    if busy is None:
        reason = "load unknown"
    else:
        reason = f"{taken} busy with other work" if taken else "idle"
    return Threads(count, "measured", reason, usable, busy, wait)


def torch_imported() -> bool:
    """Whether torch is loaded already (its thread pools and OpenMP settings then belong to the caller)."""
    return "torch" in sys.modules


def _wait_policy_set(env: Mapping[str, str]) -> bool:
    return any(env.get(name) for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"))


def apply(threads: Threads, environ: MutableMapping[str, str] | None = None) -> None:
    """Make the decision take effect: environment variables for a torch imported later (and for
    child processes), torch.set_num_threads when torch is already loaded.

    Interop threads follow the count where torch still allows it (it refuses once they started).
    """
    env = os.environ if environ is None else environ
    if threads.wait_policy is not None:
        env.setdefault("OMP_WAIT_POLICY", threads.wait_policy)
    if threads.count is None:
        return
    env["OMP_NUM_THREADS"] = str(threads.count)
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "set_num_threads"):
        torch.set_num_threads(threads.count)
        try:
            torch.set_num_interop_threads(threads.count)
        except RuntimeError:  # interop pool already running (torch raises on a second set)
            pass
