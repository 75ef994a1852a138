"""`llmkit data tokenize`: sources, the tiktoken engine against `tokenizers`, shards, mixing, TokenDataset."""

from __future__ import annotations

import gzip
import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
import tokenizers
import torch
from tokenizers import models, pre_tokenizers

from llmkit.data import fast_bpe, shards
from llmkit.data.builtin import python_docs_texts, stdlib_source_texts
from llmkit.data.datasets import TokenDataset, tokenizer_fingerprint
from llmkit.data.shards import tokenize_corpus
from llmkit.data.sources import parse_source, read_source, resolve_source, split_pieces
from llmkit.data.tokenizer import Tokenizer
from llmkit.data.tokenizer_train import train_tokenizer
from llmkit.errors import LlmkitError

EOS = 0  # <|endoftext|> in llmkit's byte-level BPE


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return list(python_docs_texts())[:40]


@pytest.fixture(scope="module")
def trained(corpus) -> dict[str, Tokenizer]:
    return {kind: train_tokenizer(corpus, kind, 600) for kind in ("bpe", "wordpiece", "unigram")}


@pytest.fixture(scope="module")
def bpe(trained) -> Tokenizer:
    return trained["bpe"]


def tokenize(sources, tokenizer, out, **kwargs) -> dict:
    kwargs.setdefault("progress", False)
    return tokenize_corpus([(str(s), w) for s, w in sources], tokenizer, out, **kwargs)


