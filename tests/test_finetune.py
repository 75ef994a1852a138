"""`llmkit finetune`: the task heads equal transformers' on converted models, runs learn, resume
exactly, keep their best checkpoint, and bad input is a one-line error.

Models are random-weight tiny BERT / Llama built from transformers configs, saved with a WordPiece
(BERT) or byte-level BPE (Llama) tokenizer trained on the test's own sentences, and converted with
``llmkit.hf.from_hf``: the same path a user's `llmkit convert --from-hf` takes.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hf_utils import randomize

transformers = pytest.importorskip("transformers")

from llmkit import checkpoint  # noqa: E402
from llmkit.errors import LlmkitError  # noqa: E402
from llmkit.finetune import finetune, load_finetune_config  # noqa: E402
from llmkit.finetune.data import align_labels, read_conll  # noqa: E402
from llmkit.hf import from_hf, to_hf  # noqa: E402
from llmkit.objectives import lm_loss  # noqa: E402
from llmkit.train import loop  # noqa: E402

ATOL = 1e-5
GOOD = ["great", "good", "lovely", "superb", "fine", "brilliant"]
BAD = ["awful", "bad", "boring", "dull", "poor", "terrible"]
FILLER = ["the", "film", "was", "really", "quite", "a", "story", "and", "cast", "plot"]
TAGS = ["O", "B-person", "I-person", "B-location"]
NAMES = ["anna", "bob", "carl"]
PLACES = ["paris", "rome", "oslo"]


def _sentences(n: int, seed: int) -> list[tuple[str, str]]:
    """Tiny separable sentiment: the label is whether a GOOD or a BAD word appears among filler."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randrange(2)
        words = rng.sample(FILLER, 4) + [rng.choice(GOOD if label else BAD)]
        rng.shuffle(words)
        rows.append((" ".join(words), str(label)))
    return rows


def _conll(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(rng.randrange(3, 7)):
            kind = rng.randrange(4)
            if kind == 0:
                words += [rng.choice(NAMES), rng.choice(NAMES)]
                tags += ["B-person", "I-person"]
            elif kind == 1:
                words.append(rng.choice(PLACES))
                tags.append("B-location")
            else:
                words.append(rng.choice(FILLER))
                tags.append("O")
        out.append((words, tags))
    return out


def _write_tsv(path: Path, rows) -> Path:
    path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{label}\n" for t, label in rows))
    return path


def _write_conll(path: Path, sentences) -> Path:
    path.write_text("\n".join("".join(f"{w}\t{t}\n" for w, t in zip(ws, ts, strict=True)) for ws, ts in sentences))
    return path


CORPUS = [t for t, _ in _sentences(200, 0)] + [" ".join(w) for w, _ in _conll(100, 0)]


@pytest.fixture(scope="module")
def wordpiece():
    from llmkit.data.tokenizer_train import train_tokenizer

    return train_tokenizer(CORPUS, "wordpiece", vocab_size=120, min_frequency=1)


@pytest.fixture(scope="module")
def bpe():
    from llmkit.data.tokenizer_train import train_tokenizer

    return train_tokenizer(CORPUS, "bpe", vocab_size=300, min_frequency=1)


def bert_config(**kw):
    return transformers.BertConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=64, type_vocab_size=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        **kw,
    )  # fmt: skip


def llama_config(**kw):
    return transformers.LlamaConfig(
        vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, tie_word_embeddings=False, **kw,
    )  # fmt: skip


def _save_hf(model, tokenizer, directory: Path) -> Path:
    model.save_pretrained(directory)
    tokenizer.save(directory)
    return directory


@pytest.fixture(scope="module")
def bert_base(wordpiece, tmp_path_factory):
    """A random BertModel (pooler, no head) converted to llmkit, as all-MiniLM-L6-v2 is."""
    root = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    hf = randomize(transformers.BertModel(bert_config()))
    from_hf(_save_hf(hf, wordpiece, root / "hf"), root / "llmkit")
    return root / "llmkit"


# ---- equivalence with transformers ------------------------------------------------------------
def _batch(tokenizer, texts, pad):
    ids = [tokenizer.encode(t) for t in texts]
    length = max(map(len, ids))
    input_ids = torch.tensor([i + [pad] * (length - len(i)) for i in ids])
    mask = torch.tensor([[1] * len(i) + [0] * (length - len(i)) for i in ids])
    return input_ids, mask


