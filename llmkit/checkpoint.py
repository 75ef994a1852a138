"""Checkpoint directories: config.json, model.safetensors, tokenizer.json, generation_config.json.

A quantized checkpoint (``llmkit quantize``) says so in the ``quantization`` entry of config.json;
its safetensors file holds ``NAME.qweight`` and ``NAME.scales`` in place of each quantized
``NAME.weight``, and ``load`` rebuilds the quantized modules before reading them (llmkit.quantize).

Saves are atomic (a temporary directory beside the target, renamed into place; llmkit.files), so a
crash never leaves a half-written checkpoint, and ``recover`` puts back the newest complete copy a
crash between the renames left aside. A save first checks the free disk space, and writes last a
``manifest.json`` with the SHA-256 of every file. Loads check, before allocating anything: that the
config is ours, every file against the manifest's hash (``verify=False`` skips this; a checkpoint
without a manifest is refused unless it is given), the config's values and sizes, the safetensors
header's integrity (JSON, offsets inside the file, sizes that fit the shapes) and then every tensor's
shape against the config (the model is built on the meta device); after loading, that no weight is
NaN or infinite. Each problem is a one-line ``LlmkitError`` that names the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from llmkit import files
from llmkit.config import GenerationConfig, ModelConfig
from llmkit.data.tokenizer import Tokenizer
from llmkit.errors import LlmkitError
from llmkit.files import atomic_directory
from llmkit.model_card import CARD, ModelCard, architecture, render
from llmkit.models import build_model
from llmkit.plan.parameters import count_parameters
from llmkit.quantize.layers import quantize_model, use_kernels
from llmkit.quantize.spec import QuantSpec

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
GENERATION = "generation_config.json"
MANIFEST = "manifest.json"  # SHA-256 of every other file, written last
FORMAT = "llmkit"  # marks our config.json apart from a Hugging Face one
FORMAT_VERSION = 1
QUANTIZATION = "quantization"  # config.json entry of a quantized checkpoint (not a ModelConfig field)


# ---- saving ---------------------------------------------------------------------------------
def unique_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without aliases of tied weights (safetensors refuses shared storage)."""
    seen: set[int] = set()
    out = {}
    for name, tensor in model.state_dict().items():
        key = tensor.untyped_storage().data_ptr() + tensor.storage_offset() if tensor.numel() else id(tensor)
        if key in seen:
            continue
        seen.add(key)
        out[name] = tensor.detach().contiguous()
    return out


def save(
    model: nn.Module,
    directory: str | os.PathLike,
    tokenizer: Tokenizer | None = None,
    generation_config: GenerationConfig | None = None,
    extra_files: dict[str, Any] | None = None,
    card: ModelCard | None = None,
) -> Path:
    """Write ``model`` (with its attached tokenizer and generation config unless given) atomically.

    A quantized model (``model.quantization``, a QuantSpec) is written in its stored format, and
    config.json gets the ``quantization`` entry. ``extra_files`` maps a file name to
    JSON-serialisable content or bytes written beside the rest. Every checkpoint gets a README.md
    model card: ``card`` as the workflow filled it (training, data, metrics), completed here with
    the architecture; without one, a card that says no training was recorded.
    """
    state = unique_state_dict(model)
    extra = _encode(extra_files)
    _check_free_space(
        Path(directory),
        sum(t.numel() * t.element_size() for t in state.values()) + sum(len(data) for data in extra.values()),
    )
    try:
        with atomic_directory(directory) as tmp:
            write_contents(tmp, model, state, tokenizer=tokenizer, generation_config=generation_config,
                           extra_files=extra, card=card)  # fmt: skip
    except OSError as err:
        raise LlmkitError(f"cannot save {directory}: {err.strerror or err}", _SPACE_HINT) from None
    except Exception as err:  # safetensors reports a full disk as its own SafetensorError
        if "SafetensorError" not in type(err).__name__:
            raise
        raise LlmkitError(f"cannot save {directory}: {err}", _SPACE_HINT) from None
    return Path(directory)


def _encode(extra_files: dict[str, Any] | None) -> dict[str, bytes]:
    return {
        name: content if isinstance(content, bytes) else json.dumps(content, indent=2).encode()
        for name, content in (extra_files or {}).items()
    }


