"""LoRA: training steps, adapters and merges against peft on tiny random BERT and Llama models.

Each case builds a transformers model from a config with random weights, converts it with llmkit's
converter, and wraps both sides: peft on the transformers model, llmkit's apply_lora on the
converted one. peft starts B at zero, which makes the first step's gradient of A zero and Adam's
first update lr * sign(grad) for B: a weak check. So B starts from the same random values on both
sides (A is copied from peft's kaiming init), and three AdamW steps are compared, gradients too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hf_utils import randomize

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from llmkit import checkpoint  # noqa: E402
from llmkit.cli import main  # noqa: E402
from llmkit.errors import LlmkitError  # noqa: E402
from llmkit.hf import from_hf, to_hf  # noqa: E402
from llmkit.lora import (  # noqa: E402
    LoraConfig,
    LoraLinear,
    apply_lora,
    load_adapter,
    lora_layers,
    lora_state_dict,
    merge_lora,
    save_adapter,
    trainable_parameters,
)
from llmkit.lora.peft_format import PREFIX  # noqa: E402
from llmkit.quantize import QuantizedLinear, QuantSpec, quantize_model  # noqa: E402

VOCAB, LABELS = 100, 3
ATOL = 1e-5
RANK, ALPHA = 4, 8.0


def llama():
    return transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=VOCAB, max_position_embeddings=64, tie_word_embeddings=False,
        )
    )  # fmt: skip


def bert():
    return transformers.BertForSequenceClassification(
        transformers.BertConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=32, num_labels=LABELS, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        )
    )  # fmt: skip


def t5():
    return transformers.T5ForConditionalGeneration(
        transformers.T5Config(
            vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
            dropout_rate=0.0, feed_forward_proj="gated-gelu",
        )
    )  # fmt: skip


# name -> (transformers model, peft task type, HF target names, modules trained in full)
CASES = {
    "llama": (llama, "CAUSAL_LM", ["q_proj", "v_proj", "down_proj"], []),
    "bert": (bert, "SEQ_CLS", ["query", "value", "intermediate.dense"], ["classifier"]),
    "t5": (t5, "SEQ_2_SEQ_LM", ["q", "v", "wo"], []),  # q, v: self- and cross-attention
}
HF_CLASSES = {"llama": "LlamaForCausalLM", "bert": "BertForSequenceClassification", "t5": "T5ForConditionalGeneration"}


@dataclass
class Case:
    name: str
    task: str
    targets: list[str]
    saved: list[str]
    hf_dir: Path
    ours_dir: Path

    def hf(self) -> torch.nn.Module:
        return getattr(transformers, HF_CLASSES[self.name]).from_pretrained(self.hf_dir).float()

    def ours(self) -> torch.nn.Module:
        return checkpoint.load(self.ours_dir)

    def peft_config(self) -> peft.LoraConfig:
        return peft.LoraConfig(
            r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=self.targets, task_type=self.task
        )

    def lora_config(self) -> LoraConfig:
        return LoraConfig(rank=RANK, alpha=ALPHA, target_modules=self.targets, modules_to_save=self.saved)


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory) -> Case:
    build, task, targets, saved = CASES[request.param]
    tmp = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    randomize(build()).save_pretrained(tmp / "hf")
    from_hf(tmp / "hf", tmp / "ours")
    return Case(request.param, task, targets, saved, tmp / "hf", tmp / "ours")


def batch(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (3, 9), generator=g)
    labels = torch.randint(0, LABELS, (3,), generator=g) if name == "bert" else ids
    return ids, labels


def logits(model: torch.nn.Module, ids: torch.Tensor, name: str) -> torch.Tensor:
    if name == "t5":  # the decoder reads other tokens than the encoder
        return model(input_ids=ids, decoder_input_ids=ids.flip(1)).logits
    return model(input_ids=ids).logits


def loss_of(name: str, out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if name == "bert":
        return torch.nn.functional.cross_entropy(out, labels)
    return torch.nn.functional.cross_entropy(out[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1))


def randomize_b(model: torch.nn.Module, seed: int = 5) -> None:
    """Nonzero B on every adapted layer (LoRA's zero init would hide A from the comparison)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.1)


def lora_pairs(ours: torch.nn.Module, theirs: torch.nn.Module) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(llmkit name, our parameter, peft's parameter) for every A, B and saved-module tensor."""
    from llmkit.hf.modules import parameter_map

    params = parameter_map(ours.config)
    peft_params = dict(theirs.named_parameters())
    pairs = []
    for name, p in ours.named_parameters():
        if not p.requires_grad:
            continue
        if ".lora_" in name:
            layer, _, kind = name.partition(".lora_")  # kind: "A.weight" or "B.weight"
            hf_layer = params[layer + ".weight"].removesuffix(".weight")
            key = f"base_model.model.{hf_layer}.lora_{kind[0]}.default.weight"
        else:
            leaf = name.rpartition(".")[2]
            hf_module = params[name].removesuffix("." + leaf)
            key = f"base_model.model.{hf_module}.modules_to_save.default.{leaf}"
        pairs.append((name, p, peft_params[key]))
    return pairs


def wrapped_pair(case: Case) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(llmkit model, peft model) with the same A (peft's init), the same random B, in train mode."""
    torch.manual_seed(3)
    theirs = peft.get_peft_model(case.hf(), case.peft_config())
    ours = case.ours()
    apply_lora(ours, case.lora_config())
    randomize_b(ours)
    pairs = lora_pairs(ours, theirs)
    with torch.no_grad():
        for name, mine, other in pairs:
            if ".lora_A." in name:
                mine.copy_(other)  # A: peft's kaiming init
            else:
                other.copy_(mine)  # B: random on both; the classifier: the converted weights already agree
    return ours.train(), theirs.train()


# ---- equivalence with peft ------------------------------------------------------------------
def test_training_steps_match_peft(case):
    ours, theirs = wrapped_pair(case)
    pairs = lora_pairs(ours, theirs)
    assert trainable_parameters(ours) == sum(p.numel() for p in theirs.parameters() if p.requires_grad)
    opts = [
        torch.optim.AdamW([p for _, p, _ in pairs], lr=1e-2, weight_decay=0.01),
        torch.optim.AdamW([q for _, _, q in pairs], lr=1e-2, weight_decay=0.01),
    ]
    ids, labels = batch(case.name)
    for step in range(3):
        for model, opt in zip((ours, theirs), opts, strict=True):
            opt.zero_grad()
            loss_of(case.name, logits(model, ids, case.name), labels).backward()
        if step == 0:
            for name, mine, other in pairs:
                assert mine.grad is not None and mine.grad.abs().max() > 0, name
                torch.testing.assert_close(mine.grad, other.grad, atol=ATOL, rtol=0, msg=name)
        for opt in opts:
            opt.step()
    worst = max((mine - other).abs().max().item() for _, mine, other in pairs)
    print(f"{case.name}: max |adapter weight diff| after 3 AdamW steps = {worst:.2e}")
    assert worst <= ATOL
    moved = [n for n, p, _ in pairs if ".lora_A." in n]
    assert moved, "A must be among the trained tensors"


def test_llmkit_adapter_loads_in_peft(case, tmp_path):
    ours = case.ours()
    cfg = case.lora_config()
    apply_lora(ours, cfg)
    randomize_b(ours)
    with torch.no_grad():
        if case.saved:
            ours.classifier.weight.add_(0.5)  # a trained head travels with the adapter
    save_adapter(ours, cfg, tmp_path / "adapter", str(case.ours_dir))
    to_hf(case.ours_dir, tmp_path / "hf")
    cls = type(case.hf())
    theirs = peft.PeftModel.from_pretrained(cls.from_pretrained(tmp_path / "hf"), tmp_path / "adapter").eval()
    ids, _ = batch(case.name)
    with torch.no_grad():
        diff = (logits(ours.eval(), ids, case.name) - logits(theirs, ids, case.name)).abs().max().item()
    print(f"{case.name}: llmkit adapter in peft, max |logit diff| = {diff:.2e}")
    assert diff <= ATOL
    with torch.no_grad(), theirs.disable_adapter():  # the adapter matters: not base against base
        assert (logits(theirs, ids, case.name) - logits(ours, ids, case.name)).abs().max() > 1e-3


def test_peft_adapter_loads_in_llmkit(case, tmp_path):
    torch.manual_seed(4)
    theirs = peft.get_peft_model(case.hf(), case.peft_config())
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    theirs.save_pretrained(tmp_path / "adapter")
    ours = case.ours()
    cfg = load_adapter(ours, tmp_path / "adapter")
    assert (cfg.rank, cfg.alpha) == (RANK, ALPHA)
    ids, _ = batch(case.name)
    with torch.no_grad():
        diff = (logits(ours, ids, case.name) - logits(theirs.eval(), ids, case.name)).abs().max().item()
    print(f"{case.name}: peft adapter in llmkit, max |logit diff| = {diff:.2e}")
    assert diff <= ATOL


def test_save_load_round_trip_and_keys(case, tmp_path):
    ours = case.ours()
    cfg = case.lora_config()
    names = apply_lora(ours, cfg)
    randomize_b(ours)
    save_adapter(ours, cfg, tmp_path / "a", "base")
    from safetensors.torch import load_file

    keys = set(load_file(str(tmp_path / "a" / "adapter_model.safetensors")))
    assert all(k.startswith(PREFIX) for k in keys)
    assert len([k for k in keys if k.endswith(".lora_A.weight")]) == len(names)
    back = case.ours()
    load_adapter(back, tmp_path / "a")
    for name, tensor in lora_state_dict(ours).items():
        assert torch.equal(lora_state_dict(back)[name], tensor), name


# ---- merge ----------------------------------------------------------------------------------
def test_merge_gives_the_unmerged_logits(case, tmp_path):
    ours = case.ours()
    cfg = case.lora_config()
    apply_lora(ours, cfg)
    randomize_b(ours)
    ids, _ = batch(case.name)
    with torch.no_grad():
        before = logits(ours, ids, case.name)
        save_adapter(ours, cfg, tmp_path / "adapter", str(case.ours_dir))
        merge_lora(ours)
        assert not lora_layers(ours)
        diff = (logits(ours, ids, case.name) - before).abs().max().item()
    assert diff <= ATOL
    # the command: base + adapter -> a plain checkpoint with the same logits and a card naming both
    assert main(["lora", "merge", str(case.ours_dir), str(tmp_path / "adapter"), str(tmp_path / "merged")]) == 0
    merged = checkpoint.load(tmp_path / "merged")
    assert not lora_layers(merged)
    with torch.no_grad():
        assert (logits(merged, ids, case.name) - before).abs().max().item() <= ATOL
    assert "llmkit lora merge" in (tmp_path / "merged" / "README.md").read_text()


# ---- LoRA over a quantized base (QLoRA-style) ------------------------------------------------
@pytest.mark.parametrize("method", ["int8", "int4"])
def test_lora_over_quantized_base_trains_only_the_adapter(case, method):
    ours = case.ours()
    quantize_model(ours, QuantSpec(method, 32 if method == "int4" else None))
    buffers = {n: b.clone() for n, b in ours.named_buffers()}
    names = apply_lora(ours, case.lora_config())
    assert names and all(isinstance(ours.get_submodule(n).base_layer, QuantizedLinear) for n in names)
    randomize_b(ours)
    ids, labels = batch(case.name)
    loss_of(case.name, logits(ours.train(), ids, case.name), labels).backward()
    with_grad = {n for n, p in ours.named_parameters() if p.grad is not None}
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert with_grad == trainable
    assert all(".lora_" in n or n.startswith("classifier.") for n in with_grad)
    assert any(".lora_A." in n for n in with_grad)
    torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-2).step()
    for name, b in ours.named_buffers():  # the frozen base stays quantized and unchanged
        key = name.replace(".base_layer.", ".")
        if key in buffers:
            assert torch.equal(b, buffers[key]), name
    with pytest.raises(LlmkitError, match="quantized"):
        merge_lora(ours)


# ---- bad input ------------------------------------------------------------------------------
def test_unknown_target_module_is_one_line_error(case):
    with pytest.raises(LlmkitError) as err:
        LoraConfig(target_modules=["q_prog"]).validate(case.ours())
    assert "'q_prog'" in str(err.value) and "\n" not in str(err.value)
    assert "attn.q" in err.value.hint  # the names that exist


def test_rank_larger_than_the_layer_is_one_line_error(case):
    model = case.ours()
    with pytest.raises(LlmkitError) as err:
        apply_lora(model, LoraConfig(rank=1000, target_modules=["attn.q"]))
    assert "rank 1000" in str(err.value) and "attn.q" in str(err.value) and "\n" not in str(err.value)
    assert not lora_layers(model)


def test_config_checks_itself():
    for bad in (dict(rank=0), dict(alpha=-1), dict(dropout=1.0), dict(bias="all"), dict(target_modules=[])):
        with pytest.raises(LlmkitError):
            LoraConfig(**bad)
    assert LoraConfig(rank=4, alpha=8).scaling == 2.0
    assert LoraConfig(rank=4, alpha=8, use_rslora=True).scaling == 4.0


def test_merge_cli_bad_adapter_exits_2(case, tmp_path, capsys):
    import json

    ours = case.ours()
    cfg = case.lora_config()
    apply_lora(ours, cfg)
    save_adapter(ours, cfg, tmp_path / "adapter", "base")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({**config, "r": 1000}))
    assert main(["lora", "merge", str(case.ours_dir), str(tmp_path / "adapter"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llmkit lora: error:") and "rank 1000" in err and "\n" not in err
    assert not (tmp_path / "out").exists()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "IA3"}))
    assert main(["lora", "merge", str(case.ours_dir), str(tmp_path / "adapter"), str(tmp_path / "out")]) == 2
    assert "not LORA" in capsys.readouterr().err


def test_dropout_applies_to_the_input_of_a_only():
    from torch import nn

    from llmkit.models.dropout import Dropout

    base = nn.Linear(8, 6)
    layer = LoraLinear(base, rank=2, alpha=2.0, dropout=0.5)
    x = torch.randn(4, 8)
    with torch.no_grad():
        layer.lora_B.weight.fill_(1.0)
    layer.eval()
    expected = base(x) + layer.lora_B(layer.lora_A(x)) * layer.scaling
    torch.testing.assert_close(layer(x), expected)
    layer.train()
    torch.manual_seed(0)
    out = layer(x)
    torch.manual_seed(0)
    dropped = Dropout(0.5).train()(x)  # llmkit's dropout: the same draws from the same seed
    torch.testing.assert_close(out, base(x) + layer.lora_B(layer.lora_A(dropped)) * layer.scaling)


def test_in_place_lora_sum_equals_the_product_scale_and_sum(monkeypatch):
    """The fp32 path adds scaling * B A dropout(x) into the base's output with one addmm_: outputs and
    the gradients of x, A and B equal the written-out base(x) + B(A(dropout(x))) * scaling (same
    dropout draws), and bf16 or autocast inputs take the written-out path."""
    from torch import nn

    torch.manual_seed(0)
    layer = LoraLinear(nn.Linear(24, 40), rank=4, alpha=8.0, dropout=0.2).train()
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(3, 5, 24)
    assert layer._adds_in_place(x)
    assert not layer._adds_in_place(x.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not layer._adds_in_place(x)
    results = []
    for in_place in (True, False):
        monkeypatch.setattr(LoraLinear, "_adds_in_place", lambda self, x, v=in_place: v)
        leaf = x.clone().requires_grad_(True)
        layer.zero_grad()
        torch.manual_seed(1)
        out = layer(leaf)
        out.pow(2).sum().backward()
        results.append((out.detach(), leaf.grad, layer.lora_A.weight.grad.clone(), layer.lora_B.weight.grad.clone()))
    assert results[0][0].shape == (3, 5, 40)
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_frozen_quantized_matmul_gradient_is_the_dequantized_one(method):
    """The quantized base keeps nothing for backward and dequantizes again there: same input gradient
    as F.linear over the dequantized matrix, fp32 and under bf16 autocast."""
    from torch import nn

    torch.manual_seed(0)
    layer = QuantizedLinear.from_linear(nn.Linear(64, 48), QuantSpec(method, 32 if method == "int4" else None))
    for autocast in (False, True):
        x = torch.randn(5, 64, requires_grad=True)
        ref = x.detach().clone().requires_grad_(True)
        grad = torch.randn(5, 48)
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            out = layer(x)
            expected = nn.functional.linear(ref, layer.dequantize(torch.float32)) + layer.bias  # as QuantizedLinear
        out.float().backward(grad)
        expected.float().backward(grad)
        assert out.dtype == expected.dtype
        torch.testing.assert_close(out.float(), expected.float(), atol=0, rtol=0)
        torch.testing.assert_close(x.grad, ref.grad, atol=1e-2 if autocast else 1e-6, rtol=0)
