"""Calibrated quantization end to end: the GPTQ driver on a whole model (layout, output errors recomputed
from the model's own activations), the calibration text split, a calibrated checkpoint through
llmkit.load and the kernels, the perplexity report recomputed, and `llmkit quantize --calibrate`."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import llmkit
from llmkit.cli import main
from llmkit.config import ModelConfig
from llmkit.evaluate.quantized import PerplexityChange, quantize_and_measure
from llmkit.models import build_model
from llmkit.quantize import QuantizedLinear, QuantSpec, gptq, kernels, quantize_model, use_kernels
from llmkit.quantize.calibrate import calibrate_model
from llmkit.quantize.calibration import CalibrationSet, calibration_set
from llmkit.quantize_checkpoint import quantize_checkpoint

TEXT = " ".join(f"line {i}: the {w} sat on a mat and a dog ran to the {w}." for i, w in enumerate(["cat", "log"] * 150))


def llama(**overrides) -> torch.nn.Module:
    """A random tiny Llama-style decoder (RMSNorm, SwiGLU, RoPE, grouped-query attention, tied head)."""
    torch.manual_seed(0)
    cfg = dict(vocab_size=300, d_model=64, n_layer=2, n_head=4, n_kv_head=2, d_ff=160, max_seq_len=64)
    return build_model(ModelConfig.from_name("tiny-llama-10m", **{**cfg, **overrides})).eval()


def windows(n: int = 16, t: int = 48, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 300, (n, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("spec", [QuantSpec("int4"), QuantSpec("int4", 64, scheme="symmetric"), QuantSpec("int8")])
def test_calibrated_model_has_quantize_models_layout_and_smaller_output_errors(spec):
    ids = windows()
    model = llama()
    rounded = quantize_model(llama(), spec)
    stats = calibrate_model(model, spec, ids, progress=False)
    # the same modules, buffers, shapes and dtypes as round-to-nearest: only the stored integers differ
    ours, theirs = model.state_dict(), rounded.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(ours[k].shape == theirs[k].shape and ours[k].dtype == theirs[k].dtype for k in ours)
    assert model.lm_head.table is model.embed.tokens  # the tie kept
    # every linear and the tied table, each better than round-to-nearest on its calibration inputs
    assert len(stats.gptq_error) == 2 * 7 + 1 and "embed.tokens" in stats.gptq_error
    for name, error in stats.gptq_error.items():
        assert error < stats.rtn_error[name], name
    assert stats.error_ratio() < 0.9 and stats.tokens == ids.numel()
    # the first block's q error recomputed from its real inputs: attn_norm(embeddings), untouched by GPTQ
    float_model = llama().requires_grad_(False)
    x = float_model.stack.layers[0].attn_norm(float_model.embed(ids)).reshape(-1, 64).double()
    q = model.stack.layers[0].attn.q
    d = float_model.stack.layers[0].attn.q.weight.double() - q.dequantize().double()
    assert stats.gptq_error["stack.layers.0.attn.q"] == pytest.approx(float(((x @ d.T) ** 2).sum() / len(x)), rel=1e-6)
    # the whole model: logits on the calibration windows closer to the float model's than RTN's
    with torch.no_grad():
        reference = float_model(ids).logits
        assert F.mse_loss(model(ids).logits, reference) < F.mse_loss(rounded(ids).logits, reference)


def test_untied_head_and_layers_kept_in_float():
    spec = QuantSpec("int4", overrides={"stack.layers.1.mlp.down": None})
    model = llama(tie_embeddings=False)
    stats = calibrate_model(model, spec, windows(8), progress=False)
    assert isinstance(model.lm_head, QuantizedLinear) and "lm_head" in stats.gptq_error
    assert type(model.stack.layers[1].mlp.down) is torch.nn.Linear  # the override keeps it float
    assert "stack.layers.1.mlp.down" not in stats.gptq_error
    assert "embed.tokens" not in stats.gptq_error  # an untied table is only looked up: rounded to nearest
    assert torch.equal(
        model.embed.tokens.qweight, quantize_model(llama(tie_embeddings=False), spec).embed.tokens.qweight
    )


class CountingTokenizer:
    """encode(text) -> 0, 1, 2, ...: a token's id is its position, so windows show where they came from."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(range(len(text.split())))