def write_contents(
    directory: Path,
    model: nn.Module,
    state: dict[str, torch.Tensor] | None,
    *,
    tokenizer: Tokenizer | None = None,
    generation_config: GenerationConfig | None = None,
    extra_files: dict[str, Any] | None = None,
    card: ModelCard | None = None,
) -> None:
    """Fill the (new, temporary) ``directory`` as ``save`` does: config.json, the weights ``state`` (None:
    none, for a distributed checkpoint whose processes write their own shards beside), the generation
    config, the tokenizer, the model card, ``extra_files``, and last the manifest of everything in it."""
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    gen = generation_config or getattr(model, "generation_config", None) or GenerationConfig.for_model(model.config)
    quantization = getattr(model, "quantization", None)
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, **model.config.to_dict()}
    if quantization is not None:
        config[QUANTIZATION] = quantization.to_dict()
    card = card or ModelCard("Saved with `llmkit.save`; llmkit recorded no training for it.")
    card = dataclasses.replace(
        card,
        name=card.name or model.config.name,
        architecture=architecture(model.config.to_dict(), sum(count_parameters(model.config).values())),
    )
    (directory / CONFIG).write_text(json.dumps(config, indent=2))
    if state is not None:
        save_file(state, str(directory / WEIGHTS), metadata={"format": "pt"})
    (directory / GENERATION).write_text(json.dumps(gen.to_dict(), indent=2))
    if tokenizer is not None:
        tokenizer.save(directory)
    (directory / CARD).write_text(render(card), encoding="utf-8")
    for name, data in _encode(extra_files).items():
        (directory / name).write_bytes(data)
    write_manifest(directory)


_SPACE_HINT = "free disk space or save elsewhere; the previous checkpoint, if any, is unchanged"
SPACE_MARGIN = 1.05  # headroom over the estimated size: headers, JSON, the file system's blocks


def _check_free_space(directory: Path, payload: int) -> None:
    """Refuse a save that cannot fit before writing anything (the old copy stays until the new one is whole)."""
    parent = directory.absolute().parent
    while not parent.exists():
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    needed = int(payload * SPACE_MARGIN) + (1 << 20)
    if needed > free:
        raise LlmkitError(
            f"cannot save {directory}: it needs about {_size(needed)} and {parent} has {_size(free)} free",
            _SPACE_HINT,
        )


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


# ---- the manifest ---------------------------------------------------------------------------
def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 16 MB blocks (about 1-2 GB/s: a 1 GB checkpoint adds a second)."""
    digest = hashlib.sha256()
    buffer = bytearray(16 << 20)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def write_manifest(directory: Path) -> int:
    """``manifest.json``: the SHA-256 of every file under ``directory`` (written last, so it covers all);
    returns the number of files it lists."""
    hashes = {
        str(p.relative_to(directory)): sha256(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    files.atomic_write(directory / MANIFEST, json.dumps({"format": "llmkit-manifest", "sha256": hashes}, indent=2))
    return len(hashes)


def reseal_hint(directory: str | os.PathLike) -> str:
    """The command that records a checkpoint's present files in a new manifest (`llmkit manifest --write`)."""
    return f"llmkit manifest {directory} --write"


def verify_manifest(directory: str | os.PathLike, skip: tuple[str, ...] = ()) -> int:
    """Check every file ``manifest.json`` lists against its hash, but those in ``skip`` (a run's own
    log, appended after the save); returns the number checked. A missing manifest (a checkpoint saved
    before llmkit wrote them, or one whose manifest was deleted), a changed or a missing file raises:
    a checkpoint never loads unchecked unless the caller says so (``verify=False``, ``--no-verify``)."""
    directory = Path(directory)
    if not (directory / MANIFEST).is_file():
        read_config_json(directory)  # not an llmkit checkpoint at all (a Hugging Face folder): that error first
        raise LlmkitError(
            f"{directory}: no {MANIFEST}, so its files cannot be checked (saved before llmkit wrote manifests, "
            "or the manifest was deleted)",
            f"check the files, then record them: {reseal_hint(directory)} (or load it unchecked with --no-verify)",
        )
    hashes = read_json(directory / MANIFEST).get("sha256")
    if not isinstance(hashes, dict):
        raise LlmkitError(
            f"{directory / MANIFEST}: no 'sha256' table", f"re-save the checkpoint, or {reseal_hint(directory)}"
        )
    for name, want in hashes.items():
        if name in skip:
            continue
        path = directory / name
        if not path.is_file():
            raise LlmkitError(f"{path}: file not found (listed in {MANIFEST})", "restore it or re-save the checkpoint")
        if sha256(path) != want:
            raise LlmkitError(
                f"{path}: contents differ from the SHA-256 in {MANIFEST} (corrupted or changed after saving)",
                "restore the file or re-save the checkpoint (--no-verify loads it anyway; after an intended edit, "
                f"{reseal_hint(directory)} records it)",
            )
    return len(hashes)


