"""The thread policy (llmkit/threads.py): precedence, what the process may use, busy cores, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmkit import threads
from llmkit.cli import main
from llmkit.errors import LlmkitError

ROOT = Path(__file__).resolve().parents[1]
NO_CGROUP = {"cgroup_v2": Path("/nonexistent/cpu.max"), "cgroup_v1": Path("/nonexistent/cpu")}


def stat_text(*cpus: tuple[int, int, int, int]) -> str:
    """/proc/stat text with an aggregate line and one line per CPU: (user, nice, system, idle) each."""
    total = [sum(c[i] for c in cpus) for i in range(4)]
    lines = ["cpu  " + " ".join(map(str, total)) + " 0 0 0 0 0 0"]
    lines += [f"cpu{i} " + " ".join(map(str, c)) + " 0 0 0 0 0 0" for i, c in enumerate(cpus)]
    return "\n".join(lines + ["intr 1 2 3", "ctxt 99", "btime 1700000000"]) + "\n"


def measured(monkeypatch, busy: float | None, **kwargs) -> threads.Threads:
    monkeypatch.setattr(threads, "sample_busy", lambda cpus, seconds, stat: busy)
    kwargs.setdefault("cpus", {0, 1})
    return threads.decide(None, {}, torch_loaded=False, **{**NO_CGROUP, **kwargs})


# ---- precedence and bad values --------------------------------------------------------------
def test_flag_beats_environment_and_environment_order():
    env = {"LLMKIT_THREADS": "2", "OMP_NUM_THREADS": "1"}
    got = threads.decide("3", env)
    assert (got.count, got.source) == (3, "--threads")
    got = threads.decide(None, env)
    assert (got.count, got.source) == (2, "LLMKIT_THREADS")
    got = threads.decide(None, {"OMP_NUM_THREADS": "1"})
    assert (got.count, got.source) == (1, "OMP_NUM_THREADS")
    # an empty variable counts as unset
    got = threads.decide(None, {"LLMKIT_THREADS": "", "OMP_NUM_THREADS": "4"})
    assert (got.count, got.source) == (4, "OMP_NUM_THREADS")


@pytest.mark.parametrize("value", ["0", "-1", "x", "1.5", 0])
def test_bad_counts_are_errors(value):
    with pytest.raises(LlmkitError, match="not a thread count"):
        threads.decide(value, {})
    with pytest.raises(LlmkitError, match="LLMKIT_THREADS"):
        threads.decide(None, {"LLMKIT_THREADS": str(value)})


def test_policy_off_leaves_torch_alone_but_explicit_counts_still_apply():
    off = threads.decide(None, {"LLMKIT_THREADS_POLICY": "off"}, torch_loaded=False)
    assert (off.count, off.source, off.wait_policy) == (None, "off", None)
    explicit = threads.decide("2", {"LLMKIT_THREADS_POLICY": "off"})
    assert (explicit.count, explicit.wait_policy) == (2, None)


def test_torch_already_imported_keeps_the_callers_setting(monkeypatch):
    monkeypatch.setattr(threads, "sample_busy", lambda *a: pytest.fail("no sampling when torch is loaded"))
    got = threads.decide(None, {}, torch_loaded=True)
    assert (got.count, got.source) == (None, "caller")


def test_wait_policy_only_when_the_user_set_none(monkeypatch):
    monkeypatch.setattr(threads, "WAIT_POLICY", None)  # the default: libgomp's own
    assert threads.decide("1", {}).wait_policy is None
    monkeypatch.setattr(threads, "WAIT_POLICY", "PASSIVE")
    assert threads.decide("1", {}).wait_policy == "PASSIVE"
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"):
        assert threads.decide("1", {name: "1000"}).wait_policy is None


# ---- what the process may use ---------------------------------------------------------------
def test_cgroup_v2_quota(tmp_path):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    assert threads.cgroup_quota(cpu_max, tmp_path / "v1") == 1.5
    cpu_max.write_text("max 100000\n")
    assert threads.cgroup_quota(cpu_max, tmp_path / "v1") is None
    cpu_max.write_text("garbage\n")
    assert threads.cgroup_quota(cpu_max, tmp_path / "v1") is None


def test_cgroup_v1_quota(tmp_path):
    (tmp_path / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_quota(tmp_path / "absent", tmp_path) == 2.0
    (tmp_path / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.cgroup_quota(tmp_path / "absent", tmp_path) is None
    assert threads.cgroup_quota(tmp_path / "absent", tmp_path / "absent") is None


def write_topology(root: Path, cores: dict[int, int]) -> Path:
    for cpu, core in cores.items():
        topology = root / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text("0\n")
        (topology / "core_id").write_text(f"{core}\n")
    return root


def test_physical_cores_merge_hyperthread_siblings(tmp_path):
    sys_cpu = write_topology(tmp_path, {0: 0, 1: 0, 2: 1, 3: 1})
    assert threads.physical_cores({0, 1, 2, 3}, sys_cpu) == 2
    assert threads.physical_cores({0, 2}, sys_cpu) == 2
    assert threads.physical_cores({0, 1}, sys_cpu) == 1
    assert threads.physical_cores({0, 1, 2}, tmp_path / "absent") == 3  # unknown topology: one core per CPU


def test_affinity_quota_and_cores_bound_the_default(monkeypatch, tmp_path):
    sys_cpu = write_topology(tmp_path / "sys", {i: i for i in range(8)})
    got = measured(monkeypatch, 0.0, cpus={0, 1, 2, 3}, sys_cpu=sys_cpu)
    assert (got.count, got.cores, got.source, got.reason) == (4, 4, "measured", "idle")
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("250000 100000\n")
    got = measured(monkeypatch, 0.0, cpus={0, 1, 2, 3}, sys_cpu=sys_cpu, cgroup_v2=cpu_max)
    assert got.count == 2  # 2.5 cores of quota: a third thread would be throttled in turn
    cpu_max.write_text("50000 100000\n")
    assert measured(monkeypatch, 0.0, cpus={0, 1, 2, 3}, sys_cpu=sys_cpu, cgroup_v2=cpu_max).count == 1
    hyperthreads = write_topology(tmp_path / "ht", {0: 0, 1: 0, 2: 1, 3: 1})
    assert measured(monkeypatch, 0.0, cpus={0, 1, 2, 3}, sys_cpu=hyperthreads).count == 2


def test_affinity_mask_of_this_process():
    assert threads.affinity_cpus() == set(os.sched_getaffinity(0))


# ---- busy cores -----------------------------------------------------------------------------
def test_cpu_times_per_cpu_and_only_the_mask():
    text = stat_text((10, 1, 4, 85), (50, 0, 0, 50))
    assert threads.cpu_times(text) == {0: (15, 100), 1: (50, 100)}
    assert threads.cpu_times(text, {1}) == {1: (50, 100)}


def test_busy_cores_from_two_samples():
    before = threads.cpu_times(stat_text((100, 0, 0, 900), (100, 0, 0, 900)))
    # one CPU fully busy (10 ticks busy of 10), the other 20% busy
    after = threads.cpu_times(stat_text((108, 0, 2, 900), (101, 0, 1, 908)))
    assert threads.busy_cores(before, after) == pytest.approx(1.2)
    assert threads.busy_cores(before, after, own=0.2) == pytest.approx(1.0)  # this process's share is not "others"
    assert threads.busy_cores(before, after, own=5.0) == 0.0
    assert threads.busy_cores(before, threads.cpu_times(stat_text((100, 0, 0, 900), (100, 0, 0, 900)))) == 0.0


def test_sample_busy_reads_the_stat_file(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(stat_text((100, 0, 0, 900), (100, 0, 0, 900)))
    assert threads.sample_busy({0, 1}, 0.0, stat) == 0.0  # the same counts twice: nothing busy
    assert threads.sample_busy({0, 1}, 0.0, tmp_path / "absent") is None


@pytest.mark.parametrize(
    "busy, count, reason",
    [(0.1, 2, "idle"), (0.45, 2, "idle"), (0.55, 1, "1 busy with other work"), (1.0, 1, "1 busy with other work"),
     (2.0, 1, "2 busy with other work"), (None, 2, "load unknown")],
)  # fmt: skip
def test_busy_cores_lower_the_default(monkeypatch, busy, count, reason):
    got = measured(monkeypatch, busy, sys_cpu=Path("/nonexistent"))
    assert (got.count, got.reason) == (count, reason)
    assert got.describe() == f"threads: {count} of 2 cores ({reason})"


def test_torchrun_shares_the_cores_among_local_processes(monkeypatch):
    monkeypatch.setattr(threads, "sample_busy", lambda *a: pytest.fail("ranks starting together are not other work"))
    got = threads.decide(None, {"LOCAL_WORLD_SIZE": "2"}, torch_loaded=False, cpus={0, 1, 2, 3, 4},
                         sys_cpu=Path("/nonexistent"), **NO_CGROUP)  # fmt: skip
    assert (got.count, got.source) == (2, "torchrun")
    got = threads.decide(None, {"LOCAL_WORLD_SIZE": "4"}, torch_loaded=False, cpus={0, 1},
                         sys_cpu=Path("/nonexistent"), **NO_CGROUP)  # fmt: skip
    assert got.count == 1


# ---- applying it ----------------------------------------------------------------------------
def test_apply_sets_the_environment_and_keeps_the_users_wait_policy():
    env: dict[str, str] = {}
    threads.apply(threads.Threads(3, "--threads", "set", wait_policy="PASSIVE"), env)
    assert env == {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    threads.apply(threads.Threads(None, "off", "off"), env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_apply_sets_torch_when_it_is_loaded(monkeypatch):
    before = torch.get_num_threads()
    try:
        threads.apply(threads.Threads(2, "--threads", "set"), {})
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_l0_module_does_not_import_torch():
    code = "import sys, llmkit.threads as t; t.decide(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert out.stdout.strip() == "False"


# ---- the CLI --------------------------------------------------------------------------------
def run_cli_then_torch(args: list[str], **env: str) -> str:
    """A fresh process: `llmkit ARGS` in-process (plan: no torch), then import torch and report."""
    code = (
        "import os, sys, io, contextlib\n"
        "from llmkit.cli import main\n"
        f"with contextlib.redirect_stdout(io.StringIO()): rc = main({args!r})\n"
        "import torch\n"
        "print(rc, torch.get_num_threads(), os.environ.get('OMP_WAIT_POLICY'))\n"
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "LLMKIT_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**clean, "PYTHONPATH": str(ROOT), **env})  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_cli_thread_count_reaches_torch():
    # torch's own default is one thread per core (and it caps a count from the environment there),
    # so 1 is the count that shows the setting arrived on any machine of 2 cores or more
    assert run_cli_then_torch(["plan", "gpt2", "--threads", "1"]) == f"0 1 {threads.WAIT_POLICY}"
    assert run_cli_then_torch(["plan", "gpt2"], LLMKIT_THREADS="1", OMP_WAIT_POLICY="ACTIVE") == "0 1 ACTIVE"


def test_cli_measured_default_reaches_torch():
    rc, count, wait = run_cli_then_torch(["plan", "gpt2"]).split()
    assert (rc, wait) == ("0", str(threads.WAIT_POLICY))
    assert 1 <= int(count) <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_cli_bad_thread_counts_exit_2_with_one_line(value, capsys, monkeypatch):
    monkeypatch.setenv("LLMKIT_THREADS", "")  # an empty variable counts as unset
    assert main(["plan", "gpt2", "--threads", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    hint = "give a whole number >= 1, e.g. --threads 2"
    assert err == [f"llmkit plan: error: --threads '{value}' is not a thread count; {hint}"]


def test_every_command_takes_threads(capsys):
    from llmkit.cli import _all_subparsers, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    leaves = _all_subparsers(sub)
    assert len(leaves) >= 15
    for leaf in leaves:
        assert "--threads" in leaf._option_string_actions, leaf.prog


def test_pretrain_prints_a_measured_decision_only(tmp_path, monkeypatch, capsys):
    # the line is printed before the handler runs: a missing config fails after it, cheaply
    for name in ("LLMKIT_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY"):
        monkeypatch.setenv(name, "")  # recorded, so what main() sets is undone (delenv of an unset one is not)
        monkeypatch.delenv(name)
    before = torch.get_num_threads()
    try:
        assert main(["pretrain", "--config", str(tmp_path / "absent.toml"), "--threads", "1"]) == 2
        assert len(capsys.readouterr().err.splitlines()) == 1  # a count the user chose needs no explaining
        monkeypatch.delenv("OMP_NUM_THREADS")  # main() exported the count for torch's import
        monkeypatch.setattr(threads, "sample_busy", lambda *a: 1.0)
        monkeypatch.setattr(threads, "affinity_cpus", lambda: {0, 1})
        monkeypatch.setattr(threads, "physical_cores", lambda cpus, sys_cpu: 2)
        monkeypatch.setattr(threads, "cgroup_quota", lambda v2, v1: None)
        monkeypatch.setattr(threads, "torch_imported", lambda: False)  # as in a fresh `llmkit` process
        assert main(["pretrain", "--config", str(tmp_path / "absent.toml")]) == 2
    finally:
        torch.set_num_threads(before)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "threads: 1 of 2 cores (1 busy with other work)"
    assert err[1].startswith("llmkit pretrain: error: ") and "absent.toml: file not found" in err[1] and len(err) == 2