def write_docs(folder: Path, docs: list[str], suffix: str = ".txt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, doc in enumerate(docs):
        with open(folder / f"{i:04d}{suffix}", "w", encoding="utf-8", newline="") as file:
            file.write(doc)
    return folder


def documents(ids: np.ndarray, separator: int = EOS) -> list[list[int]]:
    """Split a shard at separators (each document ends with one)."""
    ids = ids.astype(np.int64).tolist()
    assert not ids or ids[-1] == separator
    out, current = [], []
    for token in ids:
        if token == separator:
            out.append(current)
            current = []
        else:
            current.append(token)
    return out


# --- the tiktoken engine ------------------------------------------------------------------------------

TRICKY = [
    *fast_bpe.CHECK_TEXTS,
    " " * 1000 + "x" + "\t" * 300 + "\n" * 200 + " \n" * 100,
    "\r\n".join(["windows line"] * 50) + "\r\n",
    "👨‍👩‍👧‍👦" * 20 + "🏳️‍🌈 🧑🏿‍🚀 #️⃣ 🇯🇵🇺🇸" + "😀" * 50,
    "".join(chr(c) for c in range(0x20, 0x3000, 7)),  # a sweep over scripts, marks, symbols
    "aaaa" * 100 + " " + "ab" * 200 + " ''''s's's 'll'LL",  # repeated pairs: merge ties
]


def test_byte_alphabet_is_gpt2s(bpe):
    mapping = fast_bpe._unicode_to_byte()
    assert sorted(mapping) == sorted(pre_tokenizers.ByteLevel.alphabet())
    text = "héllo 中文 😀 \x00\x7f"
    symbols = "".join(
        piece for piece, _ in pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(text)
    )
    assert bytes(mapping[c] for c in symbols) == text.encode()


@pytest.mark.parametrize("vocab", [300, 2000])
def test_tiktoken_ids_equal_tokenizers(corpus, vocab):
    tok = train_tokenizer(corpus, "bpe", vocab)
    engine = fast_bpe.tiktoken_engine(tok)
    code = list(itertools.islice(stdlib_source_texts(), 8))
    for text in [*TRICKY, *code, *corpus[:5]]:
        assert engine.encode_one(text).tolist() == tok.encode(text, add_special_tokens=False), text[:80]


def test_tiktoken_runs_gpt2_style_files(bpe, corpus, tmp_path):
    """A vocab.json + merges.txt directory (the GPT-2 hub layout) is byte-level BPE too."""
    directory = tmp_path / "gpt2"
    directory.mkdir()
    bpe.backend.model.save(str(directory))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    tok = Tokenizer.from_hf_dir(directory)
    engine, note = fast_bpe.choose_engine(tok)
    assert engine.name == "tiktoken", note
    for text in [*TRICKY, *corpus[:3]]:
        assert engine.encode_one(text).tolist() == tok.encode(text, add_special_tokens=False)


def test_ranks_follow_merge_order_not_ids(bpe):
    """ids need not follow merge order: a renumbered vocabulary must still give the tokenizer's ids."""
    spec = json.loads(bpe.backend.to_str())
    vocab = spec["model"]["vocab"]
    order = sorted(vocab, key=vocab.get)
    fixed, movable = order[:2], order[2:]  # keep the two special tokens' ids
    random.Random(0).shuffle(movable)
    spec["model"]["vocab"] = {token: i for i, token in enumerate(fixed + movable)}
    tok = Tokenizer(tokenizers.Tokenizer.from_str(json.dumps(spec)), bpe.special_tokens)
    engine = fast_bpe.tiktoken_engine(tok)
    assert np.any(np.diff(engine.rank_to_id[256:].astype(np.int64)) < 0)  # merge order is not id order
    for text in TRICKY:
        assert engine.encode_one(text).tolist() == tok.encode(text, add_special_tokens=False)


def test_other_tokenizers_fall_back_with_a_reason(trained, bpe):
    for kind in ("wordpiece", "unigram"):
        engine, note = fast_bpe.choose_engine(trained[kind])
        assert engine.name == "tokenizers" and "not BPE" in note
    spec = json.loads(bpe.backend.to_str())
    spec["pre_tokenizer"]["add_prefix_space"] = True
    prefixed = Tokenizer(tokenizers.Tokenizer.from_str(json.dumps(spec)), bpe.special_tokens)
    engine, note = fast_bpe.choose_engine(prefixed)
    assert engine.name == "tokenizers" and "prefix space" in note


def test_a_failed_sample_check_falls_back(bpe, monkeypatch):
    real = fast_bpe.tiktoken_engine

    def broken(tokenizer):
        engine = real(tokenizer)
        engine.rank_to_id = engine.rank_to_id.copy()
        engine.rank_to_id[ord("x")] = 5  # one byte now maps to a wrong id
        return engine

    monkeypatch.setattr(fast_bpe, "tiktoken_engine", broken)
    engine, note = fast_bpe.choose_engine(bpe)
    assert engine.name == "tokenizers" and "differ" in note


def test_a_mismatch_in_the_corpus_switches_to_tokenizers(bpe, corpus, tmp_path, monkeypatch):
    """The first characters of every source are encoded both ways too; ids on disk are right either way."""
    real = fast_bpe.tiktoken_engine

    def broken(tokenizer):
        engine = real(tokenizer)
        engine.rank_to_id = engine.rank_to_id.copy()
        engine.rank_to_id[ord("Q")] = 5  # "Q" is not in the check texts below
        return engine

    monkeypatch.setattr(fast_bpe, "tiktoken_engine", broken)
    monkeypatch.setattr(fast_bpe, "CHECK_TEXTS", ("abc",))
    docs = ["plain words", "Quite a Question"]
    summary = tokenize([(write_docs(tmp_path / "c", docs), None)], bpe, tmp_path / "out", val_fraction=0.0)
    assert summary["engine"] == "tokenizers" and "differ" in summary["engine_note"]
    expected = sum((bpe.encode(d, add_special_tokens=False) + [EOS] for d in docs), [])
    assert TokenDataset(tmp_path / "out").tokens("train").tolist() == expected


def test_pieces_encode_like_the_whole_document(trained):
    text = "".join(itertools.islice(stdlib_source_texts(), 3)) + " word" * 3000 + " 中文 😀 x" * 200
    pieces = list(split_pieces([text[i : i + 777] for i in range(0, len(text), 777)], size=500))
    assert "".join(pieces) == text and len(pieces) > 20
    assert pieces == list(split_pieces([text], size=500))  # the same cuts however the text arrives
    for kind, tok in trained.items():
        whole = tok.encode(text, add_special_tokens=False)
        assert sum((tok.encode(p, add_special_tokens=False) for p in pieces), []) == whole, kind


# --- sources -----------------------------------------------------------------------------------------


def test_parse_source():
    assert parse_source("a.txt:0.51") == ("a.txt", 0.51)
    assert parse_source("builtin:python-docs") == ("builtin:python-docs", None)
    assert parse_source("builtin:python-docs:2") == ("builtin:python-docs", 2.0)
    assert parse_source("notes:draft") == ("notes:draft", None)
    with pytest.raises(LlmkitError, match="positive"):
        parse_source("a.txt:-1")


def test_folder_source_reads_txt_and_md_recursively(tmp_path):
    write_docs(tmp_path / "c" / "deep", ["deep text"], ".md")
    write_docs(tmp_path / "c", ["one", "two"])
    (tmp_path / "c" / "skip.json").write_text("{}")
    found = [(key, "".join(blocks)) for key, blocks in read_source(resolve_source(str(tmp_path / "c")))]
    assert found == [("0000.txt", "one"), ("0001.txt", "two"), ("deep/0000.md", "deep text")]


def test_line_documents_and_gzip(tmp_path):
    path = tmp_path / "lines.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as file:
        file.write("first doc\n\nsecond doc\r\nthird\n")
    source = resolve_source(str(path))
    assert source.size_bytes() == len("first doc\n\nsecond doc\r\nthird\n")
    assert [(k, "".join(b)) for k, b in read_source(source)] == [("lines.txt.gz", "first doc\n\nsecond doc\r\nthird\n")]
    lines = [(k, "".join(b)) for k, b in read_source(source, line_documents=True)]
    assert lines == [("lines.txt.gz:1", "first doc"), ("lines.txt.gz:3", "second doc"), ("lines.txt.gz:4", "third")]


def test_jsonl_text_field_and_errors(bpe, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"content": "alpha beta", "id": 1}\n\n{"content": "gamma"}\n')
    summary = tokenize([(path, None)], bpe, tmp_path / "out", text_field="content", val_fraction=0.0)
    train = TokenDataset(tmp_path / "out").tokens("train")
    assert [bpe.decode(d) for d in documents(train)] == ["alpha beta", "gamma"]
    assert summary["sources"][0]["documents"] == 2
    with pytest.raises(LlmkitError, match=r"d.jsonl:1 has no 'text' field \(fields: content, id\)"):
        tokenize([(path, None)], bpe, tmp_path / "out2")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(LlmkitError, match=r"bad.jsonl:2: not valid JSON \(Expecting value at column 1\)"):
        tokenize([(tmp_path / "bad.jsonl", None)], bpe, tmp_path / "out3")


def test_source_errors(bpe, tmp_path):
    with pytest.raises(LlmkitError, match="no such file"):
        tokenize([(tmp_path / "missing.txt", None)], bpe, tmp_path / "o")
    with pytest.raises(LlmkitError, match="unknown built-in corpus"):
        tokenize([("builtin:nope", None)], bpe, tmp_path / "o")
    (tmp_path / "a.txt").write_text("a")
    with pytest.raises(LlmkitError, match="every source a weight, or none"):
        tokenize([(tmp_path / "a.txt", 1.0), ("builtin:python-docs", None)], bpe, tmp_path / "o")
    with pytest.raises(LlmkitError, match="listed twice"):
        tokenize([(tmp_path / "a.txt", None), (tmp_path / "a.txt", None)], bpe, tmp_path / "o")
    assert not (tmp_path / "o").exists()


# --- shards --------------------------------------------------------------------------------------------


def test_round_trip(bpe, corpus, tmp_path):
    docs = [*corpus[:6], "", "x", "short\r\nwith CRLF 😀", corpus[6] * 8]  # the last one spans many pieces
    summary = tokenize([(write_docs(tmp_path / "c", docs), None)], bpe, tmp_path / "out", val_fraction=0.0)
    data = TokenDataset(tmp_path / "out")
    train = data.tokens("train")
    assert [bpe.decode(d) for d in documents(train)] == [d for d in docs if d]  # empty documents are skipped
    expected = sum((bpe.encode(d, add_special_tokens=False) + [EOS] for d in docs if d), [])
    assert train.tolist() == expected
    assert data.n_tokens("val") == 0 and summary["tokens"] == {"train": len(expected), "val": 0}
    assert summary["engine"] == "tiktoken" and data.meta["separator_id"] == EOS
    assert data.meta["special_token_ids"] == {"bos": 0, "eos": 0, "pad": 1}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "meta.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "train.bin",
        "val.bin",
    ]


