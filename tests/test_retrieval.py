"""Chunking, the sqlite-vec index (dense, BM25, hybrid; add, delete), `llmkit index` and `llmkit ask`.

A random-weight encoder keeps these fast: dense search is checked by what cosine similarity must give
(a chunk's own text is its nearest neighbour), not by what a trained model would find.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from llmkit import checkpoint
from llmkit.cli import main
from llmkit.config import ModelConfig
from llmkit.errors import LlmkitError
from llmkit.models import build_model
from llmkit.prompts import PromptTooLong
from llmkit.retrieval.ask import build_rag_prompt, cited, user_message
from llmkit.retrieval.chunk import ChunkConfig, chunk_text, split_lines
from llmkit.retrieval.documents import build_index, search
from llmkit.retrieval.embed import Embedder
from llmkit.retrieval.store import Hit, Index, fuse

DOCS = {
    "cats.txt": "Cats sleep for most of the day. A cat purrs when it is content. Kittens play with yarn.\n"
    "Lions are large cats that live in prides on the savanna.\n",
    "ships.txt": "The ship sailed from the harbour at dawn. Sailors raised the mainsail and checked the compass.\n"
    "A lighthouse warned them of the rocks near the coast.\n",
    "bread.md": "Bread rises because yeast ferments the sugars in the dough. Bakers knead the dough, let it proof, "
    "and bake it in a hot oven until the crust is brown. Sourdough uses a starter instead of dried yeast.\n",
}


def _encoder(directory: Path, seed: int, tokenizer) -> Path:
    torch.manual_seed(seed)
    cfg = ModelConfig.from_name("tiny-bert-1m", vocab_size=tokenizer.vocab_size, d_model=32, n_layer=2, n_head=4,
                                encoder_head="none", max_seq_len=64)  # fmt: skip
    return checkpoint.save(build_model(cfg), directory, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def wordpiece(tiny_corpus):
    from llmkit.data.tokenizer_train import train_tokenizer

    return train_tokenizer(tiny_corpus + list(DOCS.values()) * 5, "wordpiece", vocab_size=400)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory, wordpiece) -> Path:
    return _encoder(tmp_path_factory.mktemp("enc") / "enc", 0, wordpiece)


@pytest.fixture(scope="module")
def embedder(encoder_dir) -> Embedder:
    return Embedder.load(encoder_dir)


@pytest.fixture
def docs(tmp_path) -> list[str]:
    paths = []
    for name, text in DOCS.items():
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    return paths


SMALL = ChunkConfig(tokens=12, overlap=4)


# ---- chunking ---------------------------------------------------------------------------------
def test_chunks_are_slices_with_overlap(embedder):
    text = "Héllo wörld — ünïcode first. " + DOCS["bread.md"]
    chunks = chunk_text(text, "doc", embedder.tokenizer, SMALL, offset=7)
    assert len(chunks) > 3
    spans = [s for s in embedder.tokenizer.backend.encode(text, add_special_tokens=False).offsets if s[1] > s[0]]
    for i, c in enumerate(chunks):
        assert c.text == text[c.start - 7 : c.end - 7]  # offsets shifted by where the text starts
        first = i * (SMALL.tokens - SMALL.overlap)
        window = spans[first : first + SMALL.tokens]
        assert (c.start - 7, c.end - 7) == (window[0][0], window[-1][1])
    assert chunks[0].start == 7 and chunks[-1].end - 7 == spans[-1][1]  # from the first token to the last
    assert chunks[1].start < chunks[0].end  # neighbours overlap
    assert chunk_text("   \n ", "doc", embedder.tokenizer, SMALL) == []
    with pytest.raises(LlmkitError, match="overlap"):
        ChunkConfig(tokens=8, overlap=8)


def test_split_lines_keeps_file_offsets():
    text = "first line\n\nsecond\r\nthird"
    assert [(o, line, text[o : o + len(line)]) for o, line in split_lines(text)] == [
        (0, "first line", "first line"), (12, "second", "second"), (20, "third", "third")]  # fmt: skip


# ---- the index --------------------------------------------------------------------------------
def test_dense_bm25_and_hybrid_search(tmp_path, embedder, docs):
    out = tmp_path / "docs.index"
    report = build_index(out, embedder, docs, SMALL)
    with Index.open(out) as index:
        assert report.chunks == len(index) and set(index.sources()) == set(docs)
        rows = index.db.execute("select source, start, end, text from chunks").fetchall()
        for source, start, end, text in rows:  # every chunk is the very slice of its file
            assert Path(source).read_text()[start:end] == text
        # dense: a chunk's own text is its nearest neighbour, cosine 1
        source, start, end, text = rows[5]
        top = search(index, embedder, text, k=3)
        assert (top[0].source, top[0].start, top[0].end) == (source, start, end)
        assert top[0].score == pytest.approx(1.0, abs=1e-5) and top[0].score >= top[1].score >= top[2].score
        # BM25: the only chunks with a rare word come first
        lexical = search(index, None, "lighthouse rocks", k=3, mode="bm25")
        assert lexical and all("lighthouse" in h.text or "rocks" in h.text for h in lexical)
        assert lexical[0].source.endswith("ships.txt")
        assert search(index, None, "the of and", k=3, mode="bm25") == []  # stopwords only
        # hybrid: exactly the reciprocal-rank fusion of the two lists
        hybrid = search(index, embedder, "lighthouse rocks", k=4, mode="hybrid")
        vector = embedder.embed(["lighthouse rocks"])[0]
        expected = fuse([index.dense(vector, 50), index.bm25("lighthouse rocks", 50)])[:4]
        assert [(h.id, h.score) for h in hybrid] == expected


def test_fuse_is_reciprocal_rank_fusion():
    fused = fuse([[(1, 0.9), (2, 0.8)], [(2, 7.0), (3, 5.0)]], k=60)
    assert fused == [(2, 1 / 62 + 1 / 61), (1, 1 / 61), (3, 1 / 62)]


def test_add_replaces_and_delete_removes(tmp_path, embedder, docs):
    from llmkit.retrieval.documents import add_documents

    out = tmp_path / "docs.index"
    build_index(out, embedder, docs[:2], SMALL)
    with Index.open(out) as index:
        before = index.sources()
        add_documents(index, embedder, [docs[2]])
        assert index.sources()[docs[2]] > 0 and len(index) == sum(before.values()) + index.sources()[docs[2]]
        Path(docs[0]).write_text("Cats nap.\n")
        add_documents(index, embedder, [docs[0]])  # re-adding an edited file replaces its chunks
        assert index.sources()[docs[0]] == 1 < before[docs[0]]
        # a replacement that fails half way (vectors of the wrong size) leaves the old chunks: one transaction
        chunk = chunk_text("Dogs bark.", docs[0], embedder.tokenizer, SMALL)
        with pytest.raises(LlmkitError, match="dimension"):
            index.replace(docs[0], chunk, np.zeros((1, 7), dtype=np.float32))
        assert index.sources()[docs[0]] == 1 and "Cats nap." in search(index, None, "cats nap", 1, "bm25")[0].text
        assert index.db.execute("select count(*) from vectors").fetchone()[0] == len(index)
        assert index.delete([docs[1]]) == before[docs[1]] and docs[1] not in index.sources()
        vectors = index.db.execute("select count(*) from vectors").fetchone()[0]
        assert vectors == len(index)  # no orphan vectors
        assert all(h.source != docs[1] for h in search(index, embedder, DOCS["ships.txt"], k=10))
    with Index.open(out) as index:  # committed: a fresh connection sees the same
        assert docs[1] not in index.sources() and index.sources()[docs[0]] == 1


def test_a_failed_build_leaves_no_file(tmp_path, embedder, docs):
    out = tmp_path / "docs.index"
    with pytest.raises(LlmkitError, match="no such document"):
        build_index(out, embedder, [*docs, str(tmp_path / "missing.txt")], SMALL)
    assert not out.exists() and not list(tmp_path.glob(".docs.index*"))
    with pytest.raises(LlmkitError, match="do not fit"):
        build_index(out, embedder, docs, ChunkConfig(tokens=100, overlap=0))  # the encoder's window is 64


# ---- CLI and one-line errors ------------------------------------------------------------------
def test_cli_index_build_search_add_delete(tmp_path, encoder_dir, docs, capsys):
    out = tmp_path / "cli.index"
    assert main(["index", "build", *docs[:2], "--embedder", str(encoder_dir), "--out", str(out),
                 "--chunk-tokens", "12", "--overlap", "4"]) == 0  # fmt: skip
    assert "chunks" in capsys.readouterr().out
    assert main(["index", "search", str(out), "lighthouse rocks", "-k", "2", "--bm25", "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(hits) == 2 and hits[0]["source"] == docs[1] and hits[0]["rank"] == 1
    assert Path(hits[0]["source"]).read_text()[hits[0]["start"] : hits[0]["end"]] == hits[0]["text"]
    # search finds the embedder the index was built with
    assert main(["index", "search", str(out), "purrs", "-k", "3", "--hybrid"]) == 0
    assert capsys.readouterr().out.startswith("1. ")
    assert main(["index", "add", str(out), docs[2]]) == 0
    assert main(["index", "delete", str(out), docs[0]]) == 0
    assert main(["index", "info", str(out)]) == 0
    info = capsys.readouterr().out
    assert docs[2] in info and docs[0] not in info.split("chunks:")[1]


def test_another_embedder_is_a_one_line_error(tmp_path, encoder_dir, wordpiece, docs, capsys):
    out = tmp_path / "e.index"
    assert main(["index", "build", *docs, "--embedder", str(encoder_dir), "--out", str(out),
                 "--chunk-tokens", "12", "--overlap", "4"]) == 0  # fmt: skip
    other = _encoder(tmp_path / "other", 1, wordpiece)
    capsys.readouterr()
    for command in (["index", "search", str(out), "cats", "--embedder", str(other)],
                    ["index", "add", str(out), docs[0], "--embedder", str(other)]):  # fmt: skip
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "was built with embedder" in err and "--embedder" in err, err
    assert main(["index", "search", str(out), "cats", "--bm25", "--embedder", str(other)]) == 0  # BM25 needs none


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign"])
def test_a_corrupt_index_is_a_one_line_error(tmp_path, encoder_dir, docs, capsys, damage):
    out = tmp_path / "c.index"
    assert main(["index", "build", *docs, "--embedder", str(encoder_dir), "--out", str(out),
                 "--chunk-tokens", "12", "--overlap", "4"]) == 0  # fmt: skip
    if damage == "garbage":
        out.write_bytes(b"not a database at all" * 100)
    elif damage == "truncated":
        out.write_bytes(out.read_bytes()[:3000])
    else:
        out.unlink()
        sqlite3.connect(out).execute("create table t (x)").connection.commit()
    capsys.readouterr()
    assert main(["index", "search", str(out), "cats"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out) in err and ("corrupt" in err or "not an llmkit index" in err), err


def test_missing_index_and_bad_k(tmp_path, capsys):
    assert main(["index", "search", str(tmp_path / "none.index"), "q"]) == 2
    assert "no such index" in capsys.readouterr().err


# ---- ask --------------------------------------------------------------------------------------
def _hit(n: int, text: str) -> Hit:
    return Hit(n, f"doc{n}.txt", 10 * n, 10 * n + len(text), text, 1.0 / n)


def test_rag_prompt_drops_the_lowest_ranked_sources_to_fit():
    hits = [_hit(1, "alpha " * 10), _hit(2, "beta " * 10), _hit(3, "gamma " * 10)]
    count = lambda text: len(text.split())  # noqa: E731
    render = lambda message: f"<user>{message}</user>"  # noqa: E731
    full = count(render(user_message("why?", hits)))
    fitted = build_rag_prompt("why?", hits, render, count, window=full + 5, reserve=5)
    assert fitted.sources == hits and fitted.dropped == 0
    two = build_rag_prompt("why?", hits, render, count, window=full + 4, reserve=5)
    assert [h.id for h in two.sources] == [1, 2] and two.dropped == 1 and two.tokens <= full - 1
    assert "[1] (doc1.txt:10-70)" in two.text and "[3]" not in two.text and two.text.startswith("<user>")
    with pytest.raises(PromptTooLong):
        build_rag_prompt("why?", hits, render, count, window=10, reserve=5)
    bare = count(render(user_message("why?", [])))
    with pytest.raises(LlmkitError, match="not even the best source fits"):
        build_rag_prompt("why?", hits, render, count, window=bare + 5 + 3, reserve=5)


def test_cited_finds_bracketed_numbers():
    hits = [_hit(1, "a"), _hit(2, "b"), _hit(3, "c")]
    assert cited("As [3] and [1] say; [7] is not a source.", hits) == [(1, hits[0]), (3, hits[2])]
    assert cited("no citations", hits) == []


def test_cli_ask_prints_answer_and_sources(tmp_path, encoder_dir, docs, tiny_checkpoint, capsys):
    out = tmp_path / "ask.index"
    assert main(["index", "build", *docs, "--embedder", str(encoder_dir), "--out", str(out),
                 "--chunk-tokens", "12", "--overlap", "4"]) == 0  # fmt: skip
    capsys.readouterr()
    model = tiny_checkpoint(window=1024)
    assert main(["ask", str(out), str(model), "Why does bread rise?", "-k", "3", "--max-new-tokens", "8",
                 "--show-prompt"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert "Question: Why does bread rise?" in captured.err and "[1] (" in captured.err
    lines = captured.out.splitlines()
    marker = next(i for i, line in enumerate(lines) if line.startswith(("cited:", "sources (")))
    cites = lines[marker + 1 :]
    assert cites and all(line.startswith("[") and (".txt:" in line or ".md:" in line) for line in cites)
    # a window too small for the question alone: one line
    assert main(["ask", str(out), str(tiny_checkpoint(window=64)), "why " * 80, "--max-new-tokens", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not fit" in err, err


def test_ask_drops_sources_and_says_so(tmp_path, encoder_dir, docs, tiny_checkpoint, capsys):
    out = tmp_path / "ask.index"
    assert main(["index", "build", *docs, "--embedder", str(encoder_dir), "--out", str(out),
                 "--chunk-tokens", "40", "--overlap", "4"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["ask", str(out), str(tiny_checkpoint(window=640)), "Why?", "-k", "4", "--max-new-tokens", "4"]) == 0
    assert "sources left out to fit the context window" in capsys.readouterr().err


def test_embeddings_are_finite_and_unit(embedder):
    vectors = embedder.embed(list(DOCS.values()))
    assert np.isfinite(vectors).all() and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
