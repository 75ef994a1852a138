"""Suite-wide settings and the tiny language model several test files share.

One torch thread per test process: the tests run tiny models, where a second OpenMP thread costs
more in synchronisation than it gains, and on a busy 2-core machine spinning threads slowed some
files 20x.

``tiny_tokenizer`` and ``tiny_checkpoint`` give the decoding, batching and serving tests one small
model with real text: a byte-level BPE trained on ``TINY_CORPUS`` (ASCII prose and code, a chat turn,
and emoji and CJK characters that take several byte-level tokens each) and a random-weight decoder
(2 layers, 32 wide) saved with it as a checkpoint directory.

Under CI (``LLMKIT_CI=1``, set by .ci/run) a skipped test fails instead: a missing browser, data
set, package or checkpoint there means CI is not testing what the project promises. So does an
xfail (a known failure), and an unexpected pass is a failure everywhere (``xfail_strict``). Outside
CI a skip prints its reason (``make test`` runs ``pytest -rs``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

IN_CI = os.environ.get("LLMKIT_CI") == "1"


def _skip_reason(longrepr) -> str:
    # a skip's longrepr is (path, line, "Skipped: reason")
    return longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)


def _fail_skip_under_ci(report) -> None:
    if not (IN_CI and report.skipped):
        return
    report.outcome = "failed"
    if hasattr(report, "wasxfail"):  # an expected failure is a known defect that CI would otherwise pass
        reason = f": {report.wasxfail}" if report.wasxfail else ""
        report.longrepr = f"xfail under CI (LLMKIT_CI=1), where a known failure fails the run{reason}"
        del report.wasxfail
    else:
        report.longrepr = f"skipped under CI (LLMKIT_CI=1), where nothing may skip: {_skip_reason(report.longrepr)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_skip_under_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_skip_under_ci(outcome.get_result())  # a module-level importorskip skips at collection


TINY_CORPUS = [
    "The cat ate the cake. The dog ate the donut. A banana is yellow.",
    "Emoji: 😀 🎉 🚀 and 中文字符 日本語 테스트 mixed with plain words.",
    "User: hello\nAssistant: hi there. def f(x):\n    return x + 1\n",
] * 20


@pytest.fixture(scope="session")
def tiny_corpus() -> list[str]:
    """TINY_CORPUS, for tests that train other kinds of tokenizer on the same text."""
    return TINY_CORPUS


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE of 300 tokens trained on TINY_CORPUS."""
    from llmkit.data.tokenizer_train import train_tokenizer

    return train_tokenizer(TINY_CORPUS, "bpe", vocab_size=300)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_tokenizer, tmp_path_factory):
    """``make(preset="tiny-gpt-1m", window=64, **overrides) -> Path``: a random-weight decoder (2 layers,
    32 wide, 4 heads, seed 0) saved with ``tiny_tokenizer`` and the generation config for its family.

    Each distinct call is built once per session; the directory is shared, so treat it as read-only.
    """
    from hf_utils import randomize

    from llmkit import checkpoint
    from llmkit.config import GenerationConfig, ModelConfig
    from llmkit.models import build_model

    built: dict[tuple, Path] = {}
    bpe = tiny_tokenizer

    def make(preset: str = "tiny-gpt-1m", window: int = 64, **overrides) -> Path:
        key = (preset, window, *sorted(overrides.items()))
        if key not in built:
            torch.manual_seed(0)
            cfg = ModelConfig.from_name(
                preset, vocab_size=bpe.vocab_size, d_model=32, n_layer=2, n_head=4, max_seq_len=window,
                bos_token_id=bpe.bos_token_id, eos_token_id=bpe.eos_token_id, pad_token_id=bpe.pad_token_id,
                **overrides,
            )  # fmt: skip
            out = tmp_path_factory.mktemp(f"{preset}-{window}") / "tiny"
            gen = GenerationConfig.for_model(cfg)
            built[key] = checkpoint.save(randomize(build_model(cfg)), out, tokenizer=bpe, generation_config=gen)
        return built[key]

    return make


@pytest.fixture(autouse=True)
def _subnormals_restored():
    """make_state turns on torch.set_flush_denormal for a CPU training process (denormals are ~100x slower);
    a test that trains in-process must not leave it on for the tests after it (hypothesis, which the
    fuzz tests use, refuses to run without subnormal floats)."""
    yield
    torch.set_flush_denormal(False)


@pytest.fixture(scope="session")
def docs_corpus(tmp_path_factory) -> Path:
    """A folder ``docs`` of 32 files (documents), each the same ~700-character passage of the Python docs,
    for tiny training runs: about a quarter go to val, and train and val hold the same text, so a model
    that memorizes it drives the loss far below what any context-free predictor can reach."""
    from llmkit.data.builtin import python_docs_texts

    docs = tmp_path_factory.mktemp("corpus") / "docs"
    docs.mkdir()
    passage = list(python_docs_texts())[45][:700]
    for i in range(32):
        (docs / f"doc{i:02d}.txt").write_text(passage)
    return docs
