"""GGUF file <-> llmkit checkpoint directory.

``from_gguf``: metadata -> ModelConfig, every tensor dequantized to fp32 (the 4-5-bit quantization
error of the file stays in the weights) or, with ``dtype="quantized"``, Q4_0/Q4_1/Q8_0 matrices kept as
llmkit int4/int8 bit for bit (llmkit.gguf.quantized), Q/K un-permuted for ``llama``, the tokenizer rebuilt from
the vocabulary, the chat template into tokenizer_config.json; saved atomically by llmkit.checkpoint.
``to_gguf``: an llmkit Llama-style decoder -> a GGUF file written with gguf.GGUFWriter into a
temporary file renamed into place.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from llmkit import checkpoint
from llmkit.config import GenerationConfig, ModelConfig
from llmkit.errors import LlmkitError
from llmkit.files import atomic_file
from llmkit.gguf import layout, quantized, vocab
from llmkit.gguf.layout import gguf_name
from llmkit.gguf.reader import GGUFFile, open_gguf
from llmkit.model_card import ModelCard
from llmkit.models import build_model
from llmkit.quantize import QuantSpec, quantize_model

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "quantized": torch.float32}
EXPORT_TYPES = ("f32", "f16", "bf16", "q8_0")
# eos-like ids llama.cpp stops at besides eos (end of turn, end of message)
STOP_KEYS = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")

__all__ = ["from_gguf", "to_gguf", "read_gguf", "gguf_name", "EXPORT_TYPES", "DTYPES"]


# ---- GGUF -> llmkit -----------------------------------------------------------------------------
def read_gguf(
    src: str | os.PathLike | GGUFFile, progress: bool = False, keep_quantized: bool = False
) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    """Build the model a GGUF file holds (fp32, eval mode, ``.tokenizer`` and ``.generation_config``
    attached) and return it with its tokenizer_config.json entries (None without a tokenizer).
    ``keep_quantized``: Q4_0/Q4_1/Q8_0 matrices become int4/int8 modules holding the file's bits
    (``.quantization`` says which), the rest fp32."""
    f = src if isinstance(src, GGUFFile) else open_gguf(src)
    source = str(f.path)
    layout.check_architecture(f.architecture, source)
    if "token_embd.weight" not in f.tensors:
        raise LlmkitError(f"{source}: missing tensor 'token_embd.weight'", "the file is incomplete or corrupt")
    cfg = layout.config_from_metadata(f.metadata, set(f.tensors), f.shape("token_embd.weight")[0], source)
    built = vocab.tokenizer_from_metadata(f.metadata, source)
    tokenizer, tok_config = built if built is not None else (None, None)
    model = build_model(cfg, init=False)
    spec = _quantization(f, cfg) if keep_quantized else None
    if spec is not None:
        quantize_model(model, spec, empty=True)
    checkpoint.load_state_dict_checked(model, _state_dict(f, cfg, progress, spec), f"{source} (converted)")
    model.tokenizer = tokenizer
    model.generation_config = _generation_config(f.metadata, cfg)
    model.quantization = spec
    return model.eval(), tok_config


def _matrices(f: GGUFFile, cfg: ModelConfig) -> dict[str, str]:
    """llmkit module name -> the file's tensor, for every 2-D weight (embedding table and linear layers)."""
    return {
        mine.removesuffix(".weight"): theirs
        for mine, theirs in layout.names(cfg).items()
        if mine.endswith(".weight") and theirs in f.tensors and len(f.tensors[theirs].shape) == 2
    }


def _quantization(f: GGUFFile, cfg: ModelConfig) -> QuantSpec:
    try:
        return quantized.plan(f, _matrices(f, cfg))
    except ValueError:
        types = ", ".join(sorted(f.type_counts()))
        raise LlmkitError(
            f"{f.path}: no Q4_0, Q4_1 or Q8_0 matrices to keep (tensor types {types})",
            "convert with --dtype fp32 or bf16, or re-quantize the file to Q4_0/Q4_1/Q8_0 with llama.cpp",
        ) from None