CASES = {
    "bert-seq": (lambda: transformers.BertForSequenceClassification(bert_config(num_labels=3)), "wordpiece"),
    "bert-tok": (lambda: transformers.BertForTokenClassification(bert_config(num_labels=4)), "wordpiece"),
    "llama-seq": (lambda: transformers.LlamaForSequenceClassification(llama_config(num_labels=3)), "bpe"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@torch.no_grad()
def test_heads_equal_transformers(case, request, tmp_path):
    """Logits and the cross-entropy loss of the converted model equal transformers' within 1e-5 on
    a right-padded batch (real tokens only for the token head), and --to-hf gives back a checkpoint
    transformers loads with the same logits and label names."""
    make, tok_name = CASES[case]
    tokenizer = request.getfixturevalue(tok_name)
    torch.manual_seed(0)
    hf = make()
    hf.config.id2label = {i: f"c{i}" for i in range(hf.config.num_labels)}
    hf.config.label2id = {f"c{i}": i for i in range(hf.config.num_labels)}
    hf = randomize(hf)
    from_hf(_save_hf(hf, tokenizer, tmp_path / "hf"), tmp_path / "ours")
    ours = checkpoint.load(tmp_path / "ours")
    assert ours.config.labels == [f"c{i}" for i in range(hf.config.num_labels)]
    pad = 0
    input_ids, mask = _batch(tokenizer, ["the film was great", "bad plot", "anna and bob in paris and rome"], pad)
    n = hf.config.num_labels
    if case == "bert-tok":
        labels = torch.randint(0, n, input_ids.shape, generator=torch.Generator().manual_seed(1))
        labels[mask == 0] = -100
    else:
        labels = torch.tensor([0, 2, 1])
    theirs = hf(input_ids=input_ids, attention_mask=mask, labels=labels)
    mine = ours(input_ids=input_ids, attention_mask=mask).logits
    real = mask.bool() if case == "bert-tok" else slice(None)
    assert mine.shape == theirs.logits.shape
    assert torch.allclose(mine[real], theirs.logits[real], atol=ATOL), (mine[real] - theirs.logits[real]).abs().max()
    assert abs(float(lm_loss(mine, labels)) - float(theirs.loss)) < ATOL
    to_hf(tmp_path / "ours", tmp_path / "back")
    back = type(hf).from_pretrained(tmp_path / "back").eval()
    assert back.config.id2label == hf.config.id2label
    again = back(input_ids=input_ids, attention_mask=mask).logits
    assert torch.allclose(again[real], theirs.logits[real], atol=ATOL)


def test_align_labels_first_subtoken_only():
    # [CLS] w0 w1a w1b w2 [SEP]: w1's second piece and the specials take -100
    assert align_labels([None, 0, 1, 1, 2, None], [3, 1, 2]) == [-100, 3, 1, -100, 2, -100]


# ---- runs -------------------------------------------------------------------------------------
def _config(tmp_path: Path, base: Path, kind: str = "classify", **train) -> Path:
    if kind == "classify":
        train_file = _write_tsv(tmp_path / "train.tsv", _sentences(160, 1))
        dev_file = _write_tsv(tmp_path / "dev.tsv", _sentences(48, 2))
    else:
        train_file = _write_conll(tmp_path / "train.conll", _conll(120, 1))
        dev_file = _write_conll(tmp_path / "dev.conll", _conll(40, 2))
    settings = {"steps": 60, "batch_size": 8, "lr": 3e-3, "warmup_steps": 4, "eval_interval": 30,
                "save_interval": 30, "log_interval": 5, "dtype": "fp32", "device": "cpu",
                "out_dir": str(tmp_path / "run"), **train}  # fmt: skip
    lines = [f'[model]\ninit_from = "{base}"\n', f'[task]\nkind = "{kind}"\ntrain_file = "{train_file}"\n'
             f'dev_file = "{dev_file}"\n', "[train]"]  # fmt: skip
    lines += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    path = tmp_path / "ft.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _evals(out: Path) -> list[dict]:
    records = [json.loads(line) for line in (out / "last" / loop.METRICS).read_text().splitlines()]
    return [r for r in records if "val_loss" in r]


def test_classify_learns_and_keeps_best(bert_base, tmp_path):
    # a random BERT learns this by chance at different speeds: 60 steps ended anywhere in 0.69-0.96
    # over seeds 0-5; 120 steps at lr 1e-3 ended at 0.96-1.0 for seeds 0-3
    summary = finetune(load_finetune_config(_config(tmp_path, bert_base, lr=1e-3, steps=120, eval_interval=60)))
    evals = _evals(tmp_path / "run")
    assert [e["step"] for e in evals] == [0, 60, 120]
    assert evals[0]["accuracy"] < 0.6 and summary["eval"]["accuracy"] >= 0.9
    assert summary["eval"]["val_loss"] < evals[0]["val_loss"]
    best = json.loads((tmp_path / "run" / "best" / "best.json").read_text())
    assert best["accuracy"] == max(e["accuracy"] for e in evals) == summary["best"]
    model = checkpoint.load(tmp_path / "run" / "best")
    assert (model.config.encoder_head, model.config.labels) == ("classifier", ["0", "1"])


def test_tokens_learns_entities(bert_base, tmp_path):
    summary = finetune(load_finetune_config(_config(tmp_path, bert_base, "tokens", steps=120, eval_interval=120)))
    assert _evals(tmp_path / "run")[0]["f1"] < 0.2 and summary["eval"]["f1"] >= 0.7
    assert checkpoint.load(tmp_path / "run" / "best").config.labels == sorted(TAGS)


def test_resume_is_exact(bert_base, tmp_path, monkeypatch):
    """12 steps straight vs. killed after step 10 (checkpoint at 8) and resumed, dropout on: the same
    weights, dev scores and best checkpoint, bit for bit."""
    settings = dict(steps=12, save_interval=4, eval_interval=6, warmup_steps=2)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = _config(tmp_path / "a", bert_base, **settings)
    killed = _config(tmp_path / "b", bert_base, **settings)
    flags = {"model": {"dropout": 0.1}}
    finetune(load_finetune_config(straight, flags))
    real_step = loop.train_step

    def dies_after_ten(state, batches):
        if state.step == 10:
            raise KeyboardInterrupt
        return real_step(state, batches)

    monkeypatch.setattr(loop, "train_step", dies_after_ten)
    with pytest.raises(KeyboardInterrupt):
        finetune(load_finetune_config(killed, flags))
    monkeypatch.undo()
    summary = finetune(load_finetune_config(killed, flags), resume=True)
    assert summary["steps_this_run"] == 4
    for sub in ("last", "best"):
        a = checkpoint.read_weights(tmp_path / "a" / "run" / sub / checkpoint.WEIGHTS)
        b = checkpoint.read_weights(tmp_path / "b" / "run" / sub / checkpoint.WEIGHTS)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _evals(tmp_path / "a" / "run") == _evals(tmp_path / "b" / "run")


def test_resume_with_another_task_is_an_error(bert_base, tmp_path):
    cfg = _config(tmp_path, bert_base, steps=8, save_interval=4)
    finetune(load_finetune_config(cfg, {"train": {"steps": 4}}))
    with pytest.raises(LlmkitError, match=r"cannot resume: \[task\] max_train_examples=100"):
        finetune(load_finetune_config(cfg, {"task": {"max_train_examples": 100}}), resume=True)


def test_group_by_length_sorts_runs_of_the_shuffled_order():
    """[task] group_by_length: each epoch's shuffled order cut into runs, each sorted longest first
    (transformers' LengthGroupedSampler); every row once per epoch, batches far less padded."""
    from llmkit.finetune.data import Encoded, Examples

    lengths = torch.randint(2, 40, (96,), generator=torch.Generator().manual_seed(0)).tolist()
    rows = [Encoded(list(range(n)), 0) for n in lengths]
    plain, grouped = Examples(rows, pad_id=0), Examples(rows, pad_id=0, group_size=32)
    order = grouped._order(seed=0, epoch=0)
    assert sorted(order) == list(range(96))
    for start in range(0, 96, 32):
        run = order[start : start + 32]
        assert [lengths[i] for i in run] == sorted((lengths[i] for i in run), reverse=True)
        assert set(run) == set(plain._order(seed=0, epoch=0)[start : start + 32])  # the shuffled run, sorted

    def padding(examples):
        return sum(int((examples.batch(i, 8, seed=0).inputs["attention_mask"] == 0).sum()) for i in range(12))

    assert padding(grouped) < padding(plain) / 3


def test_resume_takes_a_setting_added_since_as_its_default(bert_base, tmp_path):
    """A run saved before a [task] setting existed resumes when the setting is at its default."""
    cfg = _config(tmp_path, bert_base, steps=8, save_interval=4)
    finetune(load_finetune_config(cfg, {"train": {"steps": 4}}))
    state_path = tmp_path / "run" / "last" / "train_state.pt"
    state = torch.load(state_path, weights_only=True)
    del state["finetune"]["task"]["group_by_length"]  # as an older llmkit saved it
    torch.save(state, state_path)
    assert finetune(load_finetune_config(cfg), resume=True, verify=False)["steps_this_run"] == 4  # edited file
    with pytest.raises(LlmkitError, match=r"cannot resume: \[task\] group_by_length=True"):
        finetune(load_finetune_config(cfg, {"task": {"group_by_length": True}, "train": {"steps": 12}}), resume=True)


def test_freeze_trains_the_head_only(bert_base, tmp_path):
    cfg = load_finetune_config(_config(tmp_path, bert_base, steps=4), {"method": {"name": "freeze"}})
    finetune(cfg)
    base = checkpoint.read_weights(bert_base / checkpoint.WEIGHTS)
    tuned = checkpoint.read_weights(tmp_path / "run" / "last" / checkpoint.WEIGHTS)
    assert all(torch.equal(base[k], tuned[k]) for k in base)
    from llmkit.models import build_model

    torch.manual_seed(cfg.train.seed)  # the head's init, as the run drew it
    fresh = build_model(checkpoint.load_config(tmp_path / "run" / "last"))
    assert not torch.equal(tuned["classifier.weight"], fresh.classifier.weight)


def _dev_accuracy(model_dir: Path, dev: Path) -> float:
    from llmkit.finetune.data import collate, encode_classify, read_labelled

    model = checkpoint.load(model_dir)
    rows = read_labelled(dev, "sentence", "label")
    batch = collate(encode_classify(model.tokenizer, rows, model.config.labels, 128), 0)
    with torch.no_grad():
        predicted = model(**batch.inputs).logits.argmax(-1)
    return float((predicted == batch.labels).float().mean())


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_lora_trains_adapter_and_head_only(method, bert_base, tmp_path):
    """LoRA r=8 on q and v (QLoRA: over int8 blocks): the base's weights stay, the run learns, the peft
    adapter is written, and LoRA's merged best checkpoint scores what its run reported."""
    flags = {"method": {"name": method, "rank": 8, "alpha": 16.0, "bits": 8}, "train": {"lr": 1e-2}}
    summary = finetune(load_finetune_config(_config(tmp_path, bert_base, steps=90, eval_interval=45), flags))
    evals = _evals(tmp_path / "run")
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.1
    assert evals[0]["accuracy"] < 0.6 and summary["best"] >= 0.7
    config = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["peft_type"] == "LORA"
    tuned = checkpoint.read_weights(tmp_path / "run" / "last" / checkpoint.WEIGHTS)
    base = checkpoint.read_weights(bert_base / checkpoint.WEIGHTS)
    assert torch.equal(tuned["embed.tokens.weight"], base["embed.tokens.weight"])
    if method == "lora":
        name = "stack.layers.0.attn.q"
        assert torch.equal(tuned[f"{name}.base_layer.weight"], base[f"{name}.weight"])
        best = json.loads((tmp_path / "run" / "best" / "best.json").read_text())
        assert abs(_dev_accuracy(tmp_path / "run" / "best", tmp_path / "dev.tsv") - best["accuracy"]) < 1e-6
    else:
        assert json.loads((tmp_path / "run" / "best.json").read_text())["accuracy"] == summary["best"]


def test_decoder_classifier_learns(bpe, tmp_path):
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(llama_config())
    from_hf(_save_hf(hf, bpe, tmp_path / "hf"), tmp_path / "llama")
    summary = finetune(load_finetune_config(_config(tmp_path, tmp_path / "llama")))
    assert summary["eval"]["accuracy"] >= 0.9


def test_continue_pretraining_lowers_the_loss(bpe, tmp_path):
    from llmkit.data.shards import tokenize_corpus

    torch.manual_seed(0)
    from_hf(_save_hf(transformers.LlamaForCausalLM(llama_config()), bpe, tmp_path / "hf"), tmp_path / "llama")
    text = tmp_path / "text.txt"
    text.write_text("\n".join(CORPUS * 3))
    tokenize_corpus([(str(text), None)], bpe, tmp_path / "tokens", line_documents=True, progress=False)
    flags = {"task": {"kind": "continue", "data": str(tmp_path / "tokens")}, "train": {"block_size": 32}}
    summary = finetune(load_finetune_config(_config(tmp_path, tmp_path / "llama", steps=30), flags))
    assert summary["val_loss"] < summary["init_val_loss"] - 1.0
    best = json.loads((tmp_path / "run" / "best" / "best.json").read_text())
    assert best["val_loss"] == min(e["val_loss"] for e in _evals(tmp_path / "run"))


# ---- bad input --------------------------------------------------------------------------------
def test_unknown_lora_target_is_an_error(bert_base, tmp_path):
    flags = {"method": {"name": "lora", "target_modules": "attn.nope"}}
    with pytest.raises(LlmkitError, match="nope"):
        finetune(load_finetune_config(_config(tmp_path, bert_base), flags))


def test_tag_missing_from_labels_is_an_error(bert_base, tmp_path):
    cfg = load_finetune_config(_config(tmp_path, bert_base, "tokens"), {"task": {"labels": "O,B-person,I-person"}})
    with pytest.raises(LlmkitError, match="label 'B-location' is not in the config's labels"):
        finetune(cfg)


def test_unknown_task_kind_is_an_error(bert_base, tmp_path):
    with pytest.raises(LlmkitError, match="unknown task kind 'sentiment'"):
        load_finetune_config(_config(tmp_path, bert_base), {"task": {"kind": "sentiment"}})


def test_continue_with_another_tokenizer_is_an_error(bert_base, bpe, tmp_path):
    from llmkit.data.shards import tokenize_corpus

    text = tmp_path / "text.txt"
    text.write_text("\n".join(CORPUS))
    tokenize_corpus([(str(text), None)], bpe, tmp_path / "tokens", line_documents=True, progress=False)
    cfg = load_finetune_config(
        _config(tmp_path, bert_base), {"task": {"kind": "continue", "data": str(tmp_path / "tokens")}}
    )
    with pytest.raises(LlmkitError, match="tokenizer differs"):
        finetune(cfg)


def test_conll_line_without_tag_is_an_error(tmp_path):
    (tmp_path / "x.conll").write_text("word\tO\nlonely\n")
    with pytest.raises(LlmkitError, match="expected 'word TAG'"):
        read_conll(tmp_path / "x.conll")


def test_cli_bad_input_exits_2_with_one_line(bert_base, tmp_path):
    cfg = _config(tmp_path, bert_base, "tokens")
    run = subprocess.run(
        [sys.executable, "-m", "llmkit", "finetune", "--config", str(cfg), "--task.labels", "O,B-person"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) <= 2 and "not in the config's labels" in run.stderr
    assert "Traceback" not in run.stderr
    run = subprocess.run(
        [sys.executable, "-m", "llmkit", "finetune", "--config", str(cfg), "--task.kind", "ner"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 2 and "unknown task kind 'ner'" in run.stderr


# ---- seq2seq and instruct ---------------------------------------------------------------------
# a short ChatML-like template (the tiny BPE splits ChatML's <|im_start|> into many bytes): "[role]" lines and
# EOS as the end-of-turn marker, as Llama 2's template ends turns with </s>
CHATML = (
    "{% for m in messages %}{{ '[' + m['role'] + ']\\n' + m['content'] + eos_token + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '[assistant]\\n' }}{% endif %}"
)


def _pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """A tiny text-to-text task: the target is the input's GOOD/BAD word and its sentiment."""
    return [(text, ("good " if label == "1" else "bad ") + next(w for w in text.split() if w in GOOD + BAD))
            for text, label in _sentences(n, seed)]  # fmt: skip


@pytest.fixture(scope="module")
def t5_base(bpe, tmp_path_factory):
    """A random T5 v1.1 (pad 1, EOS 0 as the BPE tokenizer has them) converted to llmkit."""
    root = tmp_path_factory.mktemp("t5")
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=300, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
        relative_attention_num_buckets=16, relative_attention_max_distance=20, dropout_rate=0.0,
        feed_forward_proj="gated-gelu", pad_token_id=1, eos_token_id=0, decoder_start_token_id=1,
        tie_word_embeddings=False,
    )  # fmt: skip
    hf = randomize(transformers.T5ForConditionalGeneration(config))
    from_hf(_save_hf(hf, bpe, root / "hf"), root / "llmkit")
    return root


@pytest.fixture(scope="module")
def llama_base(bpe, tmp_path_factory):
    root = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    hf = randomize(transformers.LlamaForCausalLM(llama_config()))
    from_hf(_save_hf(hf, bpe, root / "hf"), root / "llmkit")
    # a chat template, as converted instruct models (SmolLM2) keep it in tokenizer_config.json
    config = json.loads((root / "llmkit" / "tokenizer_config.json").read_text())
    (root / "llmkit" / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHATML}))
    checkpoint.write_manifest(root / "llmkit")
    return root


@torch.no_grad()
def test_seq2seq_loss_equals_transformers(t5_base, bpe):
    """Teacher forcing: our batch (inputs, shifted decoder inputs, -100 on padding) gives the loss
    T5ForConditionalGeneration computes from the same ids with ``labels``."""
    from llmkit.finetune.text2text import collate_seq2seq, encode_seq2seq

    hf = transformers.T5ForConditionalGeneration.from_pretrained(t5_base / "hf").eval()
    ours = checkpoint.load(t5_base / "llmkit")
    examples = encode_seq2seq(bpe, _pairs(3, 5) + [("a", "the film was really quite a story")], 64, 64)
    assert all(e.ids[-1] == 0 and e.labels[-1] == 0 for e in examples)  # EOS ends both sides
    batch = collate_seq2seq(examples, pad_id=1, start_id=1)
    assert (batch.labels == -100).any()  # rows of different target lengths: padding is ignored
    theirs = hf(input_ids=batch.inputs["input_ids"], attention_mask=batch.inputs["attention_mask"], labels=batch.labels)
    mine = lm_loss(ours(**batch.inputs).logits, batch.labels)
    assert abs(float(mine) - float(theirs.loss)) < ATOL


def _text_config(tmp_path: Path, base: Path, kind: str, train_file: Path, dev_file: Path, task=None, **train) -> Path:
    settings = {"steps": 40, "batch_size": 8, "lr": 3e-3, "warmup_steps": 4, "eval_interval": 20, "block_size": 48,
                "save_interval": 20, "log_interval": 5, "dtype": "fp32", "device": "cpu",
                "out_dir": str(tmp_path / "run"), **train}  # fmt: skip
    task = {"kind": kind, "train_file": str(train_file), "dev_file": str(dev_file), **(task or {})}
    lines = [f'[model]\ninit_from = "{base}"\n', "[task]"] + [f"{k} = {json.dumps(v)}" for k, v in task.items()]
    lines += ["", "[train]"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    path = tmp_path / "ft.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_seq2seq_learns(t5_base, tmp_path):
    train = _write_jsonl(tmp_path / "train.jsonl", [{"src": s, "tgt": t} for s, t in _pairs(160, 1)])
    dev = _write_jsonl(tmp_path / "dev.jsonl", [{"src": s, "tgt": t} for s, t in _pairs(24, 2)])
    task = {"text_field": "src", "label_field": "tgt", "dev_limit": 16, "max_new_tokens": 8}
    summary = finetune(load_finetune_config(_text_config(tmp_path, t5_base / "llmkit", "seq2seq", train, dev, task,
                                                         steps=60, eval_interval=30)))  # fmt: skip
    evals = _evals(tmp_path / "run")
    assert [e["step"] for e in evals] == [0, 30, 60]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0
    assert evals[-1]["rougeL"] > evals[0]["rougeL"] and summary["best"] == max(e["rougeL"] for e in evals)
    assert (tmp_path / "run" / "best" / checkpoint.WEIGHTS).is_file()


def test_seq2seq_translation_tsv_scores_bleu(t5_base, tmp_path):
    """A headerless TSV (as fra-eng's "English<TAB>French"), named by ``columns``; metric chrf picks the best."""
    rows = [(t, s) for s, t in _pairs(140, 3)]
    (tmp_path / "pairs.tsv").write_text("".join(f"{a}\t{b}\n" for a, b in rows))
    task = {"columns": ["target", "source"], "text_field": "source", "label_field": "target", "metric": "chrf",
            "dev_limit": 8, "max_new_tokens": 8, "max_dev_examples": 20}  # fmt: skip
    path = tmp_path / "pairs.tsv"
    cfg = _text_config(tmp_path, t5_base / "llmkit", "seq2seq", path, path, task, steps=30, eval_interval=30)
    summary = finetune(load_finetune_config(cfg))
    evals = _evals(tmp_path / "run")
    assert {"bleu", "chrf"} <= set(evals[-1]) and summary["best"] == max(e["chrf"] for e in evals)
    assert evals[-1]["chrf"] > evals[0]["chrf"]


def _labelled_text(tokenizer, encoded) -> list[str]:
    """The text of each run of consecutive labelled tokens (the positions the loss covers)."""
    runs, current = [], []
    for label in encoded.labels:
        if label == -100:
            if current:
                runs.append(tokenizer.decode(current, skip_special_tokens=False))
            current = []
        else:
            current.append(label)
    if current:
        runs.append(tokenizer.decode(current, skip_special_tokens=False))
    return runs


def test_instruct_mask_covers_exactly_the_responses(bpe):
    """Token by token: the labelled positions are the assistant turns (with the template's end marker,
    or EOS for the plain template), nothing of the system/user turns or generation prompts."""
    from llmkit.chat.template import ChatTemplate
    from llmkit.finetune.text2text import encode_instruct

    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the film was"},
                {"role": "assistant", "content": "great"}, {"role": "user", "content": "and the plot"},
                {"role": "assistant", "content": "dull and poor"}]  # fmt: skip
    chatml = encode_instruct(bpe, ChatTemplate(CHATML, {"eos_token": "<|endoftext|>"}), [messages], 200)[0]
    assert _labelled_text(bpe, chatml) == ["great<|endoftext|>\n", "dull and poor<|endoftext|>\n"]
    assert len(chatml.ids) == len(chatml.labels)
    plain = encode_instruct(bpe, ChatTemplate(None), [messages[1:3]], 200)[0]
    assert _labelled_text(bpe, plain) == [" great<|endoftext|>"]
    full = bpe.decode(plain.ids + [plain.labels[-1]], skip_special_tokens=False)
    assert full == "User: the film was\nAssistant: great<|endoftext|>"


def test_instruct_loss_equals_masked_cross_entropy(llama_base, bpe):
    """The loop's loss on our batch equals a hand-computed mean -log p over the response tokens of
    transformers' LlamaForCausalLM on the unshifted ids. The loop's batches run the LM head at the
    response positions only (collate_instruct): logits, loss and gradients equal the full head's."""
    from llmkit.chat.template import ChatTemplate
    from llmkit.finetune.data import collate
    from llmkit.finetune.text2text import collate_instruct, encode_instruct, read_conversations

    conversations = [[{"role": "user", "content": p}, {"role": "assistant", "content": r}] for p, r in _pairs(3, 7)]
    encoded = encode_instruct(bpe, ChatTemplate(CHATML, {"eos_token": "<|endoftext|>"}), conversations, 64)
    full, batch = collate(encoded, 1), collate_instruct(encoded, 1)
    assert batch.labels.shape == (int((full.labels != -100).sum()),)
    ours = checkpoint.load(llama_base / "llmkit").requires_grad_(True)
    losses, grads = [], []
    for b in (full, batch):
        out = ours(**b.inputs).logits
        loss = lm_loss(out, b.labels)
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in ours.parameters()])
        ours.zero_grad()
    read = full.labels != -100
    torch.testing.assert_close(ours(**batch.inputs).logits, ours(**full.inputs).logits[read], atol=1e-5, rtol=0)
    torch.testing.assert_close(losses[1], losses[0], atol=1e-6, rtol=0)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
    mine = float(losses[1])
    hf = transformers.LlamaForCausalLM.from_pretrained(llama_base / "hf").eval()
    total, count = 0.0, 0
    for e in encoded:
        ids = e.ids + [next(label for label in reversed(e.labels) if label != -100)]  # the full sequence
        with torch.no_grad():
            logp = torch.log_softmax(hf(input_ids=torch.tensor([ids])).logits[0].double(), -1)
        for t in range(len(ids) - 1):
            if e.labels[t] != -100:
                assert e.labels[t] == ids[t + 1]
                total -= float(logp[t, ids[t + 1]])
                count += 1
    assert count > 3 * 3 and abs(mine - total / count) < ATOL
    assert read_conversations  # the reader is exercised by the run tests