def test_val_split_keeps_every_token_and_is_deterministic(bpe, corpus, tmp_path):
    folder = write_docs(tmp_path / "c", corpus[:30])
    tokenize([(folder, None)], bpe, tmp_path / "a", val_fraction=0.3, seed=1)
    moved = folder.rename(tmp_path / "elsewhere")  # the split hashes documents' names, not where they lie
    tokenize([(moved, None)], bpe, tmp_path / "b", val_fraction=0.3, seed=1)
    tokenize([(moved, None)], bpe, tmp_path / "c2", val_fraction=0.3, seed=2)
    for name in ("train.bin", "val.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "val.bin").read_bytes() != (tmp_path / "c2" / "val.bin").read_bytes()
    data = TokenDataset(tmp_path / "a")
    train, val = data.tokens("train"), data.tokens("val")
    assert 0.1 < len(val) / (len(train) + len(val)) < 0.5
    # every token of the corpus is in one split or the other (separators aside)
    expected = sum(len(bpe.encode(d, add_special_tokens=False)) for d in corpus[:30])
    assert int((train != EOS).sum() + (val != EOS).sum()) == expected
    # with pieces, val documents are contiguous stretches of the corpus
    text = "".join(corpus[:30])
    assert all(bpe.decode(d) in text for d in documents(val))


def test_uint16_and_uint32(bpe, tmp_path):
    (tmp_path / "a.txt").write_text("some text")
    tokenize([(tmp_path / "a.txt", None)], bpe, tmp_path / "small", val_fraction=0.0)
    assert TokenDataset(tmp_path / "small").meta["dtype"] == "uint16"
    assert (tmp_path / "small" / "train.bin").stat().st_size == 2 * TokenDataset(tmp_path / "small").n_tokens("train")
    # 70,000 words: ids above 65,535 need uint32
    vocab = {"<eos>": 0, "<unk>": 1, **{f"w{i}": i + 2 for i in range(70_000)}}
    backend = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    big = Tokenizer(backend, {"eos": "<eos>", "unk": "<unk>"})
    (tmp_path / "b.txt").write_text("w69999 w1 w65534 w65535")
    summary = tokenize([(tmp_path / "b.txt", None)], big, tmp_path / "big", val_fraction=0.0)
    data = TokenDataset(tmp_path / "big")
    assert summary["dtype"] == "uint32" and summary["engine"] == "tokenizers"
    assert data.tokens("train").tolist() == [70001, 3, 65536, 65537, 0]


def test_builtin_source_and_max_tokens(bpe, tmp_path):
    summary = tokenize([("builtin:python-docs", None)], bpe, tmp_path / "out", max_tokens=5000)
    assert summary["tokens"]["train"] == 5000
    assert summary["sources"][0]["source"] == "builtin:python-docs"
    assert summary["bytes"] < 500_000  # it stopped reading early


def test_weights_mix_by_tokens(bpe, tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "_MIX_BLOCK", 256)  # small blocks, so that this small data interleaves
    big = write_docs(tmp_path / "big", ["apple pie is sweet. " * 50] * 40)
    small = write_docs(tmp_path / "small", ["berry tart, " * 30] * 5)
    summary = tokenize([(big, 3.0), (small, 1.0)], bpe, tmp_path / "out", val_fraction=0.0)
    train = TokenDataset(tmp_path / "out").tokens("train")
    a, b = summary["sources"]
    assert a["weight"] == 0.75 and b["weight"] == 0.25
    total = a["train"]["tokens_read"] + b["train"]["tokens_read"]  # T: the sources' own total
    assert summary["tokens"]["train"] == len(train) == total
    assert abs(a["train"]["tokens"] - 0.75 * total) <= 1 and a["train"]["tokens"] + b["train"]["tokens"] == total
    assert b["train"]["epochs"] > 2 > 1 > a["train"]["epochs"]  # the small source repeats, the big one is cut
    # count by content, a quarter of the way through and at the end: the mixture holds along the file
    for part in (train[: len(train) // 4], train):
        docs = [bpe.decode(d) for d in documents(part[: np.flatnonzero(part == EOS)[-1] + 1])]
        n_a = sum(len(bpe.encode(d)) + 1 for d in docs if "apple" in d)
        n_b = sum(len(bpe.encode(d)) + 1 for d in docs if "berry" in d)
        assert abs(n_b / (n_a + n_b) - 0.25) < 0.05


def test_max_tokens_with_weights_and_a_giant_document(bpe, tmp_path):
    (tmp_path / "one.txt").write_text("apple pie is sweet. " * 120_000)  # one document of 2.4 MB
    small = write_docs(tmp_path / "small", ["berry tart, " * 30] * 5)
    summary = tokenize([(tmp_path / "one.txt", 0.5), (small, 0.5)], bpe, tmp_path / "out", max_tokens=20_000)
    train = TokenDataset(tmp_path / "out").tokens("train")
    assert len(train) == summary["tokens"]["train"] == 20_000
    assert [s["train"]["tokens"] for s in summary["sources"]] == [10_000, 10_000]
    assert summary["sources"][0]["bytes"] < 1_500_000  # the big file was not read to the end
    assert train[-1] == EOS


def test_atomic_output(bpe, tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"text": f"doc {i} " * 3000}) + "\n" for i in range(50)))
    tokenize([(good, None)], bpe, tmp_path / "out")
    before = (tmp_path / "out" / "train.bin").read_bytes()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + '{"body": "no text field"}\n')
    with pytest.raises(LlmkitError, match="bad.jsonl:51"):
        tokenize([(bad, None)], bpe, tmp_path / "new")
    with pytest.raises(LlmkitError, match="bad.jsonl:51"):
        tokenize([(bad, None)], bpe, tmp_path / "out")
    assert not (tmp_path / "new").exists()
    assert (tmp_path / "out" / "train.bin").read_bytes() == before  # the old data survives a failed run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "good.jsonl", "out"]  # no temp dirs left
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep")
    with pytest.raises(LlmkitError, match="not a token data directory"):
        tokenize([(good, None)], bpe, tmp_path / "notes")