def seal(directory: str | os.PathLike) -> int:
    """Record a checkpoint's files as they are now in a new ``manifest.json`` (`llmkit manifest --write`:
    a checkpoint saved before manifests, or edited on purpose); returns the number of files. It is
    loaded unchecked first, so a config, header or weights that would not load are refused, not sealed."""
    load(directory, verify=False)
    return write_manifest(Path(directory))


def is_complete(directory: Path) -> bool:
    """A directory whose manifest exists and verifies: a save that finished writing."""
    try:
        verify_manifest(directory)
    except LlmkitError:
        return False
    return True


def recover(directory: str | os.PathLike) -> Path | None:
    """Put back the newest complete copy that a crash during a save left beside ``directory`` (when
    it is missing) and remove stale temporaries; returns the directory when a copy was put back."""
    return files.recover_directory(directory, complete=is_complete)


# ---- loading --------------------------------------------------------------------------------
def read_json(path: Path) -> dict[str, Any]:
    """A JSON object of a checkpoint directory; a missing or corrupt file raises a one-line LlmkitError."""
    return files.read_json(
        path, "restore the file or re-save the checkpoint", f"is {path.parent} a complete llmkit checkpoint?"
    )


def read_config_json(directory: str | os.PathLike) -> dict[str, Any]:
    """config.json of an llmkit checkpoint directory, checked to be ours."""
    path = Path(directory) / CONFIG
    if not Path(directory).is_dir():
        raise LlmkitError(f"{directory}: no such checkpoint directory", "check the path")
    data = read_json(path)
    if data.get("format") != FORMAT:
        kind = data.get("model_type") or data.get("architectures") or "unknown"
        raise LlmkitError(
            f"{path}: unknown architecture '{kind}' (not an llmkit config)",
            f"for a Hugging Face checkpoint run: llmkit convert --from-hf {directory} OUT",
        )
    return data


def load_config(directory: str | os.PathLike) -> ModelConfig:
    """Read and validate config.json of an llmkit checkpoint directory; a bad value is an error that
    names the file (not a --model flag: the commands that load checkpoints have none)."""
    path = Path(directory) / CONFIG
    data = read_config_json(directory)
    data = {k: v for k, v in data.items() if k not in ("format", "format_version", QUANTIZATION)}
    return _from_file(path, lambda: ModelConfig.from_dict(data, source=str(path)))


def load_generation_config(directory: str | os.PathLike, cfg: ModelConfig) -> GenerationConfig:
    """generation_config.json of a checkpoint, validated (the model's defaults when there is none); a
    bad value is an error that names the file."""
    path = Path(directory) / GENERATION
    if not path.exists():
        return GenerationConfig.for_model(cfg)
    data = read_json(path)
    return _from_file(path, lambda: GenerationConfig.from_dict(data))


def _from_file(path: Path, build):
    """``build()``, its errors naming ``path`` and the fix that exists for a file: edit it, then
    record the edit in the manifest (or re-save the checkpoint)."""
    try:
        return build()
    except (LlmkitError, TypeError, ValueError) as err:
        what = err.message if isinstance(err, LlmkitError) else f"invalid value ({err})"
        what = what.removeprefix("generation config: ").removeprefix(f"{path}: ")
        raise LlmkitError(
            f"{path}: {what}",
            f"correct it in {path.name}, then {reseal_hint(path.parent)}; or re-save the checkpoint",
        ) from None


