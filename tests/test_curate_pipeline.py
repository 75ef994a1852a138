"""`llmkit data curate` end to end: outputs, report, resume after a crash or a kill, workers, the datatrove
executor in local mode, the CLI, and `llmkit data stats`."""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmkit.curate import pipeline
from llmkit.curate.config import CurateConfig
from llmkit.curate.pipeline import CurateOptions, curate
from llmkit.data.sources import read_source, resolve_source
from llmkit.errors import LlmkitError

ROOT = Path(__file__).resolve().parents[1]


def _sentences() -> tuple[list[str], list[str]]:
    en, fr = [], []
    with gzip.open(ROOT / "data/translation/fra-eng/fra.txt.gz", "rt", encoding="utf-8") as file:
        for line in file:
            e, f = line.rstrip("\n").split("\t")[:2]
            if 8 <= len(e.split()) <= 25 and e.endswith(".") and (not en or en[-1] != e):  # one pair per sentence
                en.append(e)
                fr.append(f)
    return en, fr


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    """Four .jsonl files: English documents (10-16 sentences of fra-eng, one per line), with exact copies,
    a near copy (5% of the words changed), French documents, lorem ipsum, a boilerplate page, PII in some."""
    rng = random.Random(0)
    en, fr = _sentences()
    folder = tmp_path_factory.mktemp("raw")
    docs = []
    for i in range(48):
        lines = rng.sample(en, rng.randint(10, 16))
        if i % 7 == 0:
            lines.append("Write to jane.doe@example.com or call +1 (555) 010-9999 for details.")
        docs.append("\n".join(lines))
    docs.append(docs[3].upper().replace(".", "!"))  # exact duplicate after case and punctuation folding
    docs.append(docs[5] + "\n")  # exact duplicate after whitespace normalization
    words = docs[8].split(" ")
    for k in range(0, len(words), 20):
        words[k] = "changed"
    docs.append(" ".join(words))  # near duplicate: 5% of the words replaced
    docs += ["\n".join(rng.sample(fr, 12)) for _ in range(4)]  # French
    # lorem ipsum alone is Latin to the language filter; inside an English page it is C4's to remove
    docs.append("\n".join(rng.sample(en, 12)) + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.")
    docs.append("Home | Products | About us | Contact\nLogin\nCart (0)")
    rng.shuffle(docs)
    paths = []
    for part in range(4):
        path = folder / f"part{part}.jsonl"
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[part::4]))
        paths.append(path)
    return paths


def _outputs(out: Path) -> dict[str, bytes]:
    files = sorted((out / "kept").glob("*.jsonl")) + [out / "removed.jsonl"]
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in files}


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _config() -> CurateConfig:
    cfg = CurateConfig()
    cfg.c4.min_sentences = 3  # fra-eng sentences are short documents' lines; keep C4 otherwise as published
    return cfg


@pytest.fixture(scope="module")
def whole(corpus, tmp_path_factory) -> tuple[Path, dict]:
    """One uninterrupted single-worker run over ``corpus``: its OUT and its report."""
    out = tmp_path_factory.mktemp("whole") / "out"
    return out, curate(CurateOptions([str(p) for p in corpus], out, _config(), workers=1))