# --- TokenDataset ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(bpe, corpus, tmp_path_factory) -> TokenDataset:
    root = tmp_path_factory.mktemp("data")
    tokenize([(write_docs(root / "c", corpus[:20]), None)], bpe, root / "out", val_fraction=0.1)
    data = TokenDataset(root / "out")
    assert data.n_tokens("val") > 100
    return data


def test_batch_rows_are_windows_and_deterministic(dataset):
    x = dataset.batch("train", 3, 4, 16, seed=7)
    assert x.shape == (4, 16) and x.dtype == torch.long
    train = dataset.tokens("train")
    for row in x.tolist():
        starts = [i for i in range(len(train) - 15) if train[i] == row[0] and train[i : i + 16].tolist() == row]
        assert starts
    assert torch.equal(x, dataset.batch("train", 3, 4, 16, seed=7))
    assert not torch.equal(x, dataset.batch("train", 4, 4, 16, seed=7))
    assert not torch.equal(x, dataset.batch("train", 3, 4, 16, seed=8))
    assert not torch.equal(x, dataset.batch("val", 3, 4, 16, seed=7))


def test_batch_rank_slices_equal_one_big_batch(dataset):
    whole = dataset.batch("train", 11, 6, 32, seed=0)
    parts = [dataset.batch("train", 11, 3, 32, seed=0, rank=r, world_size=2) for r in range(2)]
    assert torch.equal(torch.cat(parts), whole)
    with pytest.raises(LlmkitError, match="rank"):
        dataset.batch("train", 0, 2, 8, seed=0, rank=2, world_size=2)


