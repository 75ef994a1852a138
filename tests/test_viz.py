"""Pictures of a model's insides: token spans, embedding similarity, attention maps, temperature plots.

Each picture's numbers are checked against the model or tokenizer directly (spans reassemble the
input, cosines equal the hand-computed ones, exported weights equal the maps the model returns,
bars sum to 1), and the CLI's mistakes are one line with exit code 2. Models are tiny with random
weights; tokenizers are trained on a few built-in documents.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from tokenizers import pre_tokenizers

from llmkit import checkpoint
from llmkit.cli import main
from llmkit.config import ModelConfig
from llmkit.data.builtin import python_docs_texts
from llmkit.data.tokenizer_train import train_tokenizer
from llmkit.models import build_model
from llmkit.viz.attention import AttentionMaps, attention_maps, draw_attention
from llmkit.viz.distribution import Filters, draw_distribution, temperature_panels
from llmkit.viz.embeddings import contextual_vectors, cosine_matrix, input_vectors, pca_2d
from llmkit.viz.tokens import token_spans, token_stats

TEXTS = [
    "Héllo wörld, café 😀 naïve 中文 tokenization!",
    "  leading spaces\n\tand a tab, then <|endoftext|> in the text  ",
    "def read_file(path):\n    return open(path).read()",
    "🧑🏿‍🚀 é",
]


@pytest.fixture(scope="module")
def tokenizers():
    corpus = list(python_docs_texts())[:20]
    return {kind: train_tokenizer(corpus, kind, 600) for kind in ("bpe", "wordpiece", "unigram")}


def _save(tmp_path_factory, name: str, preset: str, tokenizer, **overrides):
    torch.manual_seed(0)
    cfg = ModelConfig.from_name(preset, vocab_size=tokenizer.vocab_size, **overrides)
    path = tmp_path_factory.mktemp(name) / "model"
    checkpoint.save(build_model(cfg), path, tokenizer=tokenizer)
    return path


@pytest.fixture(scope="module")
def gpt(tokenizers, tmp_path_factory):
    tok = tokenizers["bpe"]
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return _save(tmp_path_factory, "gpt", "tiny-gpt-1m", tok, n_layer=2, d_model=48, n_head=6, **ids)


@pytest.fixture(scope="module")
def t5(tokenizers, tmp_path_factory):
    return _save(tmp_path_factory, "t5", "tiny-t5-1m", tokenizers["unigram"], n_layer=2, n_decoder_layer=2)


@pytest.fixture(scope="module")
def bert(tokenizers, tmp_path_factory):
    tok = tokenizers["wordpiece"]
    return _save(tmp_path_factory, "bert", "tiny-bert-1m", tok, n_layer=2, pad_token_id=tok.pad_token_id)


def one_line_error(capsys, argv: list[str], expected: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err


# ---- tokens --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
def test_byte_level_spans_are_each_tokens_bytes_end_to_end(tokenizers, text):
    tok = tokenizers["bpe"]
    spans = token_spans(tok, text)
    data = text.encode("utf-8")
    assert [s.id for s in spans] == tok.encode(text)
    assert spans[0].start == 0 and spans[-1].end == len(data)
    assert all(a.end == b.start for a, b in itertools.pairwise(spans))  # end to end: nothing lost, nothing twice
    assert b"".join(data[s.start : s.end] for s in spans) == data
    for s in spans:
        if s.piece != "<|endoftext|>":
            assert data[s.start : s.end] == tok.token_bytes(s.id)


def test_multibyte_characters_split_over_tokens_get_their_own_bytes(tokenizers):
    tok = tokenizers["bpe"]
    spans = token_spans(tok, "é😀")  # 2 + 4 bytes; a 600-token vocabulary has neither as one token
    assert len(spans) > 2
    assert all(s.text.startswith("<0x") for s in spans)
    assert [s.end - s.start for s in spans] == [len(tok.token_bytes(s.id)) for s in spans]
    assert sum(s.end - s.start for s in spans) == 6


def test_byte_level_spans_with_a_prefix_space(tokenizers):
    tok = tokenizers["bpe"]
    saved = tok.backend.pre_tokenizer
    tok.backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)  # GPT-2 with add_prefix_space
    try:
        text = "hello world"
        spans = token_spans(tok, text)
        assert tok.id_to_token(spans[0].id).startswith("Ġ")  # the space the tokenizer added...
        assert b"".join(text.encode()[s.start : s.end] for s in spans) == text.encode()  # ...covers nothing
        assert spans[0].start == 0
    finally:
        tok.backend.pre_tokenizer = saved


@pytest.mark.parametrize("kind", ["wordpiece", "unigram"])
@pytest.mark.parametrize("text", TEXTS)
def test_offset_spans_are_ordered_disjoint_with_only_whitespace_between(tokenizers, kind, text):
    tok = tokenizers[kind]
    spans = token_spans(tok, text)
    data = text.encode("utf-8")
    assert [s.id for s in spans] == tok.encode(text)
    position = 0
    for s in spans:
        assert position <= s.start <= s.end <= len(data)
        assert data[position : s.start].decode().strip() == ""  # only whitespace between tokens
        position = s.end
    assert data[position:].decode().strip() == ""
    special = [s for s in spans if s.special]
    assert special and all(s.start == s.end for s in special)  # [CLS]/[SEP] or </s>: empty spans
    # what each token covers is what it stands for (WordPiece lowercases; ASCII keeps it simple)
    for s in spans:
        if kind == "wordpiece" and not s.special and s.piece != "[UNK]" and s.text.isascii():
            assert s.text.lower() == s.piece.removeprefix("##")


def test_token_stats_count_words_and_split_words(tokenizers):
    text = "the tokenization of words"
    spans = token_spans(tokenizers["wordpiece"], text)
    stats = token_stats(text, spans)
    assert (stats.tokens, stats.special, stats.words) == (len(spans), 2, 4)
    assert (stats.characters, stats.bytes) == (len(text), len(text))
    assert stats.tokens_per_word == (len(spans) - 2) / 4
    split = dict(stats.split_words)
    assert "tokenization" in split and "".join(p.removeprefix("##") for p in split["tokenization"]) == "tokenization"
    assert all(len(pieces) > 1 for pieces in split.values())


def test_cli_tokenize_and_tokenizer_encode_share_the_encoding(gpt, tokenizers, capsys):
    assert main(["tokenize", str(gpt), "café 😀", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [t["id"] for t in report["tokens"]] == tokenizers["bpe"].encode("café 😀")
    assert report["counts"]["context_window"] == 256 and report["counts"]["bytes"] == len("café 😀".encode())
    assert main(["tokenize", str(gpt), "the tokenization of words"]) == 0
    out = capsys.readouterr().out
    assert "tokens per word" in out and "context" in out and "split words" in out
    assert main(["tokenizer", "encode", str(gpt), "café"]) == 0  # a checkpoint works here too
    assert f"ids:    {tokenizers['bpe'].encode('café')}" in capsys.readouterr().out


def test_cli_without_tokenizer_is_one_line(tmp_path, capsys):
    cfg = ModelConfig.from_name("tiny-gpt-1m", n_layer=1, vocab_size=64)
    checkpoint.save(build_model(cfg), tmp_path / "m")
    one_line_error(capsys, ["tokenize", str(tmp_path / "m"), "text"], "without tokenizer.json")
    one_line_error(capsys, ["attention", str(tmp_path / "m"), "text", "--out", str(tmp_path / "a.png")], "tokenizer")
    one_line_error(capsys, ["embeddings", str(tmp_path / "m"), "a", "b"], "no tokenizer.json")


# ---- embeddings ----------------------------------------------------------------------------------


def test_cosine_equals_the_hand_computed_value(gpt, tokenizers):
    model = checkpoint.load(gpt)
    words = ["list", "dictionary", "tokenization"]
    vectors = input_vectors(model, tokenizers["bpe"], words)
    table = model.embed.tokens.weight.detach()
    by_hand = []
    for word in words:  # a word inside text follows a space: " list"; its vector is the mean of its pieces
        ids = tokenizers["bpe"].encode(" " + word)
        by_hand.append(table[ids].mean(0))
    for i in range(3):
        for j in range(3):
            a, b = by_hand[i], by_hand[j]
            expected = float(a @ b / (a.norm() * b.norm()))
            assert float(cosine_matrix(vectors.vectors)[i, j]) == pytest.approx(expected, abs=1e-6)
    assert len(vectors.pieces[2]) > 1  # "tokenization" is several pieces in a 600-token vocabulary


def test_pca_projects_on_the_top_two_principal_components():
    torch.manual_seed(0)
    x = torch.randn(6, 10) * torch.linspace(3, 0.1, 10)  # (W, C)
    projection = pca_2d(x)
    centred = x - x.mean(0)
    eigenvalues = torch.linalg.eigvalsh(centred.T @ centred).flip(0)  # variance along each direction, descending
    assert projection.coords[:, 0].pow(2).sum() == pytest.approx(float(eigenvalues[0]), rel=1e-4)
    assert projection.coords[:, 1].pow(2).sum() == pytest.approx(float(eigenvalues[1]), rel=1e-4)
    assert float(projection.coords[:, 0] @ projection.coords[:, 1]) == pytest.approx(0.0, abs=1e-4)
    assert projection.explained[0] == pytest.approx(float(eigenvalues[0] / eigenvalues.sum()), rel=1e-4)


@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_contextual_vectors_are_the_mean_hidden_state_of_the_words_tokens(request, tokenizers, family):
    model = checkpoint.load(request.getfixturevalue(family))
    sentence = "open the configuration file and read it"
    spans = token_spans(model.tokenizer, sentence)
    with torch.no_grad():
        hidden = model(torch.tensor([[s.id for s in spans]])).last_hidden_state[0]  # (T, C)
    vectors = contextual_vectors(model, model.tokenizer, sentence, ["configuration", "read"])
    start = len("open the ")
    covering = [s.index for s in spans if s.start < start + len("configuration") and s.end > start]
    assert torch.allclose(vectors.vectors[0], hidden[covering].mean(0), atol=1e-6)


def test_embeddings_cli_errors_are_one_line(bert, gpt, capsys):
    one_line_error(capsys, ["embeddings", str(bert), "file", "😀"], "not in the vocabulary")
    one_line_error(capsys, ["embeddings", str(gpt), "list", "tokenization", "--single-token"], "not one token")
    one_line_error(capsys, ["embeddings", str(gpt), "list"], "at least two different words")
    one_line_error(capsys, ["embeddings", str(gpt), "list", "path", "--contextual", "a list"], "does not occur")


def test_embeddings_cli_plot(gpt, tmp_path, capsys):
    out = tmp_path / "emb.png"
    assert main(["embeddings", str(gpt), "list", "dict", "file", "--plot", str(out)]) == 0
    assert "cosine" in capsys.readouterr().out
    assert out.read_bytes().startswith(b"\x89PNG")
    assert not list(tmp_path.glob(".*"))  # the temporary file was renamed into place


# ---- attention -----------------------------------------------------------------------------------


def _panels(fig) -> int:
    return sum(ax.get_label() != "<colorbar>" for ax in fig.axes)


@pytest.mark.parametrize("heads", [[0], [0, 1, 2], [0, 1, 2, 3, 4, 5]])
def test_attention_grid_has_one_panel_per_head(heads):
    maps = AttentionMaps("decoder", [torch.rand(6, 5, 5).softmax(-1)], list("abcde"), list("abcde"))
    fig = draw_attention(maps, 0, heads, "test")
    assert _panels(fig) == len(heads)
    assert len(fig.axes) == len(heads) + 1  # and one colour bar


def test_attention_weights_json_equal_the_models_maps(gpt, tmp_path, capsys):
    text = "for item in items: print(item)"
    out, weights = tmp_path / "all.png", tmp_path / "w.json"
    assert (
        main(["attention", str(gpt), text, "--layer", "1", "--all", "--out", str(out), "--weights", str(weights)]) == 0
    )
    assert out.read_bytes().startswith(b"\x89PNG")
    record = json.loads(weights.read_text())
    model = checkpoint.load(gpt)
    ids = model.tokenizer.encode(text)
    with torch.no_grad():
        expected = model(torch.tensor([ids]), output_attentions=True).attentions[1][0]  # (H, T, T)
    assert record["heads"] == list(range(6)) and record["layer"] == 1
    assert torch.allclose(torch.tensor(record["weights"]), expected, atol=1e-6)
    assert len(record["query_tokens"]) == len(ids)
    capsys.readouterr()

    one = tmp_path / "one.npy"
    assert main(["attention", str(gpt), text, "--layer", "-1", "--head", "2", "--weights", str(one)]) == 0
    assert np.allclose(np.load(one), expected[2:3].numpy(), atol=1e-6)
    assert "most attended token per query" in capsys.readouterr().out


def test_t5_cross_attention_weights(t5, tmp_path):
    source, target = "the cat sat on the mat", "a cat"
    path = tmp_path / "cross.npy"
    argv = ["attention", str(t5), source, "--kind", "cross", "--target", target, "--layer", "0", "--all"]
    assert main([*argv, "--weights", str(path), "--out", str(tmp_path / "cross.png")]) == 0
    model = checkpoint.load(t5)
    enc = torch.tensor([model.tokenizer.encode(source)])
    dec = torch.tensor(
        [[model.config.decoder_start_token_id, *model.tokenizer.encode(target, add_special_tokens=False)]]
    )
    with torch.no_grad():
        out = model(enc, decoder_input_ids=dec, output_attentions=True)
    assert np.allclose(np.load(path), out.cross_attentions[0][0].numpy(), atol=1e-6)  # (H, T_dec, S_enc)
    maps = attention_maps(model, enc[0].tolist(), "encoder", ["x"] * enc.shape[1], ["x"] * enc.shape[1])
    assert torch.allclose(maps.layers[1], out.encoder_attentions[1][0], atol=1e-6)


def test_attention_cli_errors_are_one_line(gpt, t5, tmp_path, capsys):
    png = str(tmp_path / "a.png")
    one_line_error(capsys, ["attention", str(gpt), "some text", "--layer", "2", "--out", png], "out of range")
    one_line_error(
        capsys, ["attention", str(gpt), "some text", "--head", "6", "--out", png], "--head 6 is out of range"
    )
    one_line_error(capsys, ["attention", str(gpt), "some text", "--kind", "cross", "--out", png], "no cross attention")
    one_line_error(capsys, ["attention", str(t5), "some text", "--kind", "cross", "--out", png], "--target")
    one_line_error(capsys, ["attention", str(gpt), "some text"], "nothing to write")
    one_line_error(capsys, ["attention", str(gpt), "text", "--weights", str(tmp_path / "w.csv")], ".json or .npy")


# ---- next-token distribution ---------------------------------------------------------------------


def test_temperature_panels_are_softmax_of_scaled_logits_and_sum_to_one():
    torch.manual_seed(0)
    scores = torch.randn(300) * 3  # (V,)
    filters = Filters(top_k=20, top_p=0.8)
    panels = temperature_panels(scores, [0.5, 1.0, 1.5], str, top=8, filters=filters)
    for panel in panels:
        probs = (scores / panel.temperature).softmax(-1)
        assert panel.probs == pytest.approx(probs[panel.token_ids].tolist(), abs=1e-7)
        assert sum(panel.bars) == pytest.approx(1.0, abs=1e-6)
        assert panel.kept == sorted(panel.kept, reverse=True)  # the filters keep a most-likely-first prefix
        assert panel.n_kept <= 20
    # a flatter distribution (higher T) needs more tokens to reach top-p's mass
    assert panels[0].n_kept <= panels[1].n_kept <= panels[2].n_kept
    fig = draw_distribution(panels, "test", filters, sampling_temperature=1.0)
    assert _panels(fig) == 3
    for ax in fig.axes:
        assert sum(bar.get_width() for bar in ax.patches) == pytest.approx(1.0, abs=1e-6)


def test_generate_plot_uses_the_models_logits_at_the_position(gpt, tmp_path, capsys, monkeypatch):
    import llmkit.viz.distribution as distribution

    seen = {}
    real = distribution.temperature_panels

    def spy(scores, temperatures, label, top, filters):
        seen["scores"], seen["temperatures"] = scores.clone(), temperatures
        return real(scores, temperatures, label, top, filters)

    monkeypatch.setattr(distribution, "temperature_panels", spy)
    out = tmp_path / "t.png"
    prompt = "The for statement"
    argv = ["generate", str(gpt), prompt, "--max-new-tokens", "3", "--explain", "--plot", str(out)]
    assert main([*argv, "--plot-position", "1", "--plot-temperatures", "0.7,1.3"]) == 0
    assert out.read_bytes().startswith(b"\x89PNG") and seen["temperatures"] == [0.7, 1.3]
    model = checkpoint.load(gpt)
    ids = model.tokenizer.encode(prompt)
    with torch.no_grad():
        first = int(model(torch.tensor([ids])).logits[0, -1].argmax())  # greedy: position 0's token
        logits = model(torch.tensor([[*ids, first]])).logits[0, -1]  # what the model scores at position 1
    assert torch.allclose(seen["scores"], logits, atol=1e-4)
    capsys.readouterr()


def test_generate_plot_errors_are_one_line(gpt, tmp_path, capsys):
    png = str(tmp_path / "t.png")
    one_line_error(capsys, ["generate", str(gpt), "a", "--plot", png], "add --explain")
    argv = ["generate", str(gpt), "a", "--explain", "--plot", png, "--max-new-tokens", "2"]
    one_line_error(capsys, [*argv, "--plot-position", "5"], "--plot-position 5: the completion has")
    one_line_error(capsys, [*argv, "--plot-temperatures", "0,1"], "above 0")
