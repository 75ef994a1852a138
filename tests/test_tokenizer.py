"""Tokenizer training, loading, saving and the `llmkit tokenizer` command, checked against transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmkit.data.builtin import BUILTIN_CORPORA, python_docs_texts, stdlib_source_files
from llmkit.data.tokenizer import Tokenizer
from llmkit.data.tokenizer_train import iter_text_files, train_tokenizer
from llmkit.errors import LlmkitError

KINDS = ("bpe", "wordpiece", "unigram")
VOCAB = 500
# Ordinary text plus specials, accents, emoji, CJK and odd whitespace: every path a tokenizer can take.
MIXED = "Hello, wörld! naïve café 😀 中文 <|endoftext|> [MASK] <extra_id_0> two  spaces\tand\na newline"


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return list(python_docs_texts())[:40]  # ~200k characters: big enough for 500 tokens, trains in < 1 s


@pytest.fixture(scope="module")
def trained(corpus) -> dict[str, Tokenizer]:
    return {kind: train_tokenizer(corpus, kind, VOCAB) for kind in KINDS}


def _save_vocab_files(tok: Tokenizer, directory: Path, **config) -> Path:
    """Write the older HF layout (vocab.json+merges.txt, or vocab.txt) plus a tokenizer_config.json."""
    directory.mkdir()
    tok.backend.model.save(str(directory))
    config.update({f"{role}_token": token for role, token in tok.special_tokens.items()})
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


# --- training -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_training_text_round_trips(trained, corpus, kind):
    tok = trained[kind]
    assert tok.vocab_size == VOCAB
    texts = corpus[:10]
    ids = tok.encode_batch(texts)
    decoded = [tok.decode(one) for one in ids]
    if kind == "wordpiece":
        # BERT lowercases, strips accents and drops spacing, so only a fixpoint can be asked for.
        assert tok.encode_batch(decoded) == ids
        assert "".join(decoded[0].split()) == "".join(texts[0].lower().split())
    else:
        assert decoded == texts
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_bpe_is_lossless_on_any_unicode(trained):
    tok = trained["bpe"]
    for text in [MIXED, "Ωμέγα ∑ 🇫🇷👩‍👩‍👧 \x00\u200b", "   leading and trailing   "]:
        assert tok.decode(tok.encode(text), skip_special_tokens=False) == text
    assert tok.unk_token_id is None and tok.mask_token_id is None


def test_bpe_special_tokens(trained):
    tok = trained["bpe"]
    assert tok.special_tokens == {"bos": "<|endoftext|>", "eos": "<|endoftext|>", "pad": "<|pad|>"}
    assert tok.bos_token_id == tok.eos_token_id == tok.token_to_id("<|endoftext|>")
    assert tok.pad_token_id != tok.eos_token_id  # padding must never read as end-of-text
    # A special token in the text is one id, not split into bytes; GPT-2 adds nothing around the text.
    assert tok.encode("a<|endoftext|>b")[1] == tok.eos_token_id
    assert tok.encode("hello") == tok.encode("hello", add_special_tokens=False)
    assert tok.decode(tok.encode("hi<|endoftext|>")) == "hi"


def test_wordpiece_special_tokens(trained):
    tok = trained["wordpiece"]
    ids = {role: getattr(tok, f"{role}_token_id") for role in ("pad", "unk", "cls", "sep", "mask")}
    assert ids == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    assert tok.bos_token_id is None and tok.eos_token_id is None
    ids = tok.encode("the quick fox")
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.encode("the quick fox", add_special_tokens=False) == ids[1:-1]
    assert tok.encode("a [MASK] b")[2] == tok.mask_token_id
    assert tok.decode(tok.encode("The Quick, brown fox.")) == "the quick, brown fox."
    assert any(tok.id_to_token(i).startswith("##") for i in range(tok.vocab_size))


def test_unigram_special_tokens_and_sentinels(trained):
    tok = trained["unigram"]
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.mask_token_id is None and tok.bos_token_id is None
    sentinels = tok.sentinel_token_ids
    assert len(sentinels) == 100
    # As in T5: consecutive, <extra_id_0> is the top id, counting down.
    assert sentinels == list(range(VOCAB - 1, VOCAB - 101, -1))
    assert tok.encode("x <extra_id_0> y", add_special_tokens=False).count(sentinels[0]) == 1
    ids = tok.encode("hello world")
    assert ids[-1] == tok.eos_token_id and tok.encode("hello world", add_special_tokens=False) == ids[:-1]
    assert tok.decode(ids) == "hello world"


def test_unknown_kind_and_tiny_vocab_are_refused(corpus):
    with pytest.raises(LlmkitError, match="unknown tokenizer kind 'sentencepiece'.*bpe, wordpiece, unigram"):
        train_tokenizer(corpus, "sentencepiece", 1000)
    with pytest.raises(LlmkitError, match="too small.*--vocab-size"):
        train_tokenizer(corpus, "bpe", 100)
    with pytest.raises(LlmkitError, match="too small"):
        train_tokenizer(corpus, "unigram", 110)  # 100 sentinels leave no room


def test_many_distinct_characters(tmp_path):
    # 1000 distinct CJK characters: more than a 300-id vocabulary can hold one by one.
    texts = ["plain words here " + "".join(chr(0x4E00 + i) for i in range(j * 50, j * 50 + 50)) for j in range(20)]
    assert train_tokenizer(texts, "bpe", 300).vocab_size <= 300  # bytes, not characters
    assert train_tokenizer(texts, "wordpiece", 300).vocab_size <= 300  # rare characters become [UNK]
    with pytest.raises(LlmkitError, match="cannot hold every distinct character.*raise --vocab-size"):
        train_tokenizer(texts, "unigram", 300, n_sentinels=0)


# --- saving and loading ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_save_then_from_dir_gives_identical_ids(trained, corpus, tmp_path, kind):
    tok = trained[kind]
    tok.save(tmp_path / "out", model_max_length=1024)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    config = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and config["model_max_length"] == 1024
    assert {k: v for k, v in config.items() if k.endswith("_token")} == {
        f"{role}_token": token for role, token in tok.special_tokens.items()
    }
    loaded = Tokenizer.from_dir(tmp_path / "out")
    assert loaded.special_tokens == tok.special_tokens and loaded.vocab_size == tok.vocab_size
    texts = [MIXED, *corpus[:5]]
    for ours, theirs in zip(loaded.encode_batch(texts), tok.encode_batch(texts), strict=True):
        if kind == "unigram" and ours != theirs:
            # a CI run met the loaded Unigram choosing the other side of an exact tie (the same pieces in another
            # order, ids 54 249 249 against 249 54 249, equal scores whatever the order of the sum); not
            # reproduced alone. Only such ties may differ: the same pieces, the same text
            assert sorted(ours) == sorted(theirs) and loaded.decode(ours) == tok.decode(theirs)
        else:
            assert ours == theirs


@pytest.mark.parametrize("kind", KINDS)
def test_roles_are_inferred_without_a_config_file(trained, tmp_path, kind):
    trained[kind].save(tmp_path)
    (tmp_path / "tokenizer_config.json").unlink()
    assert Tokenizer.from_dir(tmp_path).special_tokens == trained[kind].special_tokens


def test_special_tokens_map_with_added_token_dicts(trained, tmp_path):
    trained["wordpiece"].save(tmp_path)
    (tmp_path / "tokenizer_config.json").unlink()
    roles = {"pad_token": {"content": "[PAD]", "lstrip": False}, "cls_token": "[CLS]", "mask_token": None}
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(roles))
    assert Tokenizer.from_dir(tmp_path).special_tokens == {"pad": "[PAD]", "cls": "[CLS]"}


@pytest.mark.parametrize("kind", KINDS)
def test_transformers_loads_what_we_save(trained, tmp_path, kind):
    transformers = pytest.importorskip("transformers")
    tok = trained[kind]
    tok.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert hf(MIXED)["input_ids"] == tok.encode(MIXED)
    assert hf.decode(tok.encode(MIXED), skip_special_tokens=True) == tok.decode(tok.encode(MIXED))
    for role in ("bos", "eos", "pad", "unk", "mask", "cls", "sep"):
        assert getattr(hf, f"{role}_token_id") == getattr(tok, f"{role}_token_id"), role
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    assert fast(MIXED)["input_ids"] == tok.encode(MIXED)


def test_from_hf_dir_builds_byte_level_bpe_from_vocab_and_merges(trained, corpus, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = trained["bpe"]
    directory = _save_vocab_files(tok, tmp_path / "gpt2", tokenizer_class="GPT2Tokenizer")
    assert sorted(p.name for p in directory.iterdir()) == ["merges.txt", "tokenizer_config.json", "vocab.json"]
    built = Tokenizer.from_hf_dir(directory)
    texts = [MIXED, *corpus[:5]]
    assert built.encode_batch(texts) == tok.encode_batch(texts)
    assert built.special_tokens == tok.special_tokens
    assert built.decode(built.encode(MIXED)) == tok.decode(tok.encode(MIXED))
    # transformers builds its own GPT-2 tokenizer from the same two files: same ids.
    assert transformers.AutoTokenizer.from_pretrained(str(directory))(MIXED)["input_ids"] == built.encode(MIXED)


@pytest.mark.parametrize("lowercase", [True, False])
def test_from_hf_dir_builds_wordpiece_from_vocab_txt(trained, corpus, tmp_path, lowercase):
    transformers = pytest.importorskip("transformers")
    tok = trained["wordpiece"]
    directory = _save_vocab_files(tok, tmp_path / "bert", tokenizer_class="BertTokenizer", do_lower_case=lowercase)
    built = Tokenizer.from_hf_dir(directory)
    assert built.special_tokens == tok.special_tokens
    if lowercase:
        texts = [MIXED, *corpus[:5]]
        assert built.encode_batch(texts) == tok.encode_batch(texts)
    else:
        assert built.encode("Hello") != tok.encode("Hello")  # cased: "H" is not in a lowercased vocab
    hf = transformers.AutoTokenizer.from_pretrained(str(directory))
    assert hf(MIXED)["input_ids"] == built.encode(MIXED)


def test_from_hf_dir_prefers_tokenizer_json(trained, tmp_path):
    trained["unigram"].save(tmp_path)
    assert Tokenizer.from_hf_dir(tmp_path).encode(MIXED) == trained["unigram"].encode(MIXED)


# --- errors ---------------------------------------------------------------------------------------


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(LlmkitError, match="tokenizer directory not found"):
        Tokenizer.from_dir(tmp_path / "nope")
    with pytest.raises(LlmkitError, match="tokenizer directory not found"):
        Tokenizer.from_hf_dir(tmp_path / "nope")
    with pytest.raises(LlmkitError, match="no tokenizer.json in"):
        Tokenizer.from_dir(tmp_path)
    with pytest.raises(LlmkitError, match="no tokenizer files in"):
        Tokenizer.from_hf_dir(tmp_path)


def test_corrupt_files_are_named(trained, tmp_path):
    trained["bpe"].save(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(LlmkitError, match="tokenizer_config.json"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "truncated')
    with pytest.raises(LlmkitError, match=r"cannot read .*tokenizer\.json"):
        Tokenizer.from_dir(tmp_path)


def test_sentencepiece_only_directory_says_how_to_convert(tmp_path):
    (tmp_path / "spiece.model").write_bytes(b"\x00")
    with pytest.raises(LlmkitError, match="needs tokenizer.json.*save_pretrained") as err:
        Tokenizer.from_hf_dir(tmp_path)
    assert "\n" not in str(err.value)


def test_a_role_naming_a_missing_token_is_refused(trained, tmp_path):
    trained["bpe"].save(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>"}))
    with pytest.raises(LlmkitError, match="pad token '<pad>' is not in the tokenizer's vocabulary"):
        Tokenizer.from_dir(tmp_path)


# --- input files and built-in corpora -------------------------------------------------------------


def test_iter_text_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("bee")
    (tmp_path / "sub" / "a.md").write_text("ay")
    (tmp_path / "skip.json").write_text("{}")
    single = tmp_path / "single.dat"
    single.write_text("named files are read whatever their suffix")
    assert list(iter_text_files([tmp_path / "sub", tmp_path])) == ["ay", "bee", "ay"]
    assert list(iter_text_files([single])) == ["named files are read whatever their suffix"]
    with pytest.raises(LlmkitError, match="no such file or directory: .*missing.txt"):
        iter_text_files([tmp_path, tmp_path / "missing.txt"])  # raised on the call, before any reading
    (tmp_path / "empty").mkdir()
    with pytest.raises(LlmkitError, match=r"no .txt or .md files \(or .gz of them\) under .*empty"):
        iter_text_files([tmp_path / "empty"])


def test_iter_text_files_decompresses_gz_and_refuses_a_cut_one(tmp_path):
    import gzip

    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt.gz").write_bytes(gzip.compress("héllo from gzip".encode()))
    (tmp_path / "corpus" / "b.txt").write_text("plain")
    assert list(iter_text_files([tmp_path / "corpus"])) == ["héllo from gzip", "plain"]
    data = gzip.compress(("line\n" * 5000).encode())
    (tmp_path / "cut.txt.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(LlmkitError, match=r"cut.txt.gz: corrupt or truncated gzip file"):
        list(iter_text_files([tmp_path / "cut.txt.gz"]))


def test_builtin_corpora():
    from pydoc_data.topics import topics

    docs = list(python_docs_texts())
    assert len(docs) == len(topics) and all(docs)
    files = stdlib_source_files()
    names = {p.name for p in files}
    assert "os.py" in names and "tokenize.py" in names
    assert not any({"site-packages", "test", "idlelib"} & set(p.parts) for p in files)
    assert set(BUILTIN_CORPORA) == {"python-docs", "python-stdlib"}
    assert next(BUILTIN_CORPORA["python-stdlib"]())  # yields file contents
    # L0 module: importing it must not pull in torch or tokenizers.
    code = "import sys, llmkit.data.builtin; print('torch' in sys.modules or 'tokenizers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


# --- command line ---------------------------------------------------------------------------------


@pytest.fixture
def cli(monkeypatch):
    """`llmkit.cli.main` with only this module's command, so the test does not depend on the others."""
    import llmkit.cli

    monkeypatch.setattr(llmkit.cli, "COMMAND_MODULES", ("tokenizer",))
    return llmkit.cli.main


