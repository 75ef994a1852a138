"""The native decoding step (llmkit/inference/native.py, llmkit/cpu_decode.c): a whole batch-1 step of a
Llama-family model in one C call, checked against the torch step in fp32 on the same weights."""

from __future__ import annotations

import pytest
import torch

from llmkit import cpu_kernels
from llmkit.config import ModelConfig
from llmkit.inference import generate
from llmkit.inference import native as native_module
from llmkit.inference.native import NativeStep, unsupported
from llmkit.inference.runners import DecoderRunner
from llmkit.models import build_model
from llmkit.models.cache import KVCache
from llmkit.quantize import QuantSpec, quantize_model, use_kernels

needs_kernels = pytest.mark.skipif(not cpu_kernels.available(), reason=f"C kernels not built: {cpu_kernels.reason()}")
pytestmark = needs_kernels


def llama(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    sizes = dict(vocab_size=211, d_model=96, n_layer=3, n_head=6, n_kv_head=2, d_ff=160, max_seq_len=64) | overrides
    return build_model(ModelConfig.from_name("tiny-llama-10m", **sizes)).eval()


def qwen_like(seed: int = 0) -> torch.nn.Module:
    """q/k/v biases (Qwen2), an untied head, another RoPE base; biases made large enough to matter."""
    model = llama(seed, qkv_bias=True, tie_embeddings=False, rope_theta=1e6)
    with torch.no_grad():
        for block in model.stack.layers:
            for linear in (block.attn.q, block.attn.k, block.attn.v):
                linear.bias.normal_(0, 0.5)
    return model


PROMPT = torch.tensor([[5, 6, 7, 8, 9]])


def torch_and_native_logits(model, reference=None, steps: int = 8, cache_dtype=None):
    """Logits of ``steps`` greedy steps after PROMPT: the torch step of ``reference`` (default: the model)
    and the C step of ``model``, each over its own cache filled by the torch prefill, fed the same tokens."""
    reference = model if reference is None else reference
    ids, mask = PROMPT, torch.ones_like(PROMPT)
    with torch.inference_mode():
        ref = DecoderRunner(reference, ids, mask, steps)
        ours = DecoderRunner(model, ids, mask, steps, native=True)
        if cache_dtype is not None:  # a cache of another dtype than the parameters'
            ours.cache = KVCache(model.config, 1, PROMPT.shape[1] + steps, dtype=cache_dtype)
            ours.native = NativeStep(model, ours.cache)
        expected, got = [ref.prefill()], [ours.prefill() if cache_dtype is None else _native_prompt(ours)]
        for _ in range(steps):
            token = expected[-1].argmax(-1)
            expected.append(ref.step(token))
            got.append(ours.step(token))
    return torch.stack(expected), torch.stack(got)


def _native_prompt(runner) -> torch.Tensor:
    """The prompt fed one token at a time through the C step (from an empty cache)."""
    for token in PROMPT[0].tolist():
        logits = runner.native.step(token)
    return logits


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("build", [llama, qwen_like], ids=["llama", "qwen2"])
def test_fp32_step_equals_the_torch_step(build):
    model = build()
    expected, got = torch_and_native_logits(model)
    assert relative(got, expected) <= 1e-5


@pytest.mark.parametrize(
    "spec",
    [
        QuantSpec("int4", 32, scheme="asymmetric"),
        QuantSpec("int4", 64, scheme="symmetric"),
        QuantSpec("int8"),
        QuantSpec("int8", 32, scheme="asymmetric"),
    ],
    ids=str,
)
def test_quantized_step_equals_the_torch_step(spec):
    """int4 and int8, symmetric and with minimums (GGUF's Q4_0, Q4_1, Q8_0 layouts), the table quantized too:
    the embedding row is dequantized in C, the tied head runs the table's kernel."""
    model = use_kernels(quantize_model(qwen_like(1), spec))
    expected, got = torch_and_native_logits(model)
    assert relative(got, expected) <= 1e-5


def test_the_prompt_can_run_natively_from_an_empty_cache():
    """Position 0 onwards in C (no torch prefill): the same logits at the prompt's last token."""
    model = llama(2)
    expected, got = torch_and_native_logits(model, cache_dtype=torch.float32)
    assert relative(got, expected) <= 1e-5


def test_bf16_weights_with_fp32_activations():
    """bf16 weights: the C step multiplies them with fp32 activations (the torch bf16 step rounds every
    activation to bf16). Over an fp32 cache it equals the fp32 model holding the same bf16 values; over the
    bf16 cache the model's own generation gets it differs by that cache's rounding alone."""
    model = llama(3).to(torch.bfloat16)
    widened = llama(3).to(torch.bfloat16).float()
    expected, got = torch_and_native_logits(model, reference=widened, cache_dtype=torch.float32)
    assert relative(got, expected) <= 1e-5
    with torch.inference_mode():
        runner = DecoderRunner(model, PROMPT, torch.ones_like(PROMPT), 8, native=True)
        assert runner.cache.layers[0].k.dtype == torch.bfloat16
        runner.prefill()
        step = runner.step(torch.tensor([3]))
        ref = DecoderRunner(widened, PROMPT, torch.ones_like(PROMPT), 8)
        ref.prefill()
        # the bf16 prefill's keys and values, and this step's rounded to bf16: within bf16's resolution
        assert relative(step, ref.step(torch.tensor([3]))) <= 3e-2


def test_the_step_writes_the_cache_the_torch_step_reads():
    """After C steps the cache holds what torch steps would have written: a torch step over it gives the
    torch logits (the two paths mix), and the length advances by one a step."""
    model = llama(4)
    ids, mask = PROMPT, torch.ones_like(PROMPT)
    with torch.inference_mode():
        mixed = DecoderRunner(model, ids, mask, 4, native=True)
        plain = DecoderRunner(model, ids, mask, 4)
        mixed.prefill(), plain.prefill()
        for token in (11, 12):
            mixed.step(torch.tensor([token])), plain.step(torch.tensor([token]))
        assert mixed.cache.length == plain.cache.length == PROMPT.shape[1] + 2
        for a, b in zip(mixed.cache.layers, plain.cache.layers, strict=True):
            torch.testing.assert_close(a.k, b.k, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(a.v, b.v, atol=1e-5, rtol=1e-5)
        mixed.native = None  # the torch step, over the cache the C step wrote
        torch.testing.assert_close(mixed.step(torch.tensor([13])), plain.step(torch.tensor([13])), atol=1e-5, rtol=1e-5)
        mixed.native = NativeStep(model, mixed.cache)
        mixed.step(torch.tensor([14]))
        with pytest.raises(Exception, match="KV cache holds"):
            mixed.step(torch.tensor([15]))


def test_generate_takes_the_native_step_for_one_prompt(monkeypatch):
    """generate() runs batch-1 steps in C (greedy tokens equal the torch step's) and keeps torch for a
    batch of prompts, or when LLMKIT_NATIVE_STEP=0."""
    model = use_kernels(quantize_model(llama(5), QuantSpec("int4", 32, scheme="asymmetric")))
    calls = []
    original = NativeStep.step
    monkeypatch.setattr(NativeStep, "step", lambda self, token: calls.append(token) or original(self, token))
    native_tokens = generate(model, [[5, 6, 7]], max_new_tokens=10, min_new_tokens=10)[0].token_ids
    assert len(calls) == 9  # every step after the prompt's
    calls.clear()
    generate(model, [[5, 6, 7], [8, 9]], max_new_tokens=4)
    assert not calls
    monkeypatch.setenv(native_module.ENV_SWITCH, "0")
    assert generate(model, [[5, 6, 7]], max_new_tokens=10, min_new_tokens=10)[0].token_ids == native_tokens
    assert not calls


def test_what_keeps_the_torch_step():
    model = llama(6)
    assert unsupported(model, 1, False) is None
    assert unsupported(model, 2, False) == "more than one row"
    assert unsupported(model, 1, True) == "more than one row"
    gpt = build_model(ModelConfig.from_name("tiny-gpt-1m", vocab_size=97, d_model=32, n_layer=1, n_head=2))
    assert "Llama-family" in unsupported(gpt, 1, False)
    handle = model.stack.layers[1].mlp.up.register_forward_hook(lambda *args: None)
    assert unsupported(model, 1, False) == "module stack.layers.1.mlp.up has hooks"
    handle.remove()
    model.stack.layers[0].attn.o = torch.nn.Sequential(model.stack.layers[0].attn.o)  # e.g. an adapter around it
    assert unsupported(model, 1, False) == "module stack.layers.0.attn.o is a Sequential"
    assert "fp32, bf16" in unsupported(llama(6).half(), 1, False)
    assert unsupported(llama(6).train(), 1, False) is None  # no dropout in this config
    assert unsupported(llama(6, dropout=0.1).train(), 1, False) == "training mode with dropout"


def test_without_kernels_the_torch_step_runs(monkeypatch):
    monkeypatch.setattr(native_module, "_library", lambda: None)
    monkeypatch.setattr(cpu_kernels, "reason", lambda: "no C compiler on PATH (cc, or $CC)")
    assert unsupported(llama(7), 1, False) == "no C kernels (no C compiler on PATH (cc, or $CC))"
    monkeypatch.setenv(native_module.ENV_SWITCH, "0")
    assert unsupported(llama(7), 1, False) == "LLMKIT_NATIVE_STEP=0"


def test_generate_compile_says_when_the_native_step_makes_it_moot():
    from llmkit.cli.generate import _compile_notice

    model = llama(8)
    assert "run in C" in _compile_notice(model, 1, {})
    assert "compiling the decoding step" in _compile_notice(model, 2, {})
    assert "compiling the decoding step" in _compile_notice(model, 1, {"num_return_sequences": 2, "do_sample": True})