def _state_dict(f: GGUFFile, cfg: ModelConfig, progress: bool, spec: QuantSpec | None) -> dict[str, torch.Tensor]:
    """Every tensor the config needs in llmkit's layout: dequantized, or (``spec``) as stored where the
    spec keeps a matrix quantized; leftovers are an error."""
    wanted = layout.names(cfg)
    if "rope_freqs.weight" in f.tensors:  # per-frequency factors: Llama 3.1's scaled RoPE
        raise LlmkitError(
            f"{f.path}: RoPE frequency factors (rope_freqs.weight) are unsupported",
            "llmkit implements plain RoPE; Llama 3.1-style scaled RoPE files cannot be converted",
        )
    leftover = sorted(set(f.tensors) - set(wanted.values()))
    if leftover:
        raise LlmkitError(
            f"{f.path}: unexpected tensor '{leftover[0]}' ({len(leftover)} unexpected)",
            f"llmkit reads {', '.join(layout.ARCHITECTURES)} without extra layers; the metadata and tensors disagree",
        )
    kept = {module for module in _matrices(f, cfg)} if spec is not None else set()
    out = {}
    desc = "reading" if spec is not None else "dequantizing"
    for mine, theirs in tqdm(wanted.items(), desc=desc, unit="tensor", disable=not progress):
        if theirs not in f.tensors:
            raise LlmkitError(f"{f.path}: missing tensor '{theirs}'", "the file is incomplete or corrupt")
        module = mine.removesuffix(".weight")
        if module in kept and spec.for_module(module, table=module == "embed.tokens") is not None:
            _, q, scales, mins = quantized.stored(f, theirs)  # rows permuted like the float weight's
            for part, value in (("qweight", q), ("scales", scales), ("mins", mins)):
                if value is not None:
                    out[f"{module}.{part}"] = layout.tensor_from_gguf(mine, value, cfg, f.architecture)
        else:
            out[mine] = layout.tensor_from_gguf(mine, f.tensor(theirs), cfg, f.architecture)
    return out


def _generation_config(meta: dict[str, Any], cfg: ModelConfig) -> GenerationConfig:
    stops = [meta[k] for k in STOP_KEYS if k in meta and 0 <= meta[k] < cfg.vocab_size]
    return GenerationConfig.for_model(cfg).replace(eos_token_id=list(dict.fromkeys(stops)))


def from_gguf(
    src: str | os.PathLike, out: str | os.PathLike, dtype: str = "fp32", progress: bool = False,
    card: ModelCard | None = None, extra_files: dict[str, Any] | None = None,
) -> Path:  # fmt: skip
    """Convert a GGUF file (llama / qwen2) into an llmkit checkpoint directory, weights in ``dtype``.

    ``card`` (e.g. from ``llmkit models get``) replaces the model card built from the file's metadata;
    ``extra_files`` (name -> JSON content or bytes) are written beside the weights.
    """
    if dtype not in DTYPES:
        raise LlmkitError(f"dtype '{dtype}' is not valid", f"choose one of: {', '.join(DTYPES)}")
    f = open_gguf(src)
    model, tok_config = read_gguf(f, progress, keep_quantized=dtype == "quantized")
    model.to(DTYPES[dtype])
    extra = dict(extra_files or {})
    if model.tokenizer is not None:  # roles as Tokenizer.save writes them, plus what the GGUF adds
        roles = {f"{role}_token": token for role, token in model.tokenizer.special_tokens.items()}
        extra["tokenizer_config.json"] = {**roles, "tokenizer_class": "PreTrainedTokenizerFast", **tok_config}
    return checkpoint.save(model, out, extra_files=extra, card=card or converted_card(f, dtype))


def converted_card(f: GGUFFile, dtype: str, base_model: str | None = None, license_: str | None = None) -> ModelCard:
    """The card of a converted GGUF: where it came from, and that its weights carry the file's quantization."""
    meta = f.metadata
    types = ", ".join(f"{name} x{n}" for name, n in sorted(f.type_counts().items(), key=lambda kv: -kv[1]))
    name = gguf_name(meta, f.path)
    origin = base_model if base_model and "/" in base_model else None  # a Hugging Face repository id
    return ModelCard(
        how_made=f"Converted by `llmkit convert --from-gguf` from `{f.path.name}` (GGUF, architecture "
        f"{f.architecture}; tensor types {types}): "
        + (
            "Q4_0/Q4_1/Q8_0 matrices kept as llmkit int4/int8, bit for bit; the rest stored as fp32."
            if dtype == "quantized"
            else f"weights dequantized and stored as {dtype}."
        ),
        name=name,
        base_model=base_model or str(meta.get("general.basename") or name),
        license=license_ or meta.get("general.license"),
        intended_use="As the source model's own card says; the GGUF file carries no card of its own.",
        limitations=[
            "The weights hold the GGUF file's quantization error (4-5 bits per weight for Q4/Q5 types): they "
            "are what llama.cpp and transformers compute from the file, not the original checkpoint's weights.",
            "llmkit did not train this model: its training data, biases and limits are the source's.",
        ],
        aliases=[origin, origin.rsplit("/", 1)[-1]] if origin else [],  # the same weights, by their origin's name
    )


