"""Quantization: closed-form error bounds, exact packing, layers against F.linear on the dequantized
weight, torch's CPU kernels against that reference, checkpoint round trips, the CLI and --explain."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

import llmkit
from llmkit import checkpoint, cpu_kernels
from llmkit.cli import main
from llmkit.config import ModelConfig
from llmkit.errors import LlmkitError
from llmkit.models import build_model
from llmkit.quantize import (
    QuantizedEmbedding,
    QuantizedLinear,
    QuantSpec,
    TiedQuantizedHead,
    kernels,
    quantize_model,
    use_kernels,
)
from llmkit.quantize import tensors as qt
from llmkit.quantize.explain import explain, explain_table, float_bits
from llmkit.quantize.layers import KERNEL_MAX_ROWS
from llmkit.quantize_checkpoint import quantize_checkpoint


def weights(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Gaussian weights with an outlier, an all-zero row and a row of one repeated value."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.02
    w[1, 3] = 0.5
    w[2] = 0.0
    w[3] = -0.01
    return w


# ---- tensor formats: bounds against the closed form ------------------------------------------
def fp16_up(t):
    """The smallest fp16 at least ``t``, element by element, found without torch.nextafter."""
    out = []
    for v in t.tolist():
        h = torch.tensor(v).half()
        while float(h) < v:
            h = (h.view(torch.int16) + (1 if float(h) >= 0 else -1)).view(torch.float16)
        out.append(h)
    return torch.stack(out)


def half_step_bound(w, stored, scales, group):
    """|w - stored| <= scale / 2 (+ fp32 rounding) for every weight, with its group's scale."""
    step = scales.float().repeat_interleave(group, dim=1)[:, : w.shape[1]]
    return ((w - stored).abs() <= step / 2 + 1e-6).all()


def test_int8_per_channel_error_is_at_most_half_a_step():
    w = weights(48, 72)
    q, scales, mins = qt.quantize_int8(w)
    assert q.dtype == torch.int8 and scales.shape == (48, 1) and scales.dtype == torch.float16 and mins is None
    assert torch.equal(scales[:, 0], fp16_up(w.abs().amax(1) / 127))  # absmax / 127 per output channel
    assert int(q.abs().max()) == 127 and int(q.min()) >= -127
    stored = qt.dequantize_int8(q, scales, None)
    assert half_step_bound(w, stored, scales, 72)
    assert (q[2] == 0).all() and (stored[2] == 0).all()  # zero row: no 0/0