def test_short_split_says_what_to_do(dataset):
    with pytest.raises(LlmkitError, match="block_size"):
        dataset.batch("val", 0, 1, dataset.n_tokens("val") + 1, seed=0)
    assert dataset.batch("val", 0, 2, dataset.n_tokens("val"), seed=0).shape == (2, dataset.n_tokens("val"))


def test_meta_problems_name_the_file(dataset, tmp_path):
    with pytest.raises(LlmkitError, match="no meta.json"):
        TokenDataset(tmp_path)
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(LlmkitError, match="meta.json"):
        TokenDataset(tmp_path)
    for name in ("meta.json", "train.bin", "val.bin"):
        (tmp_path / name).write_bytes((dataset.directory / name).read_bytes())
    (tmp_path / "train.bin").write_bytes((dataset.directory / "train.bin").read_bytes()[:-2])
    with pytest.raises(LlmkitError, match="train.bin"):
        TokenDataset(tmp_path)


def test_tokenizer_check(dataset, bpe, trained):
    assert tokenizer_fingerprint(dataset.tokenizer()) == tokenizer_fingerprint(bpe)
    dataset.check_tokenizer(bpe)
    dataset.check_tokenizer(dataset.tokenizer())
    with pytest.raises(LlmkitError, match="differs"):
        dataset.check_tokenizer(trained["unigram"])


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram"])
def test_fingerprint_survives_save_and_load(trained, kind, tmp_path):
    """Unigram scores come back from tokenizer.json a digit off; the fingerprint must not see it."""
    trained[kind].save(tmp_path / kind)
    assert tokenizer_fingerprint(Tokenizer.from_dir(tmp_path / kind)) == tokenizer_fingerprint(trained[kind])


