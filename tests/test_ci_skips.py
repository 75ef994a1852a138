"""Under CI (LLMKIT_CI=1) a skip fails the run; elsewhere it is a skip that prints its reason."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

SKIPPING = """
import pytest

def test_needs_a_browser():
    pytest.skip("no chromium on PATH")

def test_plain():
    pass
"""


def run_pytest(directory: Path, ci: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("LLMKIT_CI", "PYTEST_ADDOPTS")}
    if ci:
        env["LLMKIT_CI"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(directory)]
    return subprocess.run(cmd, env=env, cwd=directory, capture_output=True, text=True, timeout=120)


def test_a_skip_fails_under_ci_and_prints_its_reason_elsewhere(tmp_path):
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    local = run_pytest(tmp_path, ci=False)
    assert local.returncode == 0, local.stdout
    assert "SKIPPED [1] test_skipping.py:5: no chromium on PATH" in local.stdout
    assert "1 passed, 1 skipped" in local.stdout
    ci = run_pytest(tmp_path, ci=True)
    assert ci.returncode == 1 and "1 failed, 1 passed" in ci.stdout
    assert "skipped under CI (LLMKIT_CI=1), where nothing may skip: Skipped: no chromium on PATH" in ci.stdout


def test_a_module_level_importorskip_fails_under_ci(tmp_path):
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    body = 'import pytest\npytest.importorskip("no_such_module_x", reason="pip install x")\n\ndef test_x():\n    pass\n'
    (tmp_path / "test_module_skip.py").write_text(body)
    (tmp_path / "test_plain.py").write_text("def test_plain():\n    pass\n")
    local = run_pytest(tmp_path, ci=False)
    assert local.returncode == 0 and "SKIPPED [1] test_module_skip.py:2: pip install x" in local.stdout
    ci = run_pytest(tmp_path, ci=True)
    assert ci.returncode != 0 and "where nothing may skip: Skipped: pip install x" in ci.stdout


XFAILING = """
import pytest

@pytest.mark.xfail(reason="known bug 12")
def test_known_bug():
    assert 1 == 2

@pytest.mark.xfail(reason="fixed since")
def test_fixed_bug():
    pass
"""


def test_an_xfail_fails_under_ci_and_an_xpass_fails_everywhere(tmp_path):
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    shutil.copy(TESTS.parent / "pyproject.toml", tmp_path / "pyproject.toml")  # xfail_strict
    (tmp_path / "test_xfailing.py").write_text(XFAILING)
    local = run_pytest(tmp_path, ci=False)
    assert local.returncode == 1 and "1 failed, 1 xfailed" in local.stdout, local.stdout
    assert "[XPASS(strict)] fixed since" in local.stdout
    ci = run_pytest(tmp_path, ci=True)
    assert ci.returncode == 1 and "2 failed" in ci.stdout and "xfailed" not in ci.stdout, ci.stdout
    assert "xfail under CI (LLMKIT_CI=1), where a known failure fails the run: known bug 12" in ci.stdout


MARKED = """
import pytest

@pytest.mark.cuda
def test_on_the_gpu():
    assert False, "a CUDA test ran on CI's CPU machine"

@pytest.mark.slow
def test_slow():
    pass

def test_plain():
    pass
"""


def test_ci_deselects_cuda_tests_by_name_and_counts_them(tmp_path):
    """.ci/run's PYTEST_ADDOPTS runs the slow tests and deselects the cuda-marked ones (counted, not skipped,
    so the no-skip rule stays whole), and its count line finds them."""
    script = (TESTS.parent / ".ci" / "run").read_text()
    addopts = next(line for line in script.splitlines() if line.startswith("export PYTEST_ADDOPTS="))
    addopts = addopts.split("=", 1)[1].strip('"')
    assert addopts == "-m 'not cuda'"
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    shutil.copy(TESTS.parent / "pyproject.toml", tmp_path / "pyproject.toml")  # the markers, default -m
    (tmp_path / "test_marked.py").write_text(MARKED)
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"} | {"LLMKIT_CI": "1", "PYTEST_ADDOPTS": addopts}
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path)]
    ci = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert ci.returncode == 0 and "2 passed, 1 deselected" in ci.stdout, ci.stdout
    count = subprocess.run([*cmd[:3], "--collect-only", "-q", "-m", "cuda", *cmd[4:]], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "--collect-only -q -m cuda" in script and count.stdout.count("::") == 1
    local = run_pytest(tmp_path, ci=False)  # the default run (pyproject's addopts): neither slow nor cuda
    assert local.returncode == 0 and "1 passed, 2 deselected" in local.stdout, local.stdout