@pytest.mark.parametrize("cols,group", [(128, 64), (128, 32), (100, 32), (33, 32), (352, 128), (576, 256)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_per_group_error_is_at_most_half_a_step(cols, group, symmetric):
    w = weights(20, cols)
    packed, scales, mins = qt.quantize_int4(w, group, symmetric)
    groups = -(-cols // group)
    assert packed.shape == (20, -(-cols // 64) * 32) and packed.dtype == torch.uint8
    assert scales.shape == (20, groups) and scales.dtype == torch.float16
    q = qt.unpack_int4(packed, cols).int()
    for g in range(groups):  # closed form per group, the last group of a row possibly shorter
        block = w[:, g * group : (g + 1) * group]
        if symmetric:
            assert torch.equal(scales[:, g], fp16_up(block.abs().amax(1) / 7))
        else:
            assert (mins[:, g].float() <= block.amin(1)).all() and (mins[:, g].float() > block.amin(1) - 1e-3).all()
            assert torch.equal(scales[:, g], fp16_up((block.amax(1) - mins[:, g].float()) / 15))
    if symmetric:
        assert mins is None and int(q.min()) >= 1 and int(q.max()) == 15  # q - 8 in [-7, 7]
    else:
        assert int(q.min()) == 0 and int(q.max()) == 15
    stored = qt.dequantize_int4(packed, scales, mins, cols, group)
    assert half_step_bound(w, stored, scales, group)


@pytest.mark.parametrize("group", [32, 64])
def test_int8_groups_and_asymmetric(group):
    w = weights(10, 100) + 0.05  # off-centre rows: the asymmetric grid covers [min, max] only
    q, scales, mins = qt.quantize_int8(w, group, symmetric=False)
    assert q.dtype == torch.uint8 and scales.shape == mins.shape == (10, -(-100 // group))
    stored = qt.dequantize_int8(q, scales, mins, group)
    assert half_step_bound(w, stored, scales, group)
    sym = qt.dequantize_int8(*qt.quantize_int8(w, group), group)
    assert (stored - w).abs().mean() < (sym - w).abs().mean()  # same bits, a finer grid over the range


def test_int4_packing_is_exact_and_documented():
    n = torch.randint(0, 16, (7, 131), dtype=torch.uint8)  # 131: two whole chunks and a padded third
    assert torch.equal(qt.unpack_int4(qt.pack_int4(n), 131), n)
    assert qt.pack_int4(n).shape == (7, 96)
    # chunk of 64: the 16-bit little-endian word i holds weight 16k + i in bits 4k..4k+3
    one = torch.zeros(1, 64, dtype=torch.uint8)
    one[0, 0], one[0, 16], one[0, 32], one[0, 48], one[0, 5] = 1, 2, 3, 4, 15
    packed = qt.pack_int4(one)[0].tolist()
    assert packed[0:2] == [0x21, 0x43] and packed[10:12] == [0x0F, 0x00] and sum(packed) == 0x21 + 0x43 + 0x0F


# ---- layers: forward against F.linear on the dequantized weight ------------------------------
def linear(in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    layer = nn.Linear(in_features, out_features, bias=bias)
    layer.weight.data = weights(out_features, in_features)
    return layer


SPECS = [
    QuantSpec("int8"), QuantSpec("int8", 32, scheme="asymmetric"), QuantSpec("int4", 32),
    QuantSpec("int4", 64, scheme="symmetric"), QuantSpec("int4", 128), QuantSpec("int4", 256, scheme="symmetric"),
]  # fmt: skip


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_quantized_linear_equals_f_linear_on_dequantized_weight(spec):
    layer = linear(96, 48)
    q = QuantizedLinear.from_linear(layer, spec)
    x = torch.randn(3, 5, 96)
    dq = q.dequantize()
    assert torch.equal(q(x), F.linear(x, dq, layer.bias))  # the reference path (no kernels asked for)
    assert half_step_bound(layer.weight.detach(), dq, q.scales, q.group_size)


needs_kernels = pytest.mark.skipif(not kernels.available(), reason=f"C kernels not built: {cpu_kernels.reason()}")


@needs_kernels
@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize("shape", [(352, 96), (37, 5), (576, 33), (1000, 7), (48, 9)])
@pytest.mark.parametrize("threads", [1, 2])
def test_kernels_match_dequantize_then_matmul_in_fp64(spec, shape, threads):
    # odd shapes: 37 and 1000 inputs end in a partial chunk and a partial group, 5/7/33 outputs split
    # unevenly between threads; 1 to 8 rows covers one and two register blocks of 4. int8 rows of whole
    # groups of 16k inputs (352, 576, 48) take the pre-scaled path, 48 per channel with a last 16 alone
    in_features, out_features = shape
    q = use_kernels(QuantizedLinear.from_linear(linear(in_features, out_features, bias=False), spec))
    assert q.kernel
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for rows in (1, 3, 4, 5, 8):
            x = torch.randn(rows, in_features)
            reference = x.double() @ q.dequantize(torch.float64).T
            error = (q.kernel_matmul(x).double() - reference).abs().max() / reference.abs().max()
            assert error <= 1e-5, (rows, float(error))
    finally:
        torch.set_num_threads(before)


@needs_kernels
@pytest.mark.parametrize("spec", [QuantSpec("int8"), QuantSpec("int4", 32), QuantSpec("int4", 128)], ids=str)
def test_kernels_take_bf16_activations(spec):
    q = QuantizedLinear.from_linear(linear(352, 96), spec).to(torch.bfloat16)
    use_kernels(q)
    x = torch.randn(5, 352).to(torch.bfloat16)
    fast = q.kernel_matmul(x)
    assert fast.dtype == torch.bfloat16
    reference = (x.double() @ q.dequantize(torch.float64).T).to(torch.bfloat16)  # fp32 arithmetic, one rounding
    torch.testing.assert_close(fast.float(), reference.float(), atol=1e-2, rtol=1e-2)


@needs_kernels
def test_bf16_kernel_matches_fp64():
    w = weights(97, 130).bfloat16()
    for rows in (1, 5):
        x = torch.randn(rows, 130)
        reference = x.double() @ w.double().T
        error = (kernels.bf16_mm(x, w).double() - reference).abs().max() / reference.abs().max()
        assert error <= 1e-5


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_kernels_run_for_few_rows_and_the_reference_for_many(method):
    q = QuantizedLinear.from_linear(linear(64, 32, bias=False), QuantSpec(method))
    use_kernels(q)
    limit = KERNEL_MAX_ROWS[method]  # int4's kernel re-decodes the weights per 4 rows: a lower limit
    one, many = torch.randn(1, 1, 64), torch.randn(3, limit, 64)  # 1 row; 3 x the limit
    assert q.kernel == kernels.available()
    if q.kernel:
        assert torch.equal(q(one), q.kernel_matmul(one))
        assert q.takes_kernel(torch.randn(limit, 64)) and not q.takes_kernel(torch.randn(limit + 1, 64))
    assert torch.equal(q(many), F.linear(many, q.dequantize()))
    use_kernels(q, False)
    assert torch.equal(q(one), F.linear(one, q.dequantize()))


def test_without_the_c_kernels_the_torch_path_runs(monkeypatch):
    monkeypatch.setattr(kernels, "available", lambda: False)
    q = use_kernels(QuantizedLinear.from_linear(linear(64, 32), QuantSpec("int4", 32)))
    assert not q.kernel
    x = torch.randn(1, 64)
    assert torch.equal(q(x), F.linear(x, q.dequantize(), q.bias))


def test_stored_buffers_keep_their_dtype_under_to():
    q = QuantizedLinear.from_linear(linear(64, 32), QuantSpec("int4", 32))
    stored = {name: t.clone() for name, t in q.state_dict().items() if name != "bias"}
    q.to(torch.bfloat16)
    assert q.bias.dtype == torch.bfloat16 and q.compute_dtype == torch.bfloat16
    for name, t in stored.items():
        assert torch.equal(q.state_dict()[name], t), name  # scales stay fp16: the weights do not change
    q.to("cpu")  # a move alone keeps the dtype asked for before
    assert q.compute_dtype == torch.bfloat16
    q.float()
    assert q.compute_dtype == torch.float32


def test_quantized_embedding_dequantizes_the_rows_it_reads():
    table = nn.Embedding(50, 64)
    table.weight.data = weights(50, 64)
    q = QuantizedEmbedding.from_embedding(table, QuantSpec("int4", 32))
    ids = torch.tensor([[3, 1, 49], [0, 0, 7]])
    assert torch.equal(q(ids), q.dequantize()[ids])
    assert q(ids).shape == (2, 3, 64)


# ---- whole models ----------------------------------------------------------------------------
TINY = dict(vocab_size=320, d_model=64, n_layer=2, n_head=4, max_seq_len=64)


def tiny(family: str = "tiny-gpt-1m", **overrides) -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig.from_name(family, **{**TINY, **overrides})).eval()


def test_tied_head_shares_the_quantized_table():
    model = quantize_model(tiny(), QuantSpec("int8"))
    assert isinstance(model.embed.tokens, QuantizedEmbedding)
    assert isinstance(model.lm_head, TiedQuantizedHead) and model.lm_head.table is model.embed.tokens
    keys = set(model.state_dict())
    assert {"embed.tokens.qweight", "embed.tokens.scales"} <= keys and not any(k.startswith("lm_head") for k in keys)
    assert "embed.positions.weight" in keys  # position embeddings stay float
    assert model.stack.layers[0].attn.q.qweight.dtype == torch.int8
    ids = torch.tensor([[1, 2, 3]])
    hidden = model(ids).last_hidden_state
    assert torch.equal(model(ids).logits, F.linear(hidden, model.embed.tokens.dequantize()))


def test_untied_head_and_kept_embeddings():
    untied = quantize_model(tiny(tie_embeddings=False), QuantSpec("int4", 32))
    assert isinstance(untied.lm_head, QuantizedLinear) and isinstance(untied.embed.tokens, QuantizedEmbedding)
    kept = quantize_model(tiny(), QuantSpec("int8", embeddings=False))
    # the tied matrix stays float for both uses (quantizing only the head would store it twice)
    assert type(kept.embed.tokens) is nn.Embedding and type(kept.lm_head) is nn.Linear
    assert kept.lm_head.weight is kept.embed.tokens.weight
    assert isinstance(kept.stack.layers[0].mlp.up, QuantizedLinear)


def assert_same_outputs(a: nn.Module, b: nn.Module, family: str) -> None:
    ids = torch.tensor([[5, 6, 7, 8]])
    kwargs = {"decoder_input_ids": ids[:, :2]} if family.startswith("tiny-t5") else {}
    with torch.no_grad():
        assert torch.equal(a(ids, **kwargs).logits, b(ids, **kwargs).logits)


@pytest.mark.parametrize("family", ["tiny-gpt-1m", "tiny-llama-10m", "tiny-bert-1m", "tiny-t5-1m"])
@pytest.mark.parametrize("spec", [QuantSpec("int8"), QuantSpec("int4", 32)])
def test_save_load_round_trip(tmp_path, family, spec):
    model = quantize_model(tiny(family), spec)
    model.quantization = spec
    checkpoint.save(model, tmp_path / "q")
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert config["quantization"]["method"] == spec.method and config["quantization"]["bits"] == spec.bits
    loaded = llmkit.load(tmp_path / "q")
    assert loaded.quantization == spec
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    use_kernels(loaded, False)  # compare the same path on both
    assert_same_outputs(model, loaded, family)


def test_load_casts_and_overrides_dtype(tmp_path):
    model = quantize_model(tiny(), QuantSpec("bf16"))
    model.quantization = QuantSpec("bf16")
    checkpoint.save(model, tmp_path / "b")
    assert next(llmkit.load(tmp_path / "b").parameters()).dtype == torch.bfloat16
    assert next(llmkit.load(tmp_path / "b", dtype=torch.float32).parameters()).dtype == torch.float32


def test_int8_model_in_bf16_runs_the_kernels(tmp_path):
    model = quantize_model(tiny(), QuantSpec("int8"))
    model.quantization = QuantSpec("int8")
    checkpoint.save(model, tmp_path / "q")
    loaded = llmkit.load(tmp_path / "q", dtype=torch.bfloat16)
    assert loaded.embed.tokens.kernel == kernels.available() and loaded.embed.tokens.compute_dtype == torch.bfloat16
    assert loaded.embed.tokens.scales.dtype == torch.float16  # the stored scales are not cast
    ids = torch.tensor([[5]])
    fast = loaded(ids).logits
    reference = use_kernels(loaded, False)(ids).logits
    torch.testing.assert_close(fast.float(), reference.float(), atol=3e-2, rtol=3e-2)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny llmkit checkpoint with a tokenizer."""
    from llmkit.data.tokenizer_train import train_tokenizer

    texts = ["the cat sat on the mat", "a dog ran in the park", "def f(x): return x + 1"] * 20
    tokenizer = train_tokenizer(texts, kind="bpe", vocab_size=TINY["vocab_size"])
    return checkpoint.save(tiny(), tmp_path_factory.mktemp("src") / "model", tokenizer=tokenizer)


def test_quantize_checkpoint_report_and_generation(source, tmp_path):
    report = quantize_checkpoint(source, tmp_path / "q4", QuantSpec("int4"))
    assert report.spec.group_size == 32 and report.spec.scheme == "asymmetric"
    # 5 bits a weight (4, and an fp16 scale and min per 32) against 32, plus the float norms and positions
    assert report.out_bytes < 0.22 * report.source_bytes and report.ratio == report.out_bytes / report.source_bytes
    # the error the report states, recomputed from the files: each stored int4 matrix dequantized against
    # the source's float weight, ||W - dq(q(W))|| / ||W||, the worst of them
    before = checkpoint.read_weights(source / checkpoint.WEIGHTS)
    after = checkpoint.read_weights(tmp_path / "q4" / checkpoint.WEIGHTS)
    errors = {}
    for key in (k for k in after if k.endswith(".qweight")):
        name = key.removesuffix(".qweight")
        w = before[f"{name}.weight"].double()
        dq = qt.dequantize_int4(after[key], after[f"{name}.scales"], after[f"{name}.mins"], w.shape[1], 32).double()
        errors[f"{name}.weight"] = float((w - dq).norm() / w.norm())
    assert report.tensors == len(errors) and report.weights == sum(before[n].numel() for n in errors)
    assert report.max_error_at == max(errors, key=errors.get)
    assert report.max_error == pytest.approx(errors[report.max_error_at], rel=1e-9)
    model = llmkit.load(tmp_path / "q4")
    assert model.tokenizer is not None and model.generation_config is not None
    fast = llmkit.generate(model, "the cat", max_new_tokens=8)[0]
    reference = llmkit.generate(use_kernels(model, False), "the cat", max_new_tokens=8)[0]
    assert len(fast.token_ids) == 8 and fast.token_ids == reference.token_ids


def test_loader_rejects_damaged_quantized_files(source, tmp_path):
    quantize_checkpoint(source, tmp_path / "q", QuantSpec("int8"))
    path = tmp_path / "q" / checkpoint.WEIGHTS
    tensors = load_file(path)
    save_file({**tensors, "embed.tokens.qweight": tensors["embed.tokens.qweight"].float()}, path)
    with pytest.raises(LlmkitError, match="embed.tokens.qweight' has dtype torch.float32"):
        llmkit.load(tmp_path / "q", verify=False)  # the checks behind the manifest
    save_file({k: v for k, v in tensors.items() if k != "stack.layers.0.attn.q.scales"}, path)
    with pytest.raises(LlmkitError, match="missing tensor 'stack.layers.0.attn.q.scales'"):
        llmkit.load(tmp_path / "q", verify=False)  # the checks behind the manifest
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    (tmp_path / "q" / "config.json").write_text(json.dumps({**config, "quantization": {"method": "int3"}}))
    with pytest.raises(LlmkitError, match="invalid quantization entry"):
        llmkit.load(tmp_path / "q", verify=False)  # the checks behind the manifest


# ---- CLI -------------------------------------------------------------------------------------
def test_cli_quantize_and_inspect(source, tmp_path, capsys):
    out = tmp_path / "q8"
    assert main(["quantize", str(source), "--to", "int8", str(out)]) == 0  # OUT after the options
    assert "int8: " in capsys.readouterr().out
    assert main(["inspect", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["quantization"].startswith("int8, per output channel")
    # int8 weights, plus fp32 scales, norms, biases and position embeddings (large in a model this small)
    assert report["stored dtype"] == "float16,float32,int8" and report["file size vs fp32 weights"] < 0.35
    assert main(["quantize", "--to", "fp16", str(source), str(tmp_path / "h")]) == 0
    assert llmkit.load(tmp_path / "h").lm_head.weight.dtype == torch.float16


@pytest.mark.parametrize(
    "argv,message",
    [
        ("{src} --to int3 {out}", "unknown quantization 'int3'"),
        ("{src} --to int4 --group-size 48 {out}", "group size 48 is not supported"),
        ("{src} --to fp16 --group-size 64 {out}", "--group-size and --scheme apply to int8 and int4"),
        ("{src} --to int8 {exists}", "already exists"),
        ("{quantized} --to int8 {out}", "already quantized"),
        ("{src} --to int8", "MODEL, --to and OUT are required"),
        ("{src} {out} --explain 1", "--explain takes no MODEL, OUT or --to"),
    ],
)
def test_cli_errors_are_one_line_exit_2(source, tmp_path, capsys, argv, message):
    (tmp_path / "exists").mkdir()
    if "{quantized}" in argv:
        quantize_checkpoint(source, tmp_path / "quantized", QuantSpec("int8"))
    paths = {"src": source, "out": tmp_path / "out", "exists": tmp_path / "exists", "quantized": tmp_path / "quantized"}
    assert main(["quantize", *argv.format(**{k: str(v) for k, v in paths.items()}).split()]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llmkit quantize: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_to_hf_refuses_an_integer_checkpoint(source, tmp_path, capsys):
    quantize_checkpoint(source, tmp_path / "q", QuantSpec("int8"))
    assert main(["convert", "--to-hf", str(tmp_path / "q"), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "quantized to int8" in err and err.count("\n") == 1 and not (tmp_path / "hf").exists()


def test_cli_error_in_a_real_process_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "llmkit", "quantize", str(tmp_path / "none"), "--to", "int8",
                          str(tmp_path / "o")], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


# ---- --explain -------------------------------------------------------------------------------
def test_explain_pi_bits():
    fp32, fp16, bf16, int8, int4 = explain(3.141592653589793)
    assert (fp16.fields["sign"], fp16.fields["exponent"], fp16.fields["fraction"]) == ("0", "10000", "1001001000")
    assert (bf16.fields["sign"], bf16.fields["exponent"], bf16.fields["fraction"]) == ("0", "10000000", "1001001")
    assert fp16.stored == bf16.stored == 3.140625
    # fp32 bits from the standard library, independently of torch
    word = struct.unpack(">I", struct.pack(">f", 3.141592653589793))[0]
    assert "".join(fp32.fields.values()) == format(word, "032b")
    assert fp32.stored == struct.unpack(">f", struct.pack(">f", 3.141592653589793))[0]
    # int8 with absmax 4: scale fp16(4/127) = 0.031494140625, q = round(pi / scale) = round(99.75) = 100
    assert int8.fields["q"].startswith("100 = 01100100")
    assert int8.stored == 100 * 0.031494140625 and int8.abs_error <= 0.031494140625 / 2
    assert int4.fields["q"].startswith("5, nibble 1101")  # round(pi * 7 / 4) = 5, stored 5 + 8
    assert abs(fp16.rel_error - abs(3.140625 - 3.141592653589793) / 3.141592653589793) < 1e-15


def test_explain_special_values():
    assert float_bits(70000.0, "fp16").stored == float("inf")  # beyond fp16's 65504
    assert float_bits(1e-6, "fp16").fields["exponent"] == "00000"  # subnormal in fp16
    assert float_bits(-2.0, "bf16").fields == {"sign": "1", "exponent": "10000000", "fraction": "0000000"}


def test_cli_explain(capsys):
    assert main(["quantize", "--explain", "3.141592653589793"]) == 0
    out = capsys.readouterr().out
    assert out == explain_table(3.141592653589793) + "\n"
    assert "0     10000     1001001000" in out and "3.140625" in out
    assert main(["quantize", "--explain", "pi"]) == 2
    assert "not a number" in capsys.readouterr().err


@needs_kernels
def test_bf16_linears_take_the_kernel_for_decoding_steps():
    from llmkit.inference import generate
    from llmkit.inference.runners import use_decode_layout
    from llmkit.quantize import Bf16Linear

    model = tiny("tiny-llama-10m").to(torch.bfloat16)
    reference = [r.token_ids for r in generate(model, [[5, 6, 7], [9, 10, 11]], max_new_tokens=6)]
    use_decode_layout(model)  # generate does this too: every bf16 linear gets the kernel's forward
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is Bf16Linear for m in linears)
    layer = model.stack.layers[0].mlp.up
    x = torch.randn(2, layer.in_features).to(torch.bfloat16)
    expected = (x.double() @ layer.weight.double().T).to(torch.bfloat16)  # fp32 sums, one rounding
    torch.testing.assert_close(layer(x).float(), expected.float(), atol=1e-2, rtol=1e-2)
    with torch.enable_grad():
        xg = x.float().requires_grad_().to(torch.bfloat16)
        assert torch.equal(layer(xg), F.linear(xg, layer.weight, layer.bias))  # training keeps F.linear
    fast = [r.token_ids for r in generate(model, [[5, 6, 7], [9, 10, 11]], max_new_tokens=6)]
    assert fast == reference  # a tiny random model's greedy tokens: no near ties at these sizes
    use_kernels(model, False)
    assert not layer.kernel and torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


@needs_kernels
@pytest.mark.parametrize("spec", [QuantSpec("int4"), QuantSpec("int8", 32, scheme="asymmetric")], ids=str)
def test_projections_of_one_input_share_a_kernel_call(spec, monkeypatch):
    from llmkit.models.layers import project

    layers = [QuantizedLinear.from_linear(linear(96, out), spec) for out in (64, 32, 32)]
    use_kernels(nn.ModuleList(layers))
    x = torch.randn(1, 3, 96)
    calls = []
    real = kernels._quantized_mm
    monkeypatch.setattr(kernels, "_quantized_mm", lambda *a: calls.append(len(a[1])) or real(*a))
    fused = project(x, *layers)
    assert calls == [3]  # one call for the three matrices
    for y, layer in zip(fused, layers, strict=True):
        assert torch.equal(y, layer(x))  # bit for bit the separate calls
    layers[2].use_kernel(False)  # one layer off the kernel: each runs on its own path
    calls.clear()
    assert all(torch.equal(y, m(x)) for y, m in zip(project(x, *layers), layers, strict=True))
    assert 3 not in calls


@needs_kernels
@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize("shape", [(352, 37), (37, 5), (1000, 7), (40, 6)])
def test_c_dequantize_equals_the_torch_reading_bit_for_bit(spec, shape):
    # 37, 40 and 1000 inputs end inside a 16-weight vector and a group: the vector path's masked tail
    q = QuantizedLinear.from_linear(linear(*shape), spec)
    reference = q.dequantize()  # not on the kernels: torch's reading
    use_kernels(q)
    assert torch.equal(q.dequantize(), reference)


@needs_kernels
@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_many_bf16_rows_use_the_c_values_rounded_once(spec):
    """A bf16 input of more rows than the kernels take (a server's batch) multiplies the C dequantizer's
    fp32 values rounded once to bf16: within half a bf16 step of the exact weights, where torch's own bf16
    reading rounds the scales too."""
    q = QuantizedLinear.from_linear(linear(352, 37, bias=False), spec)
    exact = q.dequantize(torch.float64)
    use_kernels(q)
    w = q.dequantize(torch.bfloat16)
    assert w.dtype == torch.bfloat16 and torch.equal(w, exact.float().to(torch.bfloat16))
    x = torch.randn(KERNEL_MAX_ROWS[spec.method] + 1, 352, dtype=torch.bfloat16)
    assert not q.takes_kernel(x)
    assert torch.equal(q(x), F.linear(x, w))


KERNEL_CHECK = """
import torch
from torch import nn
from llmkit.quantize import QuantSpec, QuantizedLinear, kernels, use_kernels
torch.manual_seed(0)
worst = 0.0
for spec in (QuantSpec("int4"), QuantSpec("int4", 64, scheme="symmetric"), QuantSpec("int8"),
             QuantSpec("int8", 32, scheme="asymmetric")):
    for shape in ((352, 96), (37, 5), (1000, 7)):
        q = use_kernels(QuantizedLinear.from_linear(nn.Linear(*shape, bias=False), spec))
        assert q.kernel
        for rows in (1, 5):
            x = torch.randn(rows, shape[0])
            ref = x.double() @ q.dequantize(torch.float64).T
            worst = max(worst, float((q.kernel_matmul(x).double() - ref).abs().max() / ref.abs().max()))
        exact = q.dequantize(torch.float64).float()  # the C dequantizer of this build, fp32 and bf16
        assert torch.equal(q.dequantize(torch.float32), exact), (spec, shape)
        assert torch.equal(q.dequantize(torch.bfloat16), exact.bfloat16()), (spec, shape)
w = torch.randn(33, 130).bfloat16()
x = torch.randn(3, 130)
ref = x.double() @ w.double().T
worst = max(worst, float((kernels.bf16_mm(x, w).double() - ref).abs().max() / ref.abs().max()))
print(worst)
"""


@pytest.mark.slow  # builds the library twice more (~20 s)
@pytest.mark.parametrize("arch", ["-mavx2 -mfma -mf16c", "-march=x86-64"], ids=["avx2", "portable"])
def test_every_vector_path_matches_the_reference(arch, tmp_path):
    # the AVX2 and the portable C paths of cpu_matmul.c, built for this machine with other target flags
    import os

    if cpu_kernels.library() is None:
        pytest.skip(f"C kernels not built: {cpu_kernels.reason()}")
    env = {**os.environ, cpu_kernels.ARCH_ENV: arch, "XDG_CACHE_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", KERNEL_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip()) <= 1e-5


@needs_kernels
@pytest.mark.slow  # compiles a decoding step (~10-30 s)
@pytest.mark.parametrize("spec", [QuantSpec("int4"), QuantSpec("int8")], ids=str)
def test_compiled_decoding_calls_the_kernels_and_matches_eager(spec):
    from torch.profiler import profile

    from llmkit.inference import generate

    torch._dynamo.reset()  # a fresh compile: past torch's 8 graphs per step function it would run eagerly
    model = use_kernels(quantize_model(tiny("tiny-llama-10m"), spec))
    prompts = [[5, 6, 7], [9, 10, 11]]
    eager = [r.token_ids for r in generate(model, prompts, max_new_tokens=8)]
    with profile() as run:  # eager calls reach the C function directly; compiled graphs call the op
        compiled = [r.token_ids for r in generate(model, prompts, max_new_tokens=8, compile=True)]
    assert compiled == eager
    assert "llmkit::quantized_mm" in {event.key for event in run.key_averages()}  # not a dequantized matrix