def test_calibration_windows_never_read_the_held_out_tokens(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(" ".join(["w"] * 1000))
    data = calibration_set(CountingTokenizer(), path, samples=200, window=50, eval_tokens=64)
    assert data.calibration_tokens == 900 and data.held_out == list(range(900, 964))
    assert data.windows.shape == (200, 50) and int(data.windows.max()) < 900
    assert torch.equal(data.windows[:, 1:] - data.windows[:, :-1], torch.ones(200, 49, dtype=torch.long))
    again = calibration_set(CountingTokenizer(), path, samples=200, window=50, eval_tokens=64)
    assert torch.equal(data.windows, again.windows)  # seeded
    assert calibration_set(CountingTokenizer(), path, samples=0, window=50).windows is None
    with pytest.raises(llmkit.LlmkitError, match="fewer than one window"):
        calibration_set(CountingTokenizer(), path, samples=4, window=901)


@pytest.fixture(scope="module")
def source(tiny_checkpoint):
    return tiny_checkpoint("tiny-llama-10m", window=64, n_kv_head=2)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "calibration.txt"
    path.write_text(TEXT)
    return path


def test_calibrated_checkpoint_loads_and_runs_through_the_kernels(source, text_file, tmp_path):
    model = llmkit.load(source)
    data = calibration_set(model.tokenizer, text_file, samples=8, window=32)
    report = quantize_checkpoint(source, tmp_path / "q", QuantSpec("int4"), data, progress=False)
    assert report.calibration is not None and "GPTQ on 256 calibration tokens" in report.summary()
    assert "GPTQ on 8 windows of 32 tokens" in (tmp_path / "q" / "README.md").read_text()
    loaded = llmkit.load(tmp_path / "q")
    calibrate_model(model, QuantSpec("int4"), data.windows, progress=False)  # the same, in memory
    ids = torch.tensor([data.held_out[:20]])
    with torch.no_grad():
        # through the C kernels (where built) against dequantize-then-F.linear
        assert loaded.stack.layers[0].mlp.down.kernel == kernels.available()
        fast = loaded(ids).logits
        reference = use_kernels(loaded, False)(ids).logits
        torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
        assert torch.equal(reference, use_kernels(model, False)(ids).logits)  # the file holds what GPTQ chose
    text = llmkit.generate(loaded, "the cat", max_new_tokens=5)[0]
    assert len(text.token_ids) == 5


def single_window_perplexity(model: torch.nn.Module, ids: list[int]) -> float:
    """exp(mean next-token cross-entropy) over one window holding all of ``ids``: the closed form."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].double()
    return math.exp(float(F.cross_entropy(logits, torch.tensor(ids[1:]))))


def test_perplexity_report_recomputed(source, text_file, tmp_path):
    spec = QuantSpec("int4", scheme="symmetric")
    report, change, skipped = quantize_and_measure(
        source, tmp_path / "q", spec, str(text_file), samples=8, eval_tokens=64, progress=False
    )
    assert skipped is None and report.calibration is not None
    # the held-out sample: the first 64 tokens of the text's last 10%, in one window of the model's 64
    tokenizer = llmkit.load(source).tokenizer
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    held_out = ids[int(len(ids) * 0.9) :][:64]
    assert change.tokens == 63
    assert change.float_ppl == pytest.approx(single_window_perplexity(llmkit.load(source), held_out), rel=1e-5)
    assert change.result_ppl == pytest.approx(single_window_perplexity(llmkit.load(tmp_path / "q"), held_out), rel=1e-5)
    rounded = quantize_model(llmkit.load(source), spec)
    assert change.rtn_ppl == pytest.approx(single_window_perplexity(rounded, held_out), rel=1e-5)
    assert change.result_ppl != change.rtn_ppl
    lines = change.lines("int4")
    assert f"{change.change(change.result_ppl):+.2%}" in lines[0] and "rounded to nearest" in lines[1]


def test_warning_above_ten_percent():
    assert PerplexityChange("s", 10, 20.0, 21.9).warning() is None  # +9.5%
    warned = PerplexityChange("s", 10, 20.0, 22.2).warning()
    assert warned.startswith("warning: perplexity up 11.0%") and "--calibrate" in warned
    assert "--calibrate" not in PerplexityChange("s", 10, 20.0, 30.0, rtn_ppl=40.0).warning()
    assert len(warned.splitlines()) == 1


def test_cli_calibrate_prints_the_report(source, text_file, tmp_path, capsys):
    out = tmp_path / "q"
    argv = ["quantize", str(source), "--to", "int4", "--calibrate", str(text_file), "--calibration-samples", "4",
            "--eval-tokens", "64", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "GPTQ on 256 calibration tokens" in printed and "output error on those tokens is" in printed
    assert f"perplexity on 64 held-out tokens (from the last 10%) of {text_file}" in printed
    assert "same format rounded to nearest (no calibration)" in printed
    assert llmkit.load(out).quantization.method == "int4"
    # without --calibrate: round to nearest, scored on the built-in text's held-out tokens
    assert main(["quantize", str(source), "--to", "int8", "--eval-tokens", "64", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    assert "held-out tokens (from the last 10%) of the Python reference documentation" in printed
    assert "rounded to nearest" not in printed and "GPTQ" not in printed


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--to", "fp16", "--calibrate", "builtin"], "--calibrate applies to int8 and int4"),
        (["--to", "int4", "--calibrate", "no-such-file.txt"], "no such file"),
        (["--to", "int4", "--calibrate", "{text}", "--calibration-samples", "0"], "at least 1"),
    ],
)
def test_cli_calibrate_errors_are_one_line(source, text_file, tmp_path, capsys, extra, message):
    argv = ["quantize", str(source), *[a.format(text=text_file) for a in extra], str(tmp_path / "q")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) <= 2  # the message and its hint
    assert not (tmp_path / "q").exists()


def test_report_skipped_for_an_encoder(tiny_checkpoint, tmp_path):
    bert = tiny_checkpoint("tiny-bert-1m", window=64)
    _, change, skipped = quantize_and_measure(bert, tmp_path / "q", QuantSpec("int8"), progress=False)
    assert change is None and "decoder-only language model" in skipped


def test_output_error_is_the_hessian_quadratic_form():
    x = torch.randn(50, 8, dtype=torch.float64)
    h = gptq.Hessian(8)
    h.add(x)
    w, q = torch.randn(3, 8), torch.randn(3, 8)
    direct = float(((x @ (w - q).double().T) ** 2).sum() / 50)
    assert gptq.output_error(w, q, h.value()) == pytest.approx(direct, rel=1e-6)


def test_calibration_set_describes_itself():
    data = CalibrationSet("SRC", torch.zeros(4, 16, dtype=torch.long), [1, 2], 900)
    assert data.describe() == "4 windows of 16 tokens from the first 90% (900 tokens) of SRC"


def test_encoder_with_a_tied_mlm_head():
    # BERT-style: post-norm blocks, the MLM head's dense layer and its decoder tied to the word embeddings
    cfg = ModelConfig.from_name("tiny-bert-1m", vocab_size=300, d_model=64, n_layer=2, n_head=4, max_seq_len=64)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    torch.manual_seed(0)
    rounded = quantize_model(build_model(cfg).eval(), QuantSpec("int8"))
    stats = calibrate_model(model, QuantSpec("int8"), windows(8), progress=False)
    assert model.state_dict().keys() == rounded.state_dict().keys()
    assert {"mlm_head.dense", "embed.tokens", "stack.layers.1.mlp.down"} <= stats.gptq_error.keys()
    assert all(stats.gptq_error[n] <= stats.rtn_error[n] for n in stats.gptq_error)
