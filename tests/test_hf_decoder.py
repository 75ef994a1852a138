"""GPT-2 and Llama checkpoints converted from transformers give the same numbers, and convert back exactly.

Each case builds the transformers model from a small config with random weights (norm gains and
biases randomised too, so a swapped or missing tensor shows), saves it with ``save_pretrained``,
converts it with ``llmkit.hf.from_hf`` and compares on a right-padded batch, real tokens only.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import transformers  # test-only dependency: llmkit itself never imports it
from hf_utils import assert_same_tensors, randomize, real
from safetensors.torch import load_file

from llmkit import checkpoint
from llmkit.config import ModelConfig
from llmkit.errors import LlmkitError
from llmkit.hf import converter_for_config, from_hf, to_hf
from llmkit.hf.gpt2 import CONVERTER as GPT2
from llmkit.hf.llama import CONVERTER as LLAMA
from llmkit.models import build_model

VOCAB = 100
LOGIT_ATOL = 1e-4  # fp32, whole model
ATTN_ATOL = 1e-5
LENGTHS = (7, 5, 2)  # right padding: row b has LENGTHS[b] real tokens


def gpt2_config(**kw):
    # non-default eps and n_inner so a converter that ignores them fails
    return transformers.GPT2Config(
        n_embd=64, n_layer=2, n_head=4, n_inner=96, vocab_size=VOCAB, n_positions=32,
        layer_norm_epsilon=1e-4, bos_token_id=1, eos_token_id=2, **kw,
    )  # fmt: skip


def llama_config(**kw):
    return transformers.LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=VOCAB, max_position_embeddings=64, rms_norm_eps=1e-5,
        rope_parameters={"rope_theta": 500.0, "rope_type": "default"}, **kw,
    )  # fmt: skip


def qwen2_config(**kw):
    return transformers.Qwen2Config(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=VOCAB, max_position_embeddings=64, rms_norm_eps=1e-5,
        rope_parameters={"rope_theta": 1e6, "rope_type": "default"}, bos_token_id=1, eos_token_id=2, **kw,
    )  # fmt: skip


CASES = {
    "gpt2": lambda: transformers.GPT2LMHeadModel(gpt2_config()),
    "llama-gqa-tied": lambda: transformers.LlamaForCausalLM(llama_config(tie_word_embeddings=True)),
    # untied, head_dim apart from hidden_size // heads, several eos ids
    "llama-gqa-untied": lambda: transformers.LlamaForCausalLM(
        llama_config(tie_word_embeddings=False, head_dim=24, eos_token_id=[2, 3], pad_token_id=0)
    ),
    # Llama's layout with q/k/v biases (randomised, so a dropped bias shows)
    "qwen2": lambda: transformers.Qwen2ForCausalLM(qwen2_config(tie_word_embeddings=True)),
}


@dataclass
class Case:
    name: str
    hf: torch.nn.Module
    hf_dir: Path
    ours_dir: Path
    ours: torch.nn.Module


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (len(LENGTHS), max(LENGTHS)), generator=g)
    mask = torch.zeros_like(ids)
    for b, n in enumerate(LENGTHS):
        mask[b, :n] = 1
    return ids.masked_fill(mask == 0, 0), mask


def convert(hf_dir: Path, out: Path) -> torch.nn.Module:
    from_hf(hf_dir, out)
    return checkpoint.load(out)


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory) -> Case:
    torch.manual_seed(0)
    hf = randomize(CASES[request.param]())
    tmp = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(tmp / "hf")
    return Case(request.param, hf, tmp / "hf", tmp / "ours", convert(tmp / "hf", tmp / "ours"))


@torch.no_grad()
def max_logit_diff(ours: torch.nn.Module, hf: torch.nn.Module) -> float:
    ids, mask = batch()
    a = ours(ids, attention_mask=mask).logits
    b = hf(input_ids=ids, attention_mask=mask).logits
    return (real(a, mask) - real(b, mask)).abs().max().item()


# ---- numerics -------------------------------------------------------------------------------
def test_logits_match_transformers(case, record_property):
    diff = max_logit_diff(case.ours, case.hf)
    record_property("max_abs_logit_diff", diff)
    print(f"{case.name}: max |logit diff| = {diff:.3e}")
    assert diff <= LOGIT_ATOL


def test_round_trip_is_exact(case, tmp_path):
    to_hf(case.ours_dir, tmp_path / "rt")
    assert_same_tensors(case.hf_dir, tmp_path / "rt")
    hf2, info = type(case.hf).from_pretrained(tmp_path / "rt", output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    ids, mask = batch()
    with torch.no_grad():
        a = hf2.eval()(input_ids=ids, attention_mask=mask).logits
        b = case.hf(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(real(a, mask), real(b, mask))


def reference_attention(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Layer 0: softmax(Q K^T / sqrt(D) + causal/padding mask) from our weights, written out here."""
    cfg, layer = model.config, model.stack.layers[0]
    B, T = ids.shape
    H, K, D = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    x = layer.attn_norm(model.embed(ids))  # (B, T, C)
    q = layer.attn.q(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
    k = layer.attn.k(x).view(B, T, K, D).transpose(1, 2)  # (B, K, T, D)
    if cfg.pos == "rope":  # rotate-half RoPE, angle p * theta^(-2i/D)
        inv = cfg.rope_theta ** (-torch.arange(0, D, 2).float() / D)
        angles = torch.arange(T).float()[:, None] * inv  # (T, D/2)
        cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)

        def rotate(t):
            half = torch.cat([-t[..., D // 2 :], t[..., : D // 2]], dim=-1)
            return t * cos + half * sin

        q, k = rotate(q), rotate(k)
    k = k.repeat_interleave(H // K, dim=1)  # GQA: query head h reads K/V head h // (H / K)
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, H, T, T)
    allowed = torch.ones(T, T, dtype=torch.bool).tril() & mask.bool()[:, None, None, :]
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1)


@torch.no_grad()
def test_attentions_match_formula_and_transformers(case):
    ids, mask = batch()
    ours = case.ours(ids, attention_mask=mask, output_attentions=True).attentions
    expected = reference_attention(case.ours, ids, mask)
    torch.testing.assert_close(real(ours[0], mask), real(expected, mask), atol=ATTN_ATOL, rtol=0)
    eager = type(case.hf).from_pretrained(case.hf_dir, attn_implementation="eager").eval()
    theirs = eager(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    assert len(ours) == len(theirs) == case.ours.config.n_layer
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(real(a, mask), real(b, mask), atol=ATTN_ATOL, rtol=0)


@torch.no_grad()
def test_explicit_attention_path_matches_sdpa(case):
    ids, mask = batch()
    fast = case.ours(ids, attention_mask=mask).logits
    slow = case.ours(ids, attention_mask=mask, output_attentions=True).logits
    torch.testing.assert_close(real(slow, mask), real(fast, mask), atol=1e-5, rtol=0)


def test_config_fields_are_read(case):
    cfg, hf = case.ours.config, case.hf.config
    assert cfg.vocab_size == VOCAB and cfg.n_layer == 2 and cfg.d_ff == 96
    assert converter_for_config(cfg).model_type == hf.model_type
    if hf.model_type == "llama":
        assert (cfg.n_kv_head, cfg.rope_theta, cfg.norm_eps) == (2, 500.0, 1e-5)
        assert cfg.head_dim == hf.head_dim and cfg.tie_embeddings == hf.tie_word_embeddings
        assert cfg.eos_token_id == 2  # the first of a list
        assert cfg.pad_token_id == hf.pad_token_id
    elif hf.model_type == "qwen2":
        assert cfg.qkv_bias and not cfg.bias and (cfg.n_kv_head, cfg.rope_theta, cfg.norm_eps) == (2, 1e6, 1e-5)
        assert cfg.tie_embeddings and cfg.max_seq_len == 64  # no sliding window unless use_sliding_window
    else:
        assert cfg.norm_eps == 1e-4 and cfg.tie_embeddings


@pytest.mark.parametrize("preset", ["tiny-gpt-1m", "tiny-llama-10m"])
def test_llmkit_model_exports_to_transformers(tmp_path, preset):
    """A model born in llmkit (not converted from transformers) loads with AutoModelForCausalLM."""
    shape = dict(vocab_size=VOCAB, d_model=64, n_layer=2, n_head=4, d_ff=96, max_seq_len=32, rope_theta=500.0)
    cfg = ModelConfig.from_name(preset, **shape, bos_token_id=1, eos_token_id=2)
    ours = randomize(build_model(cfg))
    checkpoint.save(ours, tmp_path / "ours")
    to_hf(tmp_path / "ours", tmp_path / "hf")
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info.values()), info
    assert type(hf).__name__ == converter_for_config(cfg).config_to_hf(cfg)["architectures"][0]
    assert max_logit_diff(ours, hf.eval()) <= LOGIT_ATOL


# ---- other checkpoint shapes ----------------------------------------------------------------
def test_pytorch_model_bin(case, tmp_path):
    """Weights as pytorch_model.bin (no safetensors), read with weights_only=True."""
    src = tmp_path / "bin"
    src.mkdir()
    shutil.copy(case.hf_dir / "config.json", src / "config.json")
    torch.save(load_file(str(case.hf_dir / "model.safetensors")), src / "pytorch_model.bin")
    assert max_logit_diff(convert(src, tmp_path / "ours"), case.hf) <= LOGIT_ATOL


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_gpt2_base_model_checkpoint(tmp_path, fmt):
    """GPT2Model names (no ``transformer.`` prefix), as the hub's ``gpt2`` files have them; the .bin
    variant also carries the causal-mask buffers old transformers saved (attn.bias, attn.masked_bias)."""
    torch.manual_seed(0)
    lm = randomize(transformers.GPT2LMHeadModel(gpt2_config()))
    src = tmp_path / "hub"
    lm.transformer.save_pretrained(src)  # a GPT2Model
    sd = load_file(str(src / "model.safetensors"))
    assert not any(k.startswith("transformer.") for k in sd)
    if fmt == "bin":
        for i in range(lm.config.n_layer):
            sd[f"h.{i}.attn.bias"] = torch.ones(1, 1, 32, 32).tril()
            sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
        (src / "model.safetensors").unlink()
        torch.save(sd, src / "pytorch_model.bin")
    hf_cfg = json.loads((src / "config.json").read_text())
    del hf_cfg["tie_word_embeddings"]  # the hub file predates the key: GPT-2 ties by default
    (src / "config.json").write_text(json.dumps(hf_cfg))
    assert max_logit_diff(convert(src, tmp_path / "ours"), lm) <= LOGIT_ATOL


def test_gpt2_untied_head(tmp_path):
    torch.manual_seed(0)
    hf = randomize(transformers.GPT2LMHeadModel(gpt2_config(tie_word_embeddings=False)))
    hf.save_pretrained(tmp_path / "hf")
    ours = convert(tmp_path / "hf", tmp_path / "ours")
    assert not ours.config.tie_embeddings
    assert max_logit_diff(ours, hf) <= LOGIT_ATOL
    to_hf(tmp_path / "ours", tmp_path / "rt")
    original, back = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("hf", "rt"))
    assert set(back) == set(original) and "lm_head.weight" in back
    assert all(torch.equal(back[k], v) for k, v in original.items())


def test_mistral_is_read_as_llama_within_its_window(tmp_path):
    """Mistral shares Llama's layout; within its sliding window attention is plain causal attention."""
    torch.manual_seed(0)
    hf_cfg = transformers.MistralConfig(**{**llama_config().to_dict(), "model_type": "mistral", "sliding_window": 8})
    hf = randomize(transformers.MistralForCausalLM(hf_cfg))
    hf.save_pretrained(tmp_path / "hf")
    ours = convert(tmp_path / "hf", tmp_path / "ours")
    assert ours.config.max_seq_len == 8  # the context window stops where the sliding window starts to act
    assert max_logit_diff(ours, hf) <= LOGIT_ATOL


# ---- errors ---------------------------------------------------------------------------------
def edit_config(case: Case, tmp_path: Path, **changes) -> Path:
    src = tmp_path / "edited"
    shutil.copytree(case.hf_dir, src)
    hf_cfg = {**json.loads((src / "config.json").read_text()), **changes}
    (src / "config.json").write_text(json.dumps(hf_cfg))
    return src


def test_unknown_model_type_names_the_file(case, tmp_path):
    src = edit_config(case, tmp_path, model_type="gptj")
    with pytest.raises(LlmkitError, match=r"config\.json.*unknown architecture 'gptj'") as err:
        from_hf(src, tmp_path / "out")
    assert str(src / "config.json") in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["llama-gqa-tied"], indirect=True)  # a llama-only config field