# ---- llmkit -> GGUF -----------------------------------------------------------------------------
def to_gguf(
    src: str | os.PathLike, out: str | os.PathLike, qtype: str = "f32", progress: bool = False, verify: bool = True
) -> Path:
    """Write an llmkit Llama-style decoder checkpoint as a GGUF file of type ``qtype``.

    Matrices take ``qtype`` (q8_0 where the row length is a multiple of 32, else f16, as llama.cpp
    does); norms and biases stay f32. Q/K rows are permuted for ``llama``; a model with q/k/v
    biases is written as ``qwen2``.
    """
    if qtype not in EXPORT_TYPES:
        raise LlmkitError(f"GGUF type '{qtype}' is not valid", f"choose one of: {', '.join(EXPORT_TYPES)}")
    model = checkpoint.load(src, verify=verify)  # checked against its manifest unless verify is False
    spec, cfg = model.quantization, model.config
    if spec is not None and not spec.is_cast:
        raise LlmkitError(
            f"{src} is quantized to {spec.method}; GGUF export reads float weights",
            "export the checkpoint it was quantized from, and pick --type q8_0 for a small file",
        )
    why = layout.exportable(cfg)
    if why is not None:
        raise LlmkitError(
            f"{src}: no GGUF architecture fits this model: {why}",
            "GGUF export writes Llama-style decoders (RoPE, pre-RMSNorm, SwiGLU; q/k/v biases as qwen2)",
        )
    arch = layout.architecture_for(cfg)
    meta = _export_metadata(model, Path(src), arch, qtype)
    tensors = checkpoint.unique_state_dict(model)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as tmp:
        _write(tmp, arch, meta, tensors, cfg, qtype, progress)
    return out


def _export_metadata(model: torch.nn.Module, src: Path, arch: str, qtype: str) -> dict[str, Any]:
    cfg = model.config
    from llmkit.inference.loading import model_name

    name = model_name(src)  # the one name of the model, so that a re-import names it the same (gguf_name)
    meta: dict[str, Any] = {
        "general.name": name,
        "general.basename": name,
        "general.file_type": layout.FILE_TYPES[qtype],
        **layout.metadata_from_config(cfg, arch),
    }
    if qtype == "q8_0":
        meta["general.quantization_version"] = 2  # ggml's current block layout
    if model.tokenizer is not None:
        template = _chat_template(src)
        meta.update(vocab.metadata_from_tokenizer(model.tokenizer, template))
    stops = [i for i in model.generation_config.eos_token_id if i != cfg.eos_token_id]
    if stops:
        meta["tokenizer.ggml.eot_token_id"] = stops[0]
    return meta


def _chat_template(directory: Path) -> str | None:
    path = directory / "tokenizer_config.json"
    template = checkpoint.read_json(path).get("chat_template") if path.is_file() else None
    return template if isinstance(template, str) else None


def _write(
    path: Path, arch: str, meta: dict[str, Any], tensors: dict[str, torch.Tensor], cfg: ModelConfig, qtype: str,
    progress: bool,
) -> None:  # fmt: skip
    import gguf

    writer = gguf.GGUFWriter(path, arch)
    for key, value in meta.items():
        _add(writer, key, value)
    for mine, theirs in layout.names(cfg).items():
        data = layout.tensor_to_gguf(mine, tensors[mine].float(), cfg, arch).contiguous().numpy()
        kind = _tensor_type(data, qtype)
        writer.add_tensor(theirs, gguf.quants.quantize(data, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=progress)
    writer.close()


def _tensor_type(data: np.ndarray, qtype: str) -> Any:
    """ggml type of one tensor: 1-D tensors (norms, biases) stay f32, as llama.cpp keeps them."""
    import gguf

    T = gguf.GGMLQuantizationType
    if data.ndim == 1 or qtype == "f32":
        return T.F32
    if qtype == "q8_0":
        block = gguf.GGML_QUANT_SIZES[T.Q8_0][0]
        return T.Q8_0 if data.shape[-1] % block == 0 else T.F16
    return {"f16": T.F16, "bf16": T.BF16}[qtype]


def _add(writer: Any, key: str, value: Any) -> None:
    """One metadata entry with the value type llama.cpp expects for it."""
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):  # llama.cpp reads sizes, token ids and general.file_type as uint32
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    else:  # token strings, merges (string arrays), token types (int32 array, as llama.cpp writes)
        writer.add_array(key, list(value))