def load_quantization(directory: str | os.PathLike) -> QuantSpec | None:
    """The checkpoint's quantization (validated), or None for a plain one."""
    data = read_config_json(directory)
    if QUANTIZATION not in data:
        return None
    return QuantSpec.from_dict(data[QUANTIZATION], source=str(Path(directory) / CONFIG))


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, its header checked first (``read_header``); truncation or corruption
    becomes an error that names the file."""
    read_header(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises several types for bad headers and short files
        raise LlmkitError(
            f"{path}: corrupt or truncated safetensors file ({err})", "restore it or re-save the checkpoint"
        ) from None


HEADER_LIMIT = 100 << 20  # safetensors' own limit on a header's size


def read_header(path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of every tensor of a safetensors file, from its header: nothing is loaded.

    The header's integrity is checked first, by safetensors' own rules, so a damaged file is never
    taken for one that does not match its config: the 8-byte length fits the file, the header is a
    UTF-8 JSON object, every tensor has a known dtype, a shape and data offsets inside the data area
    whose span is the shape's size in that dtype, and the tensors fill the data area without gaps or
    overlaps.
    """
    if not path.is_file():
        raise LlmkitError(f"{path}: file not found", f"is {path.parent} a complete llmkit checkpoint?")
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 0 < length <= min(size - 8, HEADER_LIMIT):
            _corrupt(path, f"header length {length:,} does not fit the file's {size:,} bytes")
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        _corrupt(path, f"the header is not valid JSON: {err}")
    if not isinstance(header, dict):
        _corrupt(path, "the header is not a JSON object")
    data_bytes = size - 8 - length
    spans, out = [], {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shape, dtype = _header_entry(path, name, info)
        start, end = info["data_offsets"]
        if not 0 <= start <= end <= data_bytes:
            _corrupt(path, f"tensor '{name}' lies at bytes {start:,}-{end:,}, past the {data_bytes:,} bytes of data")
        need = math.prod(shape) * _DTYPE_BYTES[dtype]
        if end - start != need:
            _corrupt(
                path, f"tensor '{name}' spans {end - start:,} bytes; its shape {list(shape)} in {dtype} is {need:,}"
            )
        spans.append((start, end, name))
        out[name] = (shape, _DTYPES[dtype])
    at = 0
    for start, end, name in sorted(spans):
        if start != at:
            _corrupt(path, f"tensor '{name}' starts at byte {start:,} of the data; the tensors before it end at {at:,}")
        at = end
    if at != data_bytes:
        _corrupt(path, f"the tensors end at byte {at:,} of the {data_bytes:,} bytes of data")
    return out


def _header_entry(path: Path, name: str, info: Any) -> tuple[tuple[int, ...], str]:
    """(shape, dtype name) of one header entry, checked to be well formed."""
    ok = (
        isinstance(info, dict)
        and info.get("dtype") in _DTYPE_BYTES
        and isinstance(info.get("shape"), list)
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in info["shape"])
        and isinstance(info.get("data_offsets"), list)
        and len(info["data_offsets"]) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) for n in info["data_offsets"])
    )
    if not ok:
        _corrupt(path, f"tensor '{name}' has no valid dtype, shape and data_offsets ({json.dumps(info)[:80]})")
    return tuple(info["shape"]), info["dtype"]


def _corrupt(path: Path, what: str) -> None:
    raise LlmkitError(
        f"{path}: corrupt or truncated safetensors file ({what})",
        "the file is damaged (not a config mismatch): restore it or re-save the checkpoint",
    )


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}  # fmt: skip
_DTYPE_BYTES = {name: dtype.itemsize for name, dtype in _DTYPES.items()}

# Far beyond any real model: larger values are a corrupt or hostile config.json, refused before building
# anything (n_layer=100000 grew past 12 GB before the weights were even read).
SIZE_LIMITS = {"vocab_size": 1 << 24, "d_model": 1 << 16, "d_ff": 1 << 19, "n_layer": 1 << 10,
               "n_decoder_layer": 1 << 10, "n_head": 1 << 10, "max_seq_len": 1 << 21}  # fmt: skip


def check_sizes(cfg: ModelConfig, source: str) -> None:
    """A one-line error naming the first field of ``cfg`` past ``SIZE_LIMITS``."""
    for name, limit in SIZE_LIMITS.items():
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > limit:
            raise LlmkitError(
                f"{source}: {name}={value:,} is implausibly large (limit {limit:,})",
                "the config.json is corrupt or belongs to another model; restore it or re-save the checkpoint",
            )


def check_finite(model: nn.Module, source: str) -> None:
    """Raise naming the first floating-point tensor with a NaN or infinite value."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise LlmkitError(
                f"{source}: tensor '{name}' holds NaN or infinite values",
                "the weights are corrupt or training diverged; restore an earlier checkpoint",
            )


def load_state_dict_checked(model: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``weights`` into ``model`` after checking names and shapes; tied aliases may be absent."""
    check_tensors(model, {k: (tuple(t.shape), t.dtype) for k, t in weights.items()}, source)
    model.load_state_dict(weights, strict=False)