def test_curate_outputs_report_and_tokenize_reads_them(whole):
    out, report = whole
    kept = [r for path in sorted((out / "kept").glob("*.jsonl")) for r in _read(path)]
    removed = _read(out / "removed.jsonl")
    assert [p.name for p in sorted((out / "kept").glob("*.jsonl"))] == [f"0{i}-part{i}.jsonl" for i in range(4)]
    assert len(kept) + len(removed) == report["in"]["docs"] == 57
    rules = [r["rule"] for r in removed]
    assert rules.count("exact_dedup") == 2 and rules.count("near_dedup") == 1
    assert rules.count("language.not_kept") == 5 and rules.count("c4.lorem_ipsum") == 1  # French, the menu
    assert len(kept) == 48
    near = next(r for r in removed if r["rule"] == "near_dedup")
    kept_twin = next(r for r in kept if r["id"] == near["detail"].split()[2])  # "duplicate of ID (Jaccard J)"
    assert "Jaccard" in near["detail"] and ("changed" in near["text"]) != ("changed" in kept_twin["text"])
    assert all("@example.com" not in r["text"] and "<EMAIL>" in r["text"] for r in kept if "Write to" in r["text"])
    assert report["pii_redacted"] == {"email": 7, "phone": 7}
    # the funnel adds up: each step removes what its rules removed
    steps = {row["step"]: row for row in report["funnel"]}
    assert steps["raw"]["docs"] == 57 and steps["kept"]["docs"] == 48 == report["out"]["docs"]
    assert steps["near_dedup"]["docs"] == 48 and steps["language"]["removed"]["docs"] == 5
    assert json.loads((out / "report.json").read_text())["out"] == report["out"]
    assert (out / "funnel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # `llmkit data tokenize` reads the kept files as they are (its .jsonl source, field "text")
    first = sorted((out / "kept").glob("*.jsonl"))[0]
    texts = ["".join(blocks) for _, blocks in read_source(resolve_source(str(first)))]
    assert texts == [r["text"] for r in _read(first)]


def test_two_workers_give_the_same_output_as_one(corpus, whole, tmp_path):
    report = curate(CurateOptions([str(p) for p in corpus], tmp_path / "two", _config(), workers=2))
    assert report["workers"] == 2
    assert _outputs(tmp_path / "two") == _outputs(whole[0])


def test_a_crashed_run_resumes_to_identical_output(corpus, whole, tmp_path, monkeypatch):
    sources = [str(p) for p in corpus]
    out = tmp_path / "resumed"
    real_read = pipeline.read_shard

    def crash_in_third_shard(shard, read):
        for n, doc in enumerate(real_read(shard, read)):
            if shard.index == 2 and n == 3:
                raise KeyboardInterrupt  # killed half-way through a shard
            yield doc

    monkeypatch.setattr(pipeline, "read_shard", crash_in_third_shard)
    with pytest.raises(KeyboardInterrupt):
        curate(CurateOptions(sources, out, _config()))
    done = sorted(p.name for p in (out / "work/shards").iterdir())
    assert done == ["00000", "00001"]  # the interrupted shard left nothing behind
    assert not (out / "report.json").exists() and not (out / "removed.jsonl").exists()
    monkeypatch.setattr(pipeline, "read_shard", real_read)
    redone, real_filter = [], pipeline.filter_shard

    def counting_filter(shard, *args, **kwargs):
        redone.append(shard.index)
        return real_filter(shard, *args, **kwargs)

    monkeypatch.setattr(pipeline, "filter_shard", counting_filter)
    curate(CurateOptions(sources, out, _config()))
    assert redone == [2, 3]  # only the unfinished shards ran again
    assert _outputs(out) == _outputs(whole[0])


def test_resume_refuses_other_settings(corpus, tmp_path):
    sources = [str(p) for p in corpus]
    curate(CurateOptions(sources[:1], tmp_path / "out", _config()))
    with pytest.raises(LlmkitError, match="other config"):
        curate(CurateOptions(sources[:1], tmp_path / "out", CurateConfig()))
    with pytest.raises(LlmkitError, match="other sources"):
        curate(CurateOptions(sources[:2], tmp_path / "out", _config()))


def test_near_dedup_is_across_shards_not_within(tmp_path):
    base = "\n".join(random.Random(1).sample(_sentences()[0], 14))
    copy = base.replace(" the ", " a ", 3)
    (tmp_path / "a.txt").write_text(base)
    (tmp_path / "b.txt").write_text(copy)  # another file: another shard
    report = curate(CurateOptions([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], tmp_path / "out", _config()))
    removed = _read(tmp_path / "out/removed.jsonl")
    assert [(r["source"], r["rule"]) for r in removed] == [(str(tmp_path / "b.txt"), "near_dedup")]
    assert report["out"]["docs"] == 1


@pytest.mark.slow
def test_a_killed_cli_run_resumes_to_identical_output(corpus, tmp_path):
    # SIGKILL, no cleanup: only the atomic shard folders and the manifest decide what the rerun redoes
    cfg = tmp_path / "c.toml"
    cfg.write_text("[c4]\nmin_sentences = 3\n")
    many = []
    for k in range(3):  # 12 shards, so the kill lands between shards or in one
        for p in corpus:
            copy = tmp_path / f"{p.stem}-{k}.jsonl"
            copy.write_text(p.read_text())
            many.append(str(copy))
    command = [sys.executable, "-m", "llmkit", "data", "curate", *many, "--config", str(cfg), "--workers", "1"]
    subprocess.run([*command, "--out", str(tmp_path / "whole")], check=True, capture_output=True, timeout=300)
    out = tmp_path / "killed"
    process = subprocess.Popen([*command, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "work/shards/00002").is_dir() and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert (out / "work/shards/00002").is_dir() and not (out / "report.json").exists()
    subprocess.run([*command, "--out", str(out)], check=True, capture_output=True, timeout=300)
    assert _outputs(out) == _outputs(tmp_path / "whole")


@pytest.mark.slow
def test_datatrove_local_executor_gives_the_same_output(corpus, whole, tmp_path):
    pytest.importorskip("datatrove")
    from llmkit.curate.executors import curate_with_datatrove

    report = curate_with_datatrove(CurateOptions([str(p) for p in corpus], tmp_path / "dt", _config(), workers=2))
    assert _outputs(tmp_path / "dt") == _outputs(whole[0])
    assert report["out"]["docs"] == 48


def test_cli_curate_and_errors(corpus, tmp_path, capsys):
    from llmkit.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text("[c4]\nmin_sentences = 3\n")
    out = tmp_path / "out"
    assert main(["data", "curate", str(corpus[0]), "--config", str(cfg), "--out", str(out), "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "top removal reasons" in printed and f"-> {out}" in printed
    cfg.write_text("[c4]\nmin_sentence = 3\n")
    assert main(["data", "curate", str(corpus[0]), "--config", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown key 'min_sentence'" in err and "min_sentences" in err and len(err.splitlines()) == 1
    assert main(["data", "curate", str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 2
    assert main(["data", "curate", "--print-config"]) == 0
    assert CurateConfig.from_dict(__import__("tomllib").loads(capsys.readouterr().out)) == CurateConfig()


def test_stats_tokens_per_word_and_most_split_words(tmp_path, tiny_tokenizer, capsys):
    from llmkit.cli import main
    from llmkit.curate.stats import corpus_stats, word_pieces

    text = "The cat ate the cake. " * 20 + "hepatosplenomegaly hepatosplenomegaly hepatosplenomegaly banana."
    path = tmp_path / "c.txt"
    path.write_text(text)
    stats = corpus_stats(str(path), tiny_tokenizer)
    assert stats.words == 20 * 5 + 4
    assert stats.tokens == len(tiny_tokenizer.encode(text, add_special_tokens=False))
    assert stats.tokens_per_word == pytest.approx(stats.tokens / stats.words)
    top = stats.most_split(top=3, min_count=3)
    assert top[0][0] == "hepatosplenomegaly" and top[0][1] > 5
    pieces = word_pieces(tiny_tokenizer, ["cat", "hepatosplenomegaly"])
    spaced = tiny_tokenizer.encode(" hepatosplenomegaly", add_special_tokens=False)
    space = tiny_tokenizer.encode(" ", add_special_tokens=False)
    assert spaced[0] == space[0]  # this tiny BPE never merged " h": the space is its own token, not counted
    assert pieces["hepatosplenomegaly"] == len(spaced) - 1 == len(tiny_tokenizer.encode("hepatosplenomegaly"))
    tiny_tokenizer.save(tmp_path / "tok")
    assert main(["data", "stats", str(path), "--tokenizer", str(tmp_path / "tok"), "--min-count", "3"]) == 0
    printed = capsys.readouterr().out
    assert "tokens per word" in printed and "hepatosplenomegaly" in printed