def test_cli_train_and_encode(cli, corpus, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "nested").mkdir(parents=True)
    for i, text in enumerate(corpus[:20]):
        (data / ("nested" if i % 2 else "") / f"{i}.txt").write_text(text)
    out = tmp_path / "tok"
    assert cli(["tokenizer", "train", str(data), "--kind", "wordpiece", "--vocab-size", "400", "--out", str(out)]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("trained wordpiece tokenizer: vocab 400, 20 texts,") and "tokens/char" in summary
    assert Tokenizer.from_dir(out).vocab_size == 400

    assert cli(["tokenizer", "encode", str(out), "Hello world"]) == 0
    printed = capsys.readouterr().out
    assert "'[CLS]'" in printed and "ids:    [2, " in printed


def test_cli_train_builtin(cli, tmp_path, capsys):
    from pydoc_data.topics import topics

    assert cli(["tokenizer", "train", "--builtin", "python-docs", "--vocab-size", "300", "--out", str(tmp_path)]) == 0
    assert f"vocab 300, {len(topics)} texts" in capsys.readouterr().out
    assert Tokenizer.from_dir(tmp_path).special_tokens["eos"] == "<|endoftext|>"


def test_cli_without_input_is_a_one_line_error(cli, tmp_path, capsys):
    assert cli(["tokenizer", "train", "--out", str(tmp_path / "tok")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no training text given" in err
    assert not (tmp_path / "tok").exists()


def test_cli_help_is_thorough(cli, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(["tokenizer", "train", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for word in ("--builtin", "--kind", "--vocab-size", "--min-frequency", "--out", "GPT-2", "BERT", "T5"):
        assert word in text


@pytest.mark.parametrize("where", ["tokenizer_config.json", "chat_template.jinja"])
def test_chat_template_survives_load_and_save(tiny_tokenizer, tmp_path, where):
    """A checkpoint written from a loaded tokenizer (quantize, finetune, lora merge) keeps its chat template."""
    template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    src, dst = tmp_path / "src", tmp_path / "dst"
    tiny_tokenizer.save(src)
    if where == "chat_template.jinja":
        (src / where).write_text(template, encoding="utf-8")
    else:
        config = json.loads((src / where).read_text())
        (src / where).write_text(json.dumps({**config, "chat_template": template}))
    Tokenizer.from_dir(src).save(dst)
    assert json.loads((dst / "tokenizer_config.json").read_text())["chat_template"] == template
    assert Tokenizer.from_dir(dst).chat_template == template


def test_quantized_checkpoint_keeps_the_chat_template(tiny_checkpoint, tmp_path):
    import shutil

    from llmkit import checkpoint
    from llmkit.quantize.spec import QuantSpec
    from llmkit.quantize_checkpoint import quantize_checkpoint

    src = tmp_path / "model"
    shutil.copytree(tiny_checkpoint(), src)
    (src / "chat_template.jinja").write_text("{{ messages[0].content }}", encoding="utf-8")
    checkpoint.write_manifest(src)  # the edit recorded, as `llmkit manifest --write` does
    quantize_checkpoint(src, tmp_path / "int8", QuantSpec(method="int8"))
    config = json.loads((tmp_path / "int8" / "tokenizer_config.json").read_text())
    assert config["chat_template"] == "{{ messages[0].content }}"
