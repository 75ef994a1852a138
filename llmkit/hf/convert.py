"""Convert checkpoint directories to and from transformers layouts, for every family we map.

transformers itself is never imported here: the maps are plain tensor renames and reshapes,
checked against transformers in the tests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from llmkit import checkpoint, model_card
from llmkit.config import GenerationConfig, ModelConfig
from llmkit.data.tokenizer import Tokenizer
from llmkit.errors import LlmkitError
from llmkit.hf.base import FamilyConverter, StateDict
from llmkit.hf.bert import CONVERTER as BERT
from llmkit.hf.gpt2 import CONVERTER as GPT2
from llmkit.hf.llama import CONVERTER as LLAMA
from llmkit.hf.qwen2 import CONVERTER as QWEN2
from llmkit.hf.t5 import CONVERTER as T5
from llmkit.model_card import ModelCard
from llmkit.models import build_model

CONVERTERS: dict[str, FamilyConverter] = {c.model_type: c for c in (GPT2, LLAMA, QWEN2, BERT, T5)}
# model_types whose layout is the same as one we convert
ALIASES = {"mistral": "llama"}
HF_DEFAULT_TOP_K = 50  # transformers GenerationConfig default
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

__all__ = ["CONVERTERS", "from_hf", "to_hf", "load_hf_state_dict", "converter_for_config"]


def read_hf_config(directory: Path) -> dict[str, Any]:
    data = checkpoint.read_json(directory / "config.json")
    if data.get("format") == checkpoint.FORMAT:
        raise LlmkitError(f"{directory}: already an llmkit checkpoint", "use it directly, or convert with --to-hf")
    return data


def converter_for_hf(hf: dict[str, Any], source: str) -> FamilyConverter:
    model_type = ALIASES.get(hf.get("model_type", ""), hf.get("model_type", ""))
    if model_type not in CONVERTERS:
        raise LlmkitError(
            f"{source}: unknown architecture '{hf.get('model_type')}'",
            f"llmkit converts model_type {', '.join(CONVERTERS)}",
        )
    return CONVERTERS[model_type]


def converter_for_config(cfg: ModelConfig) -> FamilyConverter:
    for conv in CONVERTERS.values():
        if conv.matches(cfg):
            return conv
    raise LlmkitError(
        f"no Hugging Face architecture matches this config (family={cfg.family}, pos={cfg.pos}, norm={cfg.norm})",
        "to-hf supports GPT-2, Llama, Qwen2, BERT and T5 shapes",
    )


def load_hf_state_dict(directory: str | os.PathLike) -> StateDict:
    """All tensors of a transformers checkpoint: safetensors (single or sharded) or pytorch_model.bin
    (read with ``weights_only=True``: never unpickle arbitrary objects)."""
    directory = Path(directory)
    for index_name, reader in (
        ("model.safetensors.index.json", _read_safetensors),
        ("pytorch_model.bin.index.json", _read_bin),
    ):
        index = directory / index_name
        if index.exists():
            shards = sorted(set(checkpoint.read_json(index).get("weight_map", {}).values()))
            return {k: v for shard in shards for k, v in reader(directory / shard).items()}
    if (directory / "model.safetensors").exists():
        return _read_safetensors(directory / "model.safetensors")
    if (directory / "pytorch_model.bin").exists():
        return _read_bin(directory / "pytorch_model.bin")
    raise LlmkitError(
        f"{directory}: no weights found", "expected model.safetensors or pytorch_model.bin (or a sharded index)"
    )


def _read_safetensors(path: Path) -> StateDict:
    if not path.exists():
        raise LlmkitError(f"{path}: file not found", "the shard index names a file that is missing")
    try:
        return load_file(str(path))
    except Exception as err:
        raise LlmkitError(f"{path}: corrupt or truncated safetensors file ({err})", "download it again") from None


def _read_bin(path: Path) -> StateDict:
    if not path.exists():
        raise LlmkitError(f"{path}: file not found", "the shard index names a file that is missing")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise LlmkitError(f"{path}: unreadable PyTorch weights ({err})", "download it again") from None
    return data.get("state_dict", data) if isinstance(data, dict) else data


def from_hf(
    src: str | os.PathLike,
    out: str | os.PathLike,
    dtype: str | None = None,
    card: ModelCard | None = None,
    extra_files: dict[str, Any] | None = None,
) -> Path:
    """Convert a transformers checkpoint directory (GPT-2, Llama, Qwen2, BERT, T5) into an llmkit one.

    ``dtype`` (fp32, bf16) casts the weights; None keeps the dtype most of them are stored in. ``card``
    replaces the card made from the source (``llmkit models get`` writes its own); ``extra_files`` go
    beside the weights as checkpoint.save writes them.
    """
    if dtype is not None and dtype not in DTYPES:
        raise LlmkitError(f"dtype '{dtype}' is not valid", f"choose one of: {', '.join(DTYPES)}")
    src = Path(src)
    if not src.is_dir():
        raise LlmkitError(f"{src}: no such directory", "pass a directory saved by transformers save_pretrained")
    hf = read_hf_config(src)
    conv = converter_for_hf(hf, str(src / "config.json"))
    hf_sd = load_hf_state_dict(src)
    cfg = conv.config_from_hf(hf, hf_sd)
    model = build_model(cfg, init=False)
    checkpoint.load_state_dict_checked(model, conv.state_dict_from_hf(hf_sd, cfg), f"{src} (converted)")
    model.to(DTYPES[dtype] if dtype else _stored_dtype(hf_sd))  # as stored: bf16/fp16 keep their size, exactly
    tokenizer = _hf_tokenizer(src)
    # transformers samples with top_k=50 unless its file says otherwise; ours is off by default
    hf_gen = {"top_k": HF_DEFAULT_TOP_K}
    if (src / "generation_config.json").exists():
        hf_gen.update(checkpoint.read_json(src / "generation_config.json"))
    gen = GenerationConfig.from_dict({**GenerationConfig.for_model(cfg).to_dict(), **hf_gen})
    extra = dict(extra_files or {})
    kept = tokenizer_extras(src)
    if tokenizer is not None and kept:  # the roles as Tokenizer.save writes them, plus the chat template
        roles = {f"{role}_token": token for role, token in tokenizer.special_tokens.items()}
        extra["tokenizer_config.json"] = {**roles, "tokenizer_class": "PreTrainedTokenizerFast", **kept}
    return checkpoint.save(
        model, out, tokenizer=tokenizer, generation_config=gen, card=card or converted_card(src, hf), extra_files=extra
    )


def tokenizer_extras(directory: Path) -> dict[str, Any]:
    """What a tokenizer directory says beyond the vocabulary and roles and llmkit keeps both ways: the chat
    template (from ``chat_template.jinja``, which transformers prefers, else tokenizer_config.json's
    ``chat_template``, a string or a list of named templates) and ``model_max_length``."""
    path = directory / "tokenizer_config.json"
    config = checkpoint.read_json(path) if path.is_file() else {}
    kept = {key: config[key] for key in ("chat_template", "model_max_length") if config.get(key) is not None}
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        kept["chat_template"] = jinja.read_text(encoding="utf-8")
    return kept


def converted_card(src: Path, hf: dict) -> ModelCard:
    """The card of a converted checkpoint: where it came from; the source's own card holds the rest."""
    source_card = model_card.read(src)
    license_ = model_card.front_matter_value(source_card, "license") if source_card else None
    base = hf.get("_name_or_path") or src.name
    return ModelCard(
        how_made=f"Converted by `llmkit convert --from-hf` from the transformers checkpoint in `{src}` "
        f"(model_type {hf.get('model_type')}); the weights are unchanged and give transformers' logits.",
        name=str(base),
        base_model=str(base),
        license=license_,
        intended_use="As the source model's own card says"
        + (" (its README.md, beside the source weights)." if source_card else "; the source directory had none."),
        limitations=["llmkit did not train this model: its training data, biases and limits are the source's."],
    )