# --- CLI ----------------------------------------------------------------------------------------------


def test_cli(bpe, corpus, tmp_path, capsys, monkeypatch):
    from llmkit.cli import main

    monkeypatch.chdir(tmp_path)
    bpe.save("tok")
    Path("domain.txt").write_text(" ".join(corpus[:20]))
    argv = ["data", "tokenize", "domain.txt:0.51", "builtin:python-docs:0.49"]
    argv += ["--tokenizer", "tok", "--out", "data", "--max-tokens", "20000"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "train 20,000 tokens" in out and "domain.txt 51.0%" in out and "python-docs 49.0%" in out
    assert "MB/s" in out and "tiktoken" in out
    missing = ["data", "tokenize", "nope.txt", "--tokenizer", "tok", "--out", "x"]
    assert main(missing) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file or directory: nope.txt" in err
    with pytest.raises(SystemExit):
        main(["data", "tokenize", "--help"])
    help_text = capsys.readouterr().out
    assert "domain.txt:0.51 builtin:python-docs:0.49" in help_text and "Mixing" in help_text


# --- damaged and hostile inputs (issue 16) ------------------------------------------------------------


def test_a_corrupt_or_truncated_gz_is_one_line(bpe, tmp_path):
    data = gzip.compress(("some text here\n" * 5000).encode())
    (tmp_path / "cut.txt.gz").write_bytes(data[: len(data) // 2])
    (tmp_path / "fake.txt.gz").write_bytes(b"this was never gzip")
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(b'{"text": "a b"}\n' * 5000)[:100])
    for name in ("cut.txt.gz", "fake.txt.gz", "cut.jsonl.gz"):
        with pytest.raises(LlmkitError, match=rf"{name}: corrupt or truncated gzip file"):
            tokenize([(tmp_path / name, None)], bpe, tmp_path / f"out-{name}")
        with pytest.raises(LlmkitError, match=rf"{name}: corrupt or truncated gzip file"):
            [list(blocks) for _, blocks in read_source(resolve_source(str(tmp_path / name)), line_documents=True)]
        assert not (tmp_path / f"out-{name}").exists()


def test_a_binary_file_is_refused(bpe, tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("fine text")
    (tmp_path / "docs" / "b.txt").write_bytes(bytes(range(256)) * 40)  # e.g. an image renamed .txt
    with pytest.raises(LlmkitError, match=r"b\.txt: looks like a binary file"):
        tokenize([(tmp_path / "docs", None)], bpe, tmp_path / "out")


def test_a_long_run_without_spaces_is_cut_into_bounded_pieces():
    run = "x" * 3_000_000 + " tail"
    blocks = [run[i : i + 100_000] for i in range(0, len(run), 100_000)]
    pieces = list(split_pieces(blocks, size=1000))
    assert "".join(pieces) == run
    assert max(map(len, pieces)) <= 4000 and len(pieces) >= 750
    text = "word " * 2000  # ordinary text still cuts at spaces only
    assert all(p.startswith(" ") for p in list(split_pieces([text], size=1000))[1:])
