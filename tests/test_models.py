"""The transformer core on its own: configs, presets, positions, masks, fast vs reference attention."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from llmkit.config import PRESETS, ModelConfig
from llmkit.errors import LlmkitError
from llmkit.models import build_model
from llmkit.models.layers import RelativePositionBias, sinusoidal_table
from llmkit.summary import summarize

TINY = dict(vocab_size=97, d_model=32, n_layer=2, n_head=4, max_seq_len=64)
FAMILIES = {
    "gpt": ModelConfig.from_name("tiny-gpt-1m", **TINY),
    "llama-gqa": ModelConfig.from_name("tiny-llama-10m", **TINY, n_kv_head=2, d_ff=48),
    "bert": ModelConfig.from_name("tiny-bert-1m", **TINY),
    # a decoder one layer deeper than the encoder, so per-stack counts cannot pass for each other
    "t5": ModelConfig.from_name("tiny-t5-1m", **TINY, head_dim=8, d_ff=48, n_decoder_layer=3),
    "sinusoidal": ModelConfig.from_name("tiny-gpt-1m", **TINY, pos="sinusoidal"),
}


def _forward(model, ids, mask=None, **kw):
    if model.config.family == "encoder_decoder":
        return model(ids, attention_mask=mask, decoder_input_ids=ids[:, :5], **kw)
    return model(ids, attention_mask=mask, **kw)


def _padded_batch(family: str, length: int, row: int, real: int):
    """A seeded model of ``family`` (eval mode) and two rows of ``length`` random ids, row ``row`` padded
    on the right after its first ``real`` tokens: (model, ids, attention mask)."""
    torch.manual_seed(0)
    model = build_model(FAMILIES[family]).eval()
    ids = torch.randint(3, 97, (2, length))
    mask = torch.ones_like(ids)
    mask[row, real:] = 0
    return model, ids, mask


# Published parameter counts (model cards / papers); ours must be within 1%.
@pytest.mark.parametrize(
    "name,published",
    [
        ("gpt2", 124.44e6),
        ("gpt2-medium", 354.8e6),
        ("bert-base-uncased", 110e6),
        ("t5-small", 60.5e6),
        ("flan-t5-small", 77.0e6),
        ("flan-t5-base", 247.6e6),
        ("smollm2-135m", 134.5e6),
    ],
)
def test_preset_parameter_counts_match_published(name, published):
    total = summarize(build_model(ModelConfig.from_name(name), "meta")).total
    assert abs(total - published) / published < 0.01, total


@pytest.mark.parametrize(
    "name,target",
    [
        ("tiny-gpt-1m", 1e6),
        ("tiny-gpt-10m", 10e6),
        ("tiny-gpt-50m", 50e6),
        ("tiny-bert-10m", 10e6),
        ("tiny-t5-50m", 50e6),
    ],
)
def test_tiny_presets_are_about_their_size(name, target):
    total = summarize(build_model(ModelConfig.from_name(name), "meta")).total
    assert 0.6 * target < total < 1.4 * target, total


def test_every_preset_builds():
    for name in PRESETS:
        assert summarize(build_model(ModelConfig.from_name(name), "meta")).total > 0


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(d_model=100, n_head=3), "d_model=100 not divisible by n_head=3"),
        (dict(n_head=4, n_kv_head=3), "n_head=4 not divisible by n_kv_head=3"),
        (dict(family="rnn"), "family='rnn' is not valid"),
        (dict(pos="alibi"), "pos='alibi' is not valid"),
        (dict(vocab_size=0), "vocab_size=0 must be >= 1"),
    ],
)
def test_config_errors_name_the_field_and_fix(overrides, message):
    with pytest.raises(LlmkitError) as err:
        ModelConfig(**overrides)
    assert message in str(err.value) and "; " in str(err.value)


def test_unknown_preset_and_field():
    with pytest.raises(LlmkitError, match="unknown model preset 'gpt5'"):
        ModelConfig.from_name("gpt5")
    with pytest.raises(LlmkitError, match="unknown model config field"):
        ModelConfig.from_name("gpt2", n_layers=3)


def test_sinusoidal_table_closed_form():
    table = sinusoidal_table(50, 16)
    for pos, i in [(0, 0), (3, 2), (17, 5), (49, 7)]:
        angle = pos / 10000 ** (2 * i / 16)
        assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
        assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_t5_relative_buckets_by_hand():
    cfg = ModelConfig.from_name("t5-small")  # 32 buckets, max distance 128
    enc = RelativePositionBias(cfg, bidirectional=True)
    dec = RelativePositionBias(cfg, bidirectional=False)
    rel = torch.tensor([-200, -20, -8, -1, 0, 1, 7, 8, 20, 200])
    # bidirectional: 16 buckets per sign, 8 exact; beyond: 8 + floor(log(d/8)/log(128/8) * 8)
    expected_enc = [15, 10, 8, 1, 0, 17, 23, 24, 26, 31]
    # causal: future maps to 0; past: 16 exact, then 16 + floor(log(d/16)/log(128/16) * 16)
    expected_dec = [31, 17, 8, 1, 0, 0, 0, 0, 0, 0]
    assert enc.bucket(rel).tolist() == expected_enc
    assert dec.bucket(rel).tolist() == expected_dec


@pytest.mark.parametrize("family", FAMILIES)
def test_padded_rows_equal_unpadded(family):
    """A row padded on the right gives the same outputs on its real tokens as the row alone."""
    model, ids, mask = _padded_batch(family, length=12, row=1, real=7)
    with torch.no_grad():
        batch = _forward(model, ids, mask).logits
        alone = _forward(model, ids[1:, :7], mask[1:, :7]).logits
    if model.config.family == "encoder_decoder":
        torch.testing.assert_close(batch[1], alone[0], atol=1e-5, rtol=0)
    else:
        torch.testing.assert_close(batch[1, :7], alone[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_attention_equals_reference_path(family):
    """SDPA (default) and the explicit softmax path that returns weights agree; weights are distributions."""
    model, ids, mask = _padded_batch(family, length=10, row=0, real=6)
    with torch.no_grad():
        fast = _forward(model, ids, mask)
        ref = _forward(model, ids, mask, output_attentions=True)
    torch.testing.assert_close(fast.logits, ref.logits, atol=1e-5, rtol=0)
    assert fast.attentions is None
    cfg = model.config
    if family == "t5":  # self-attention maps are the decoder's; the encoder's and the cross-attention's apart
        assert len(ref.attentions) == cfg.n_decoder_layer
        assert len(ref.encoder_attentions) == cfg.n_layer and len(ref.cross_attentions) == cfg.n_decoder_layer
    else:
        assert len(ref.attentions) == cfg.n_layer
    for weights in ref.attentions:
        assert weights.shape[:2] == (2, model.config.n_head)
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]), atol=1e-5, rtol=0)
    if model.config.family == "decoder":  # causal: nothing above the diagonal
        assert torch.all(ref.attentions[0].triu(1) == 0)
        assert torch.all(ref.attentions[0][0, :, :6, 6:] == 0)  # padding keys get no weight


def test_gqa_equals_repeated_heads():
    """Grouped-query attention equals full multi-head attention with each K/V head repeated."""
    torch.manual_seed(0)
    gqa_cfg = FAMILIES["llama-gqa"]
    gqa = build_model(gqa_cfg).eval()
    mha = build_model(gqa_cfg.replace(n_kv_head=gqa_cfg.n_head)).eval()
    state = gqa.state_dict()
    groups = gqa_cfg.n_head // gqa_cfg.n_kv_head
    for name, tensor in state.items():
        if name.endswith(("attn.k.weight", "attn.v.weight")):
            heads = tensor.view(gqa_cfg.n_kv_head, gqa_cfg.head_dim, -1)
            state[name] = heads.repeat_interleave(groups, dim=0).reshape(-1, tensor.shape[-1])
    mha.load_state_dict(state)
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(gqa(ids).logits, mha(ids).logits, atol=1e-5, rtol=0)


def test_context_window_is_enforced_for_absolute_positions():
    model = build_model(FAMILIES["gpt"])
    with pytest.raises(LlmkitError, match="exceeds the context window of 64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_encoder_heads():
    torch.manual_seed(0)
    ids = torch.randint(0, 97, (3, 8))
    base = build_model(FAMILIES["bert"].replace(encoder_head="none", pooler=True)).eval()
    out = base(ids)
    assert out.logits is None and out.pooled.shape == (3, 32)
    torch.testing.assert_close(out.pooled, torch.tanh(base.pooler.dense(out.last_hidden_state[:, 0])))
    clf = build_model(FAMILIES["bert"].replace(encoder_head="classifier", num_labels=5)).eval()
    assert clf(ids).logits.shape == (3, 5)
    mlm = build_model(FAMILIES["bert"]).eval()
    assert mlm(ids).logits.shape == (3, 8, 97)
    assert mlm.mlm_head.decoder.weight is mlm.embed.tokens.weight


def test_t5_output_scaling_rule():
    torch.manual_seed(0)
    cfg = FAMILIES["t5"].replace(tie_embeddings=True, scale_decoder_output=True)
    model = build_model(cfg).eval()
    ids = torch.randint(0, 97, (1, 6))
    out = model(ids, decoder_input_ids=ids[:, :3])
    expected = (out.last_hidden_state * cfg.d_model**-0.5) @ model.embed.tokens.weight.T
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["gpt", "t5"])
def test_activation_checkpointing_gives_the_same_gradients(family):
    from llmkit.models import set_activation_checkpointing

    torch.manual_seed(0)
    model = build_model(FAMILIES[family]).train()
    ids = torch.randint(3, 97, (2, 10))
    grads = []
    for enabled in (False, True):
        set_activation_checkpointing(model, enabled)
        model.zero_grad()
        _forward(model, ids).logits.float().pow(2).mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("group_rows", [None, 8, 2])
def test_packed_training_equals_padded(family, group_rows, monkeypatch):
    """Training on a padded batch runs the blocks on the real tokens alone (models/packing.py): the
    real positions' outputs and every gradient equal the padded computation's (dropout off), with
    right and left padding, in one attention group or several."""
    from llmkit.models.packing import Packing

    torch.manual_seed(0)
    model = build_model(FAMILIES[family].replace(dropout=0.0)).train()
    ids = torch.randint(3, 97, (4, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    mask[3, :9] = 0  # left padding
    real = mask.bool() if family != "t5" else torch.ones(4, 5, dtype=torch.bool)  # t5: decoder positions
    packings, results = [], []
    real_of = Packing.of
    for packed in (True, False):
        if packed:
            monkeypatch.setattr(
                Packing, "of", staticmethod(lambda m: packings.append(real_of(m, group_rows)) or packings[-1])
            )
        else:
            monkeypatch.setattr(Packing, "of", staticmethod(lambda m: None))
        model.zero_grad()
        logits = _forward(model, ids, mask).logits[real]
        logits.float().pow(2).mean().backward()
        results.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
    assert packings[0] is not None and len(packings[0].index) == int(mask.sum())
    assert len(packings[0].groups) == (2 if group_rows == 2 else 1)  # 12, 9, 7, 3 tokens: one group by cost
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=0)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_group_sizes_is_the_cheapest_split():
    """group_sizes against brute force over every split of rows sorted longest first: its split costs
    the least, similar lengths share a group and very different ones do not."""
    import itertools
    import random

    from llmkit.models.packing import group_sizes

    def cost(lengths, sizes, group_cost):
        starts = list(itertools.accumulate([0, *sizes]))[:-1]
        return sum(group_cost + n * lengths[s] ** 2 for s, n in zip(starts, sizes, strict=True))

    rng = random.Random(0)
    for _ in range(60):
        lengths = sorted((rng.randint(1, 40) for _ in range(rng.randint(1, 9))), reverse=True)
        group_cost = rng.choice([0, 50, 500, 4096])
        sizes = group_sizes(lengths, group_cost)
        assert sum(sizes) == len(lengths) and min(sizes) >= 1
        cheapest = min(
            cost(lengths, [b - a for a, b in itertools.pairwise([0, *cuts, len(lengths)])], group_cost)
            for r in range(len(lengths))
            for cuts in itertools.combinations(range(1, len(lengths)), r)
        )
        assert cost(lengths, sizes, group_cost) == cheapest
    assert group_sizes([14] * 20 + [13] * 12) == [32]  # a length-grouped batch: one group
    assert group_sizes([60, 58] + [5] * 30) == [2, 30]  # two long rows apart from the short ones
    assert group_sizes([9, 9, 4], group_cost=0) == [2, 1]  # free groups: no padding at all


def test_packing_skips_rows_with_holes_and_full_batches():
    from llmkit.models.packing import Packing

    assert Packing.of(torch.ones(2, 5)) is None
    assert Packing.of(torch.tensor([[1, 0, 1, 0], [1, 1, 1, 1]])) is None
    packing = Packing.of(torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [0, 1, 1, 1]]), group_rows=1)
    assert [g.shape for g in packing.groups] == [(1, 3), (1, 2)]  # longest first; the empty row has none
    x = torch.arange(12.0).view(3, 4, 1)
    assert packing.pack(x).flatten().tolist() == [0, 1, 9, 10, 11]
    groups = packing.to_groups(packing.pack(x)[:, None])  # (rows, 1, length, 1)
    assert [g.flatten().tolist() for g in groups] == [[9, 10, 11], [0, 1]]
    assert packing.from_groups(groups).flatten().tolist() == [0, 1, 9, 10, 11]


def test_packing_leaves_evaluation_padded():
    """Eval mode keeps the padded layout, so padding positions' outputs stay what transformers gives."""
    from llmkit.models.packing import Packing

    model, ids, mask = _padded_batch("bert", length=12, row=1, real=7)
    with torch.no_grad():
        out = _forward(model, ids, mask).last_hidden_state
        model.train()
        model.apply(lambda m: setattr(m, "p", 0.0) if isinstance(m, torch.nn.Dropout) else None)
        trained = _forward(model, ids, mask).last_hidden_state
    assert out[1, 7:].abs().sum() > 0  # padding positions computed as transformers does
    assert trained[1, 7:].abs().sum() == 0  # training: only the real tokens ran
    torch.testing.assert_close(out[mask.bool()], trained[mask.bool()], atol=1e-5, rtol=0)
    packing = Packing.of(mask)
    x = torch.randn(2, 12, 3)
    torch.testing.assert_close(packing.unpack(packing.pack(x))[mask.bool()], x[mask.bool()])