def check_tensors(model: nn.Module, given: dict[str, tuple[tuple[int, ...], torch.dtype]], source: str) -> None:
    """Names, shapes and integer dtypes of ``given`` (name -> (shape, dtype)) against ``model``'s state
    dict; ``model`` may live on the meta device, so a header is checked before anything is allocated."""
    expected = model.state_dict()
    weights = given
    # tied weights are one Parameter under two names (data pointers cannot tell on the meta device)
    aliases = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
    missing = sorted(set(expected) - set(weights) - aliases)
    unexpected = sorted(set(weights) - set(expected))
    if missing:
        raise LlmkitError(f"{source}: missing tensor '{missing[0]}' ({len(missing)} missing)", _MISMATCH_HINT)
    if unexpected:
        raise LlmkitError(
            f"{source}: unexpected tensor '{unexpected[0]}' ({len(unexpected)} unexpected)", _MISMATCH_HINT
        )
    for name, (shape, dtype) in weights.items():
        if shape != tuple(expected[name].shape):
            raise LlmkitError(
                f"{source}: tensor '{name}' has shape {shape}, config expects {tuple(expected[name].shape)}",
                _MISMATCH_HINT,
            )
        # quantized weights must keep their integer type: copying would silently convert them
        if not expected[name].is_floating_point() and dtype != expected[name].dtype:
            raise LlmkitError(
                f"{source}: tensor '{name}' has dtype {dtype}, config expects {expected[name].dtype}",
                _MISMATCH_HINT,
            )


_MISMATCH_HINT = "config.json and model.safetensors do not belong together; re-save or re-convert the checkpoint"


def check_header(directory: Path, cfg: ModelConfig, quantization: QuantSpec | None = None) -> None:
    """The config's sizes, then every tensor's shape against the weights file's header, on a model
    built on the meta device: a config that does not match its weights is refused before allocating."""
    check_sizes(cfg, str(directory / CONFIG))
    header = read_header(directory / WEIGHTS)
    model = build_model(cfg, device="meta", init=False)
    if quantization is not None:
        quantize_model(model, quantization, empty=True)
    check_tensors(model, header, str(directory / WEIGHTS))


def load(
    directory: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    verify: bool = True,
) -> nn.Module:
    """Load a checkpoint directory: a ready model in eval mode with ``.tokenizer`` (or None),
    ``.generation_config`` and ``.quantization`` (a QuantSpec, or None) attached.

    A quantized checkpoint: fp16/bf16 load in that dtype unless ``dtype`` says otherwise; int8/int4
    load as quantized modules (norms and biases in ``dtype``, fp32 by default) that run through
    torch's CPU kernels on CPU (``llmkit.quantize.use_kernels``).

    Order, before any memory is allocated: config.json is ours -> every file against
    ``manifest.json``'s hashes unless ``verify`` is False (every command's ``--no-verify``); a
    checkpoint without a manifest is refused, so a damaged file is named as such and not taken for a
    config mismatch -> the config's values and sizes -> the safetensors header's integrity, then every
    tensor's shape against the config. Then the weights, checked for NaN/inf.
    """
    directory = Path(directory)
    read_config_json(directory)
    if verify:
        verify_manifest(directory)
    cfg = load_config(directory)
    quantization = load_quantization(directory)
    check_header(directory, cfg, quantization)
    weights = read_weights(directory / WEIGHTS)
    tokenizer = load_tokenizer(directory, cfg)
    gen = load_generation_config(directory, cfg)
    model = build_model(cfg, init=False)
    if quantization is not None:
        quantize_model(model, quantization, empty=True)  # the stored layout, to be filled below
        dtype = dtype or quantization.dtype
    load_state_dict_checked(model, weights, str(directory / WEIGHTS))
    check_finite(model, str(directory / WEIGHTS))
    model.tokenizer = tokenizer
    model.generation_config = gen
    model.quantization = quantization
    model = model.to(device=device, dtype=dtype).eval()
    return use_kernels(model) if quantization is not None and not quantization.is_cast else model


def load_tokenizer(directory: Path, cfg: ModelConfig) -> Tokenizer | None:
    """The checkpoint's tokenizer, checked to fit the embedding; None when the directory has none."""
    if not (directory / TOKENIZER).exists():
        return None
    tokenizer = Tokenizer.from_dir(directory)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise LlmkitError(
            f"{directory / TOKENIZER}: vocabulary of {tokenizer.vocab_size} tokens is larger than the model's "
            f"embedding ({cfg.vocab_size} rows)",
            "use the tokenizer the model was built with, or rebuild the model with a larger vocab_size",
        )
    return tokenizer