@pytest.mark.parametrize("key", ["rope_scaling", "rope_parameters"])
def test_llama3_rope_scaling_is_unsupported(case, tmp_path, key):
    rope = {"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 32}  # fmt: skip
    src = edit_config(case, tmp_path, **{key: rope})
    with pytest.raises(LlmkitError, match="rope type 'llama3' is unsupported"):
        from_hf(src, tmp_path / "out")


@pytest.mark.parametrize(
    "conv, changes, message",
    [
        (GPT2, {"activation_function": "gelu"}, "activation_function 'gelu' is unsupported"),
        (GPT2, {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
        (LLAMA, {"attention_bias": True}, "attention_bias=true is unsupported"),
        (LLAMA, {"mlp_bias": True}, "mlp_bias=true is unsupported"),
        (LLAMA, {"hidden_act": "gelu"}, "hidden_act 'gelu' is unsupported"),
        (LLAMA, {"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope type 'linear' is unsupported"),
        (LLAMA, {"rope_theta": 1e4, "partial_rotary_factor": 0.5}, "partial_rotary_factor"),
        (LLAMA, {"model_type": "qwen2"}, "Qwen2 config: q/k/v projection biases are unsupported"),
    ],
)
def test_unsupported_config_is_an_error(conv, changes, message):
    base = (gpt2_config() if conv is GPT2 else llama_config()).to_dict()
    with pytest.raises(LlmkitError, match=message):
        conv.config_from_hf({**base, **changes}, {})


def test_old_style_rope_theta_is_read():
    hf = {k: v for k, v in llama_config().to_dict().items() if k != "rope_parameters"}
    assert LLAMA.config_from_hf({**hf, "rope_theta": 1234.0, "rope_scaling": None}, {}).rope_theta == 1234.0


@pytest.mark.parametrize(
    "name, model_type",
    [("gpt2", "gpt2"), ("tiny-gpt-1m", "gpt2"), ("smollm2-135m", "llama"), ("tiny-llama-10m", "llama")],
)
def test_presets_map_to_their_architecture(name, model_type):
    assert converter_for_config(ModelConfig.from_name(name)).model_type == model_type


def test_bf16_checkpoint_keeps_its_dtype(tmp_path):
    """A bf16 hub checkpoint converts to a bf16 llmkit one (same size, exact values)."""
    torch.manual_seed(0)
    hf = randomize(transformers.LlamaForCausalLM(llama_config())).to(torch.bfloat16)
    hf.save_pretrained(tmp_path / "hf")
    from_hf(tmp_path / "hf", tmp_path / "ours")
    stored = checkpoint.read_weights(tmp_path / "ours" / "model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}
    ours = checkpoint.load(tmp_path / "ours", dtype=torch.bfloat16)
    assert torch.equal(ours.stack.layers[0].attn.q.weight, hf.model.layers[0].self_attn.q_proj.weight)


def test_leftover_tensor_is_named_with_a_hint(case):
    from llmkit.hf.convert import CONVERTERS

    conv = CONVERTERS[case.hf.config.model_type]
    sd = {**case.hf.state_dict(), "extra.weight": torch.zeros(2)}
    with pytest.raises(LlmkitError) as err:
        conv.state_dict_from_hf(sd, case.ours.config)
    assert "unexpected tensor 'extra.weight' (1 unexpected)" in str(err.value)
    assert err.value.hint.startswith("llmkit converts")


def test_generation_config_top_k_follows_transformers_defaults(case, tmp_path):
    """transformers samples with top_k=50 when its file is silent; a converted model must too, and
    a sampling config exported with top_k off must say 0 rather than fall back to 50."""
    ours = checkpoint.load(case.ours_dir)
    assert ours.generation_config.top_k == 50
    ours.generation_config = ours.generation_config.replace(do_sample=True, top_k=0)
    checkpoint.save(ours, tmp_path / "ours")
    to_hf(tmp_path / "ours", tmp_path / "hf")
    assert transformers.GenerationConfig.from_pretrained(tmp_path / "hf").top_k == 0