# BERT pools position 0, which left padding makes padding: the fallback test covers that case
@pytest.mark.parametrize(
    "family,padding",
    [("bert", "right"), ("bert", "none")] + [(f, p) for f in ("gpt", "llama-gqa") for p in ("right", "left", "none")],
)
@pytest.mark.parametrize("checkpointing", [False, True])
def test_sequence_classifier_training_computes_only_the_read_token(family, padding, checkpointing):
    """Training a sequence head, the last block runs only at the token the head reads ([CLS], or each
    row's last real token): logits and every gradient equal the full computation's (eval mode, dropout
    off), packed or not, and the stack hands back just those states."""
    from llmkit.models import set_activation_checkpointing

    torch.manual_seed(0)
    head = dict(encoder_head="classifier") if family == "bert" else dict(decoder_head="classifier", pad_token_id=0)
    model = build_model(FAMILIES[family].replace(dropout=0.0, num_labels=3, **head))
    set_activation_checkpointing(model, checkpointing)
    ids = torch.randint(3, 97, (4, 12))
    mask = torch.ones_like(ids)
    if padding == "right":
        mask[1, 7:] = 0
        mask[2, 3:] = 0
    elif padding == "left":
        mask[1, :5] = 0
        mask[3, :9] = 0
    results = []
    for train in (True, False):
        model.train(train)
        model.zero_grad()
        out = model(ids, attention_mask=mask)
        out.logits.float().pow(2).mean().backward()
        results.append((out.logits.detach(), [p.grad.clone() for p in model.parameters()]))
        assert out.last_hidden_state.shape[1] == (1 if train else 12)
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=0)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_sequence_classifier_reading_padding_falls_back_to_every_token():
    """A left-padded BERT row pools position 0, a padding token, which has no packed row: the stack
    then computes every token and reads position 0 (a real row's logits equal the full computation's;
    training on packed tokens leaves padding states at zero)."""
    from llmkit.models.stack import Stack

    torch.manual_seed(0)
    model = build_model(FAMILIES["bert"].replace(dropout=0.0, num_labels=2, encoder_head="classifier"))
    ids = torch.randint(3, 97, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    assert Stack._selection(model.stack, torch.zeros(2, dtype=torch.long), mask, None, 2, 6, None,
                            torch.float32, torch.device("cpu")) is None  # fmt: skip
    logits = [model.train(train)(ids, attention_mask=mask).logits.detach() for train in (True, False)]
    torch.testing.assert_close(logits[0][0], logits[1][0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("family", ["gpt", "llama-gqa", "bert"])
def test_written_out_training_attention_equals_sdpa(family, padded):
    """Training on the CPU with dropout, attention is written out (Attention._attend) so its dropout
    takes Dropout's fast mask: with that mask an identity, logits and gradients equal SDPA's (packed
    groups with padding and causality, a batch without padding that is not packed, the selected last
    block of a sequence head), and every layer took the written-out path."""
    from llmkit.models.layers import Attention

    torch.manual_seed(0)
    head = dict(encoder_head="classifier") if family == "bert" else dict(decoder_head="classifier", pad_token_id=0)
    model = build_model(FAMILIES[family].replace(dropout=0.1, num_labels=3, **head)).train()
    attentions = [m for m in model.modules() if isinstance(m, Attention)]
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0  # the residual and embedding dropouts off; attention's is switched below
    called = set()
    for i, a in enumerate(attentions):
        a.attn_drop = nn.Identity()
        a.attn_drop.register_forward_hook(lambda *args, i=i: called.add(i))
    ids = torch.randint(3, 97, (4, 12))
    mask = torch.ones_like(ids)
    if padded:
        mask[1, 7:] = 0
        mask[2, 3:] = 0
    results = []
    for written_out in (True, False):
        for a in attentions:
            a.dropout = 0.1 if written_out else 0.0  # 0: SDPA without dropout
        model.zero_grad()
        logits = model(ids, attention_mask=mask).logits
        logits.float().pow(2).mean().backward()
        results.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
    assert called == set(range(len(attentions)))  # the written-out path ran in every layer
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=0)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_a_meta_build_runs_no_initializer_and_leaves_torch_init_as_it_was():
    """A build on the meta device skips torch.nn.init (there are no values to fill): torch's meta
    normal_ imports torch._dynamo, which made every checkpoint load's header check cost 1.5-3 s. A
    fresh process, so nothing earlier has imported it; the CPU build after it is initialized as before,
    and torch's initializers are wrapped (to be skippable per thread) once, not once per build."""
    code = """
import sys, torch
from torch import nn
from llmkit.config import ModelConfig
from llmkit.models import build_model
inits = None
for family in ("tiny-bert-1m", "tiny-gpt-1m", "tiny-t5-1m"):
    model = build_model(ModelConfig.from_name(family, vocab_size=97, d_model=32, n_layer=2, n_head=4), "meta")
    assert all(p.is_meta for p in model.parameters())
    now = {name: getattr(nn.init, name) for name in ("normal_", "uniform_", "kaiming_uniform_", "ones_")}
    assert inits is None or now == inits, "torch's initializers wrapped again"  # wrapped once per process
    inits = now
print("dynamo" if "torch._dynamo" in sys.modules else "no dynamo")
torch.manual_seed(0)
a = build_model(ModelConfig.from_name("tiny-bert-1m", vocab_size=97, d_model=32, n_layer=2, n_head=4), init=False)
torch.manual_seed(0)
b = torch.nn.Embedding(97, 32).weight  # the constructor's own init ran in the CPU build: the same draw
assert torch.equal(a.embed.tokens.weight, b), "the CPU build skipped torch's initializers"
"""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "no dynamo"


def test_skipping_torch_init_for_a_meta_build_leaves_other_threads_alone():
    """A meta build skips torch's initializers in its own thread only: a model built in another thread
    meanwhile is initialized, and so is everything after both (the old process-wide swap left them no-ops)."""
    import threading

    from llmkit.models import skip_torch_init

    inside, leave = threading.Event(), threading.Event()

    def meta_build() -> None:
        with skip_torch_init():
            inside.set()
            leave.wait(10)

    worker = threading.Thread(target=meta_build)
    worker.start()
    assert inside.wait(10)
    try:
        during = nn.init.normal_(torch.zeros(64))  # this thread, while the other skips
        with skip_torch_init():
            skipped = nn.init.normal_(torch.zeros(64))
        inner_done = nn.init.ones_(torch.zeros(3))  # this thread's own block is over, the other's is not
    finally:
        leave.set()
        worker.join()
    assert during.abs().sum() > 0 and torch.equal(inner_done, torch.ones(3))
    assert torch.equal(skipped, torch.zeros(64))
    assert nn.Linear(8, 8).weight.abs().sum() > 0  # after both blocks