def _stored_dtype(sd: StateDict) -> torch.dtype:
    """The floating dtype most of the checkpoint's elements use."""
    counts: dict[torch.dtype, int] = {}
    for t in sd.values():
        if t.is_floating_point():
            counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
    return max(counts, key=counts.get) if counts else torch.float32


def _hf_tokenizer(src: Path) -> Tokenizer | None:
    names = ("tokenizer.json", "vocab.json", "vocab.txt", "spiece.model")
    return Tokenizer.from_hf_dir(src) if any((src / n).exists() for n in names) else None


def _hf_generation_config(gen: GenerationConfig) -> dict[str, Any]:
    """Token ids, and only the decoding settings that differ from the defaults: transformers warns
    about sampling flags set while sampling is off, and keeps its own default length otherwise."""
    defaults = GenerationConfig().to_dict()
    out = {k: v for k, v in gen.to_dict().items() if v not in (None, []) and (k.endswith("_id") or v != defaults[k])}
    if gen.do_sample:  # say top_k even when off (0): transformers would otherwise sample with 50
        out["top_k"] = gen.top_k
    if len(out.get("eos_token_id", [])) == 1:
        out["eos_token_id"] = out["eos_token_id"][0]
    return out


def to_hf(src: str | os.PathLike, out: str | os.PathLike, verify: bool = True) -> Path:
    """Convert an llmkit checkpoint (its files checked against its manifest unless ``verify`` is False) into
    the layout transformers ``from_pretrained`` reads."""
    model = checkpoint.load(src, verify=verify)
    spec = model.quantization
    if spec is not None and not spec.is_cast:  # fp16/bf16 casts are plain tensors; int8/int4 are not
        raise LlmkitError(
            f"{src} is quantized to {spec.method}; Hugging Face checkpoints hold float weights",
            "convert the checkpoint it was quantized from, or quantize it to fp16/bf16 instead",
        )
    cfg = model.config
    conv = converter_for_config(cfg)
    hf_sd = conv.state_dict_to_hf(checkpoint.unique_state_dict(model), cfg)
    hf_gen = _hf_generation_config(model.generation_config)
    with checkpoint.atomic_directory(out) as tmp:
        (tmp / "config.json").write_text(json.dumps(conv.config_to_hf(cfg), indent=2))
        save_file(
            {k: v.contiguous() for k, v in hf_sd.items()}, str(tmp / "model.safetensors"), metadata={"format": "pt"}
        )
        (tmp / "generation_config.json").write_text(json.dumps(hf_gen, indent=2))
        if model.tokenizer is not None:
            model.tokenizer.save(tmp)
            kept = tokenizer_extras(Path(src))
            if kept:  # back into tokenizer_config.json, where every transformers version reads them
                config = json.loads((tmp / "tokenizer_config.json").read_text(encoding="utf-8"))
                text = json.dumps({**config, **kept}, indent=2, ensure_ascii=False) + "\n"
                (tmp / "tokenizer_config.json").write_text(text, encoding="utf-8")
        card = model_card.read(src)
        if card is not None:  # the card travels with the weights: the hub reads the same README.md
            (tmp / model_card.CARD).write_text(card, encoding="utf-8")
    return Path(out)