def test_instruct_learns_with_packing(llama_base, tmp_path, capsys):
    rows = [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]} for p, r in _pairs(160, 1)
    ]
    train = _write_jsonl(tmp_path / "train.jsonl", rows)
    dev = _write_jsonl(tmp_path / "dev.jsonl", [{"prompt": p, "response": r} for p, r in _pairs(24, 2)])
    task = {"text_field": "prompt", "label_field": "response", "pack": True}
    summary = finetune(
        load_finetune_config(_text_config(tmp_path, llama_base / "llmkit", "instruct", train, dev, task))
    )
    evals = _evals(tmp_path / "run")
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0
    assert summary["best"] == min(e["val_loss"] for e in evals)
    # conversations and windows are counted apart: the rows the run reports are windows
    out = capsys.readouterr().out
    packed = re.search(r"packed 160 conversations \(([\d,]+) tokens\) into ([\d,]+) windows", out)
    windows = int(packed.group(2).replace(",", ""))
    assert 0 < windows < 160
    epochs = summary["examples"] / windows
    assert f"{summary['examples']:,} windows (~{epochs * 160:,.0f} of 160 examples, {epochs:.2f} epochs)" in out
    from llmkit.chat.template import ChatTemplate

    assert ChatTemplate.from_dir(tmp_path / "run" / "best").source == CHATML  # the tuned model keeps its template


