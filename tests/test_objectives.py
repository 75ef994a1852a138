"""Pretraining objectives against hand-checked examples, their statistics, and real tiny models."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmkit.config import ModelConfig, TrainConfig
from llmkit.data.builtin import python_docs_texts
from llmkit.data.tokenizer_train import train_tokenizer
from llmkit.errors import LlmkitError
from llmkit.models import build_model
from llmkit.objectives import (
    IGNORE_INDEX,
    Batch,
    CausalLM,
    MaskedLM,
    SpanCorruption,
    causal_lm,
    lm_loss,
    make_objective,
    masked_lm,
    random_spans_noise_mask,
    span_corruption,
    span_corruption_from_mask,
    span_corruption_lengths,
)

# ---- causal LM ------------------------------------------------------------------------------


def test_causal_lm_shifts_targets_by_one():
    tokens = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]], dtype=torch.int32)  # streams are stored narrow
    batch = causal_lm(tokens)
    assert list(batch.inputs) == ["input_ids"]  # packed windows: no padding, so no attention mask
    assert batch.inputs["input_ids"].tolist() == [[5, 6, 7], [9, 10, 11]]
    assert batch.labels.tolist() == [[6, 7, 8], [10, 11, 12]]
    assert batch.labels.dtype == torch.long
    assert batch.n_target_tokens == 6
    moved = batch.to("meta")
    assert moved.labels.device.type == "meta" and moved.inputs["input_ids"].device.type == "meta"


# ---- masked LM ------------------------------------------------------------------------------
PAD, CLS, SEP, MASK = 0, 1, 2, 3


def test_masked_lm_small_example_position_by_position():
    tokens = torch.tensor(
        [
            [CLS, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, SEP, PAD, PAD, PAD],
            [CLS, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, SEP, PAD, PAD],
        ]
    )
    g = torch.Generator().manual_seed(5)
    batch = masked_lm(tokens, vocab_size=20, mask_id=MASK, special_ids=[PAD, CLS, SEP], probability=0.3, generator=g)
    # Row 0 has 15 non-special tokens: round(0.3 * 15) = round(4.5) = 4 (halves round to even) selected,
    # at positions 1, 5, 8, 12: 5 -> [MASK], 9 kept, 12 -> random 18, 16 -> [MASK].
    # Row 1 has 16: round(4.8) = 5 selected, at 1, 2, 5, 10, 12: 19 -> [MASK], 18 -> [MASK], 15 kept,
    # 10 -> random 18, 8 -> [MASK]. [CLS], [SEP] and [PAD] are never selected.
    assert batch.inputs["input_ids"].tolist() == [
        [CLS, MASK, 6, 7, 8, 9, 10, 11, 18, 13, 14, 15, MASK, 17, 18, 19, SEP, PAD, PAD, PAD],
        [CLS, MASK, MASK, 17, 16, 15, 14, 13, 12, 11, 18, 9, MASK, 7, 6, 5, 4, SEP, PAD, PAD],
    ]
    x = IGNORE_INDEX
    assert batch.labels.tolist() == [
        [x, 5, x, x, x, 9, x, x, 12, x, x, x, 16, x, x, x, x, x, x, x],
        [x, 19, 18, x, x, 15, x, x, x, x, 10, x, 8, x, x, x, x, x, x, x],
    ]
    assert batch.n_target_tokens == 9
    assert list(batch.inputs) == ["input_ids"]
    # the same generator state redraws the same batch (resumed runs); pad_id adds the attention mask
    again = masked_lm(
        tokens, vocab_size=20, mask_id=MASK, special_ids=[PAD, CLS, SEP], probability=0.3,
        generator=torch.Generator().manual_seed(5), pad_id=PAD,
    )  # fmt: skip
    assert torch.equal(again.inputs["input_ids"], batch.inputs["input_ids"])
    assert again.inputs["attention_mask"].tolist()[1] == [1] * 18 + [0, 0]


def test_masked_lm_statistics_over_200k_tokens():
    vocab, special = 1000, [PAD, CLS, SEP, MASK, 4]
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(5, vocab, (1000, 200), generator=g)
    sprinkle = torch.rand(tokens.shape, generator=g) < 0.05  # 5% special tokens anywhere in the rows
    tokens[sprinkle] = torch.tensor(special)[torch.randint(0, 5, (int(sprinkle.sum()),), generator=g)]
    batch = masked_lm(tokens, vocab_size=vocab, mask_id=MASK, special_ids=special, generator=g)
    ids, labels = batch.inputs["input_ids"], batch.labels
    selected = labels != IGNORE_INDEX
    is_special = torch.isin(tokens, torch.tensor(special))

    assert not (selected & is_special).any()  # special tokens are never selected
    assert abs(selected.sum() / (~is_special).sum() - 0.15) < 0.005
    # labels are the originals exactly at the selected positions; nothing else changes
    assert torch.equal(labels[selected], tokens[selected])
    assert torch.equal(ids[~selected], tokens[~selected])
    n = selected.sum()
    masked = selected & (ids == MASK)
    replaced = selected & (ids != MASK) & (ids != tokens)
    kept = selected & (ids == tokens)  # includes the ~0.01% of random draws that hit the original
    assert abs(masked.sum() / n - 0.8) < 0.01
    assert abs(replaced.sum() / n - 0.1) < 0.01
    assert abs(kept.sum() / n - 0.1) < 0.01
    # random replacements are never special, and cover the non-special vocabulary
    assert not torch.isin(ids[replaced], torch.tensor(special)).any()
    assert ids[replaced].unique().numel() > 900


# ---- span corruption ------------------------------------------------------------------------
EOS, SENTINELS = 1, [99, 98, 97, 96]  # T5 numbers sentinels downward: <extra_id_0> has the highest id
WORDS = "Thank you for inviting me to your party last week .".split()
IDS = {word: 10 + i for i, word in enumerate(WORDS)} | {"<X>": 99, "<Y>": 98, "<Z>": 97, "</s>": EOS, "<pad>": PAD}


def _ids(text: str) -> list[int]:
    return [IDS[word] for word in text.split()]


def test_span_corruption_from_mask_papers_example():
    # Raffel et al. 2020, Figure 2: "for inviting" and "last" are dropped. A second, shorter row with
    # a T5-shaped mask (ends in noise) shows the padding.
    rows = [torch.tensor(_ids("Thank you for inviting me to your party last week .")), torch.tensor(_ids("me to your"))]
    masks = [torch.tensor([0, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0]), torch.tensor([0, 1, 1])]
    batch = span_corruption_from_mask(rows, masks, sentinel_ids=SENTINELS, eos_id=EOS, pad_id=PAD, decoder_start_id=0)
    assert batch.inputs["input_ids"].tolist() == [
        _ids("Thank you <X> me to your party <Y> week . </s>"),
        _ids("me <X> </s> <pad> <pad> <pad> <pad> <pad> <pad> <pad> <pad>"),
    ]
    assert batch.inputs["attention_mask"].tolist() == [[1] * 11, [1] * 3 + [0] * 8]
    # the paper's targets end "<Z>" (T5's code adds it for rows ending in non-noise); ours end with eos
    x = IGNORE_INDEX
    assert batch.labels.tolist() == [_ids("<X> for inviting <Y> last </s>"), _ids("<X> to your </s>") + [x, x]]
    assert batch.inputs["decoder_input_ids"].tolist() == [
        _ids("<pad> <X> for inviting <Y> last"),  # decoder_start_id = pad = 0, as T5
        _ids("<pad> <X> to your <pad> <pad>"),
    ]
    assert batch.inputs["decoder_attention_mask"].tolist() == [[1] * 6, [1] * 4 + [0] * 2]
    assert batch.n_target_tokens == 10


def test_span_corruption_lengths_match_t5():
    # T5's random_spans_helper docstring (t5/data/preprocessors.py): 512 inputs, 15% noise, spans of 3
    # -> 568 raw tokens, 114 targets. By hand: 568 * 0.15 = 85.2 -> 85 noise tokens in round(85 / 3) = 28
    # spans; inputs 568 - 85 + 28 + 1 = 512, targets 85 + 28 + 1 = 114; and 569 tokens would give 513.
    assert span_corruption_lengths(512, 0.15, 3.0) == (568, 114)
    # A window of the returned size corrupts to exactly the requested sizes, at every length
    g = torch.Generator().manual_seed(0)
    for inputs_length in range(2, 300):
        tokens_length, targets_length = span_corruption_lengths(inputs_length, 0.15, 3.0)
        batch = span_corruption(
            torch.arange(tokens_length)[None] + 200, sentinel_ids=list(range(199, 99, -1)), eos_id=EOS,
            pad_id=PAD, decoder_start_id=0, generator=g,
        )  # fmt: skip
        assert batch.inputs["input_ids"].shape[1] == inputs_length, inputs_length
        assert batch.labels.shape[1] == targets_length, inputs_length
    with pytest.raises(LlmkitError, match="block_size"):
        span_corruption_lengths(1, 0.15, 3.0)


def test_random_spans_noise_mask_statistics():
    g = torch.Generator().manual_seed(0)
    masks = torch.stack([random_spans_noise_mask(568, 0.15, 3.0, g) for _ in range(500)]).int()
    starts = masks.diff(dim=1, prepend=torch.zeros(500, 1, dtype=torch.int32)) == 1
    assert (masks.sum(1) == 85).all()  # round(568 * 0.15)
    assert (starts.sum(1) == 28).all()  # round(85 / 3)
    assert (masks[:, 0] == 0).all() and (masks[:, -1] == 1).all()  # T5: non-noise first, noise last
    assert abs(masks.float().mean() - 0.15) < 0.002
    assert abs(masks.sum() / starts.sum() - 3.0) < 0.05
    # span lengths vary (a random segmentation, not fixed 3s)
    edges = torch.cat([torch.zeros(500, 1), masks, torch.zeros(500, 1)], dim=1).flatten().diff()
    lengths = (edges == -1).nonzero() - (edges == 1).nonzero()  # span ends minus span starts
    assert lengths.min() == 1 and lengths.max() >= 10
    # degenerate rows: one token gets no noise; two tokens get one noise token last
    assert random_spans_noise_mask(1, 0.15, 3.0, g).tolist() == [False]
    assert random_spans_noise_mask(2, 0.15, 3.0, g).tolist() == [False, True]


def test_span_corruption_reconstructs_rows_with_sentinels_in_order():
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(5, 900, (64, 100), generator=g)
    sentinels = list(range(999, 899, -1))
    batch = span_corruption(tokens, sentinel_ids=sentinels, eos_id=EOS, pad_id=PAD, decoder_start_id=0, generator=g)
    noise = 0
    for row, inputs, labels in zip(
        tokens.tolist(), batch.inputs["input_ids"].tolist(), batch.labels.tolist(), strict=True
    ):
        assert inputs[-1] == EOS and labels[-1] == EOS  # equal rows need no padding
        used_in, used_out = [t for t in inputs if t in sentinels], [t for t in labels if t in sentinels]
        assert used_in == used_out == sentinels[: len(used_in)]  # <extra_id_0>, <extra_id_1>, ... in order
        # each sentinel's span is what follows it in the labels, up to the next sentinel (or eos)
        spans, current = {}, None
        for t in labels[:-1]:
            if t in sentinels:
                current = spans.setdefault(t, [])
            else:
                current.append(t)
        rebuilt = [t for s in inputs[:-1] for t in (spans[s] if s in sentinels else [s])]
        assert rebuilt == row
        noise += sum(map(len, spans.values()))
    assert noise == 64 * 15  # round(100 * 0.15) per row
    assert torch.equal(batch.inputs["decoder_input_ids"][:, 1:], batch.labels[:, :-1])
    with pytest.raises(LlmkitError, match="sentinel"):
        span_corruption(tokens, sentinel_ids=sentinels[:2], eos_id=EOS, pad_id=PAD, decoder_start_id=0, generator=g)


def _t5_noise_span_to_unique_sentinel(tokens: list[int], noise: list[bool], first_sentinel: int) -> list[int]:
    """T5's preprocessors.noise_span_to_unique_sentinel, one token at a time: a span's first token becomes
    sentinel_id + 1 - (spans so far), the rest of the span is dropped."""
    out, spans, previous = [], 0, False
    for token, is_noise in zip(tokens, noise, strict=True):
        if is_noise and not previous:
            out.append(first_sentinel - spans)
            spans += 1
        elif not is_noise:
            out.append(token)
        previous = is_noise
    return out


def test_span_corruption_equals_t5s_reference_on_drawn_masks():
    # T5 builds inputs from the noise mask and targets from its complement, each + eos
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(5, 900, (50, 100), generator=g)
    masks = [random_spans_noise_mask(100, 0.15, 3.0, g) for _ in range(50)]
    sentinels = list(range(999, 899, -1))
    batch = span_corruption_from_mask(tokens, masks, sentinel_ids=sentinels, eos_id=EOS, pad_id=PAD, decoder_start_id=0)
    for row, mask, inputs, labels in zip(tokens.tolist(), masks, batch.inputs["input_ids"], batch.labels, strict=True):
        noise = mask.tolist()
        assert inputs.tolist() == _t5_noise_span_to_unique_sentinel(row, noise, 999) + [EOS]
        assert labels.tolist() == _t5_noise_span_to_unique_sentinel(row, [not m for m in noise], 999) + [EOS]


# ---- loss -----------------------------------------------------------------------------------


def test_lm_loss_matches_torch_and_hand():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    labels = torch.tensor([[1, IGNORE_INDEX, 3, 6, 0], [IGNORE_INDEX, IGNORE_INDEX, 2, 2, 5]])
    expected = F.cross_entropy(logits.view(-1, 7), labels.view(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(lm_loss(logits, labels), expected)
    # bf16 logits: the loss is computed and returned in fp32
    assert lm_loss(logits.bfloat16(), labels).dtype == torch.float32
    # by hand: p(1 | [0, ln 3, 0]) = 3/5 and p(0 | [ln 2, 0, 0]) = 2/4
    two = torch.tensor([[[0.0, math.log(3), 0.0], [math.log(2), 0.0, 0.0]]])
    by_hand = -(math.log(3 / 5) + math.log(1 / 2)) / 2
    assert lm_loss(two, torch.tensor([[1, 0]])).item() == pytest.approx(by_hand, abs=1e-6)
    assert lm_loss(two, torch.tensor([[1, IGNORE_INDEX]])).item() == pytest.approx(-math.log(3 / 5), abs=1e-6)
    assert lm_loss(two, torch.full((1, 2), IGNORE_INDEX)).item() == 0.0  # no targets: 0, not nan


# ---- make_objective with real tokenizers and tiny models ------------------------------------
PRESET = {"bpe": "tiny-gpt-1m", "wordpiece": "tiny-bert-1m", "unigram": "tiny-t5-1m"}
TOKENIZER_VOCAB = 600


@pytest.fixture(scope="module")
def tokenizers():
    # a few hundred short texts: the paragraphs of the first Python docs topics
    paragraphs = [p for text in list(python_docs_texts())[:30] for p in text.split("\n\n") if len(p) > 40]
    texts = paragraphs[:400]
    return {kind: train_tokenizer(texts, kind, TOKENIZER_VOCAB) for kind in PRESET}, texts


def _model_cfg(kind, tok, **overrides):
    ids = dict(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return ModelConfig.from_name(PRESET[kind], vocab_size=tok.vocab_size, max_seq_len=64, **ids, **overrides)


def test_make_objective_picks_per_family(tokenizers):
    toks, _ = tokenizers
    auto = TrainConfig()
    assert isinstance(make_objective(_model_cfg("bpe", toks["bpe"]), auto, None), CausalLM)
    mlm = make_objective(
        _model_cfg("wordpiece", toks["wordpiece"]), TrainConfig(mlm_probability=0.2), toks["wordpiece"]
    )
    wp = toks["wordpiece"]
    assert isinstance(mlm, MaskedLM) and mlm.probability == 0.2 and mlm.mask_id == wp.token_to_id("[MASK]")
    assert set(mlm.special_ids) == {wp.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")}
    span = make_objective(
        _model_cfg("unigram", toks["unigram"]), TrainConfig(objective="span_corruption"), toks["unigram"]
    )
    assert isinstance(span, SpanCorruption)
    assert span.sentinel_ids[0] == TOKENIZER_VOCAB - 1 and len(span.sentinel_ids) == 100  # <extra_id_0> on top
    assert (span.eos_id, span.pad_id, span.decoder_start_id) == (1, 0, 0)
    # window lengths per objective for 32 input tokens
    assert CausalLM().window_length(32) == 33
    assert mlm.window_length(32) == 32
    assert span.window_length(512) == 568
    with pytest.raises(LlmkitError, match="sentinel"):
        span.window_length(5000)  # 5000 tokens make more than 100 spans


@pytest.mark.parametrize(
    "kind,objective,match",
    [
        ("bpe", "masked_lm", "objective masked_lm trains encoder models.*causal_lm"),
        ("bpe", "span_corruption", "objective span_corruption trains encoder_decoder models"),
        ("wordpiece", "causal_lm", "objective causal_lm trains decoder models.*masked_lm"),
        ("unigram", "masked_lm", "trains encoder models, but the model's family is encoder_decoder"),
    ],
)
def test_make_objective_rejects_family_mismatch(tokenizers, kind, objective, match):
    tok = tokenizers[0][kind]
    with pytest.raises(LlmkitError, match=match):
        make_objective(_model_cfg(kind, tok), TrainConfig(objective=objective), tok)


def test_make_objective_names_the_tokenizer_to_train(tokenizers):
    toks, _ = tokenizers
    bert = _model_cfg("wordpiece", toks["wordpiece"])
    t5 = _model_cfg("unigram", toks["unigram"])
    with pytest.raises(LlmkitError, match=r"\[MASK\].*--kind wordpiece"):
        make_objective(bert, TrainConfig(), toks["bpe"])
    with pytest.raises(LlmkitError, match="--kind wordpiece"):
        make_objective(bert, TrainConfig(), None)
    with pytest.raises(LlmkitError, match="sentinel.*--kind unigram"):
        make_objective(t5, TrainConfig(), toks["bpe"])
    with pytest.raises(LlmkitError, match="sentinel.*--kind unigram"):
        make_objective(t5, TrainConfig(), toks["wordpiece"])
    with pytest.raises(LlmkitError, match="--kind unigram"):
        make_objective(t5, TrainConfig(), None)
    with pytest.raises(LlmkitError, match="encoder_head"):
        make_objective(bert.replace(encoder_head="classifier"), TrainConfig(), toks["wordpiece"])
    with pytest.raises(LlmkitError, match="vocab_size 600"):
        make_objective(bert.replace(vocab_size=500), TrainConfig(), toks["wordpiece"])


@pytest.mark.parametrize("kind", list(PRESET))
def test_batches_train_real_tiny_models(tokenizers, kind):
    toks, texts = tokenizers
    tok = toks[kind]
    cfg = _model_cfg(kind, tok, n_layer=2)
    objective = make_objective(cfg, TrainConfig(), tok)
    window = objective.window_length(32)
    stream = torch.tensor([i for ids in tok.encode_batch(texts[:100]) for i in ids])
    tokens = stream[: 4 * window].view(4, window).to(torch.int32)
    g = torch.Generator().manual_seed(0)
    batch = objective(tokens, g)
    assert batch.inputs["input_ids"].shape == (4, 32)
    again = objective(tokens, torch.Generator().manual_seed(0))  # a resumed run redraws the same batch
    assert torch.equal(again.labels, batch.labels)

    torch.manual_seed(0)
    model = build_model(cfg)
    loss = lm_loss(model(**batch.inputs).logits, batch.labels)
    # at init the logits are near zero, so the loss is near the uniform guess's log(vocab)
    assert math.isfinite(loss.item()) and abs(loss.item() - math.log(tok.vocab_size)) < 0.3
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_batch_is_a_plain_container():
    batch = Batch({"input_ids": torch.zeros(2, 3, dtype=torch.long)}, torch.tensor([[1, IGNORE_INDEX, 2]]))
    assert batch.n_target_tokens == 2
    assert batch.to("cpu").inputs["input_ids"].shape == (2, 3)
