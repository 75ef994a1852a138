"""The one JSON Lines reader (llmkit.files.read_jsonl) every JSONL file of llmkit goes through."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest

from llmkit.errors import LlmkitError
from llmkit.files import read_jsonl

LLMKIT = Path(__file__).resolve().parents[1] / "llmkit"


def test_values_come_with_their_line_numbers_past_blank_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n  \n{"b": [2]}\r\n"text"\n')
    assert list(read_jsonl(path, objects=False)) == [(1, {"a": 1}), (4, {"b": [2]}), (5, "text")]
    with pytest.raises(LlmkitError, match=r"a\.jsonl:5: not a JSON object \(str\); write one JSON object per line"):
        list(read_jsonl(path))


def test_gzip_files_read_the_same(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"a": 1}\n{"a": 2}\n'))
    assert [value["a"] for _, value in read_jsonl(path)] == [1, 2]
    path.write_bytes(gzip.compress(b'{"a": 1}\n')[:-6])
    with pytest.raises(LlmkitError, match=r"a\.jsonl\.gz: corrupt or truncated gzip file"):
        list(read_jsonl(path))


@pytest.mark.parametrize(
    "data,message",
    [
        (b'{"a": 1}\n{"a": 2\n', r"x\.jsonl:2: not valid JSON \(Expecting ',' delimiter at column 8\); fix it"),
        (b'{"a": 1}\n\xff\xfe\n', r"x\.jsonl:2: not UTF-8 text \(invalid start byte\); fix it"),
        (b"[1]\n", r"x\.jsonl:1: not a JSON object \(list\); fix it"),
    ],
)
def test_each_error_is_one_line_naming_file_and_line(tmp_path, data, message):
    path = tmp_path / "x.jsonl"
    path.write_bytes(data)
    with pytest.raises(LlmkitError, match=message) as caught:
        list(read_jsonl(path, "fix it"))
    assert "\n" not in str(caught.value)


def test_missing_file(tmp_path):
    with pytest.raises(LlmkitError, match=r"nope\.jsonl: file not found; pass another"):
        list(read_jsonl(tmp_path / "nope.jsonl", "fix it", missing_hint="pass another"))


def test_a_torn_last_line_is_dropped_only_when_asked_and_only_at_the_end(tmp_path):
    """What a kill in the middle of appending a log line leaves: the reader of that log drops it."""
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "lo')
    assert [v for _, v in read_jsonl(path, torn_tail=True)] == [{"step": 1}]
    with pytest.raises(LlmkitError, match=r"log\.jsonl:2: not valid JSON"):
        list(read_jsonl(path))
    path.write_text('{"step": 1, "lo\n{"step": 2}\n')  # a damaged line in the middle is damage, not a torn tail
    with pytest.raises(LlmkitError, match=r"log\.jsonl:1: not valid JSON"):
        list(read_jsonl(path, torn_tail=True))


def test_stray_bytes_may_be_replaced(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"text": "caf\xe9"}\n')
    assert list(read_jsonl(path, errors="replace")) == [(1, {"text": "caf\ufffd"})]


def test_no_module_reads_json_lines_by_hand():
    """Every JSONL file goes through read_jsonl: no other module parses a file's lines itself. (The
    curate pipeline re-reads its own kept.jsonl by position while copying it; it parses no input file.)"""
    by_hand = re.compile(r"json\.loads\(line\)|for \w+, line in enumerate\(.*\):\n(?:.*\n){0,6}.*json\.loads")
    allowed = {LLMKIT / "files.py", LLMKIT / "curate" / "pipeline.py"}
    found = [p for p in LLMKIT.rglob("*.py") if p not in allowed and by_hand.search(p.read_text())]
    assert found == []


# ---- the one TOML-table loader (llmkit.config_tables) of pretrain, finetune and sweep configs ----------------
def _loaders():
    from llmkit.finetune.config import load_finetune_config
    from llmkit.runconfig import load_run_config
    from llmkit.scale.sweep import load_sweep_config

    return {
        "pretrain": (load_run_config, "[model] and [train]"),
        "finetune": (load_finetune_config, "[model], [task], [method] and [train]"),
        "sweep": (load_sweep_config, "[model], [train] and [sweep]"),
    }


@pytest.mark.parametrize("kind", ["pretrain", "finetune", "sweep"])
@pytest.mark.parametrize(
    "text,message",
    [
        ("[optim]\nlr = 3\n", r"{path}: unknown table or key optim; the file holds {tables}$"),
        ("train = 3\n", r"{path}: unknown table or key train|{path}: train must be a table \(\[train\]\)"),
        ("[train]\nstepz = 3\n", r"{path} \[train\]: unknown train config field\(s\) stepz; known fields are: "),
        ("[train\n", r"{path}: not valid TOML \("),
    ],
)
def test_every_config_reads_its_tables_through_one_loader(kind, text, message, tmp_path):
    load, tables = _loaders()[kind]
    path = tmp_path / "run.toml"
    path.write_text(text)
    pattern = message.format(path=re.escape(str(path)), tables=re.escape(tables))
    with pytest.raises(LlmkitError, match=pattern):
        load(path)