def _task_toml(*lines: str) -> str:
    return "\n".join(lines) + "\n"


def test_instruct_mixes_task_files(llama_base, tmp_path):
    """files = two task files with weights 3:1: the training set holds them 3:1, each rendered
    through its own prompt format, and the run learns."""
    from llmkit.finetune.text2text import read_task_mix

    data = _write_tsv(tmp_path / "s.tsv", _sentences(80, 3))
    sent = tmp_path / "sent.toml"
    sent.write_text(_task_toml(
        'name = "s"', 'kind = "classification"', 'metrics = ["accuracy"]', "pool_size = 60", "[prompt]",
        'instruction = "Rate it."', 'template = "Review: {input}"', 'answer_cue = "Sentiment:"', "[labels]",
        '0 = "negative"', '1 = "positive"', "[data]", f'path = "{data}"', 'format = "tsv"', 'input_field = "sentence"',
        'label_field = "label"',
    ))  # fmt: skip
    pairs = _write_jsonl(tmp_path / "p.jsonl", [{"i": s, "o": t} for s, t in _pairs(80, 4)])
    gen = tmp_path / "gen.toml"
    gen.write_text(_task_toml(
        'name = "g"', 'kind = "generation"', 'metrics = ["rouge"]', "pool_size = 60", "[prompt]",
        'template = "Text: {input}"', 'answer_cue = "Gist:"', "[data]", f'path = "{pairs}"', 'format = "jsonl"',
        'input_field = "i"', 'label_field = "o"',
    ))  # fmt: skip
    train, dev = read_task_mix([str(sent), str(gen)], [3.0, 1.0], 80, 5, seed=0)
    users = [c[0]["content"] for c in train]
    assert sum(u.startswith("Rate it.\n\nReview: ") for u in users) == 60
    assert sum(u.startswith("Text: ") and u.endswith("\nGist:") for u in users) == 20
    assert {c[1]["content"] for c in train if c[0]["content"].startswith("Rate")} == {"negative", "positive"}
    # dev: 5 held out of each pool, never trained on; the evaluated items (the last 20 of each file) are unused
    assert len(dev) == 10 and not {c[0]["content"] for c in dev} & set(users)
    from llmkit.evaluate.readers import load_data
    from llmkit.evaluate.tasks import load_task

    evaluated = {f"Text: {item.input}\nGist:" for item in load_data(load_task(gen)).items}
    assert len(evaluated) == 20
    assert not evaluated & (set(users) | {c[0]["content"] for c in dev})
    task = {"files": [str(sent), str(gen)], "weights": [3.0, 1.0], "max_train_examples": 80, "dev_limit": 5}
    cfg = _text_config(tmp_path, llama_base / "llmkit", "instruct", "", "", task, steps=30, eval_interval=30)
    finetune(load_finetune_config(cfg))
    evals = _evals(tmp_path / "run")
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5


def test_instruct_bad_input_is_one_line(llama_base, tmp_path):
    no_reply = _write_jsonl(tmp_path / "x.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    cfg = _text_config(tmp_path, llama_base / "llmkit", "instruct", no_reply, no_reply)
    with pytest.raises(LlmkitError, match=r"x.jsonl:1: the conversation has no assistant turn"):
        finetune(load_finetune_config(cfg))
    bad = tmp_path / "bad.toml"
    bad.write_text(
        _task_toml(
            'name = "b"',
            'kind = "generation"',
            'metrics = ["rouge"]',
            "[prompt]",
            'template = "Review:"',
            "[data]",
            f'path = "{no_reply}"',
            'format = "jsonl"',
        )
    )
    cfg = _text_config(tmp_path, llama_base / "llmkit", "instruct", "", "", {"files": [str(bad)]})
    with pytest.raises(LlmkitError, match=r"has no \{input\} placeholder"):
        finetune(load_finetune_config(cfg))
    run = subprocess.run([sys.executable, "-m", "llmkit", "finetune", "--config", str(cfg), "--task.kind", "seq2seq",
                          "--task.files", ""], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 2 and "needs a encoder_decoder model" in run.stderr and "Traceback" not in run.stderr
