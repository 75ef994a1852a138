"""Token datasets: ``TokenDataset`` reads the train/val shards that ``llmkit.data.shards.tokenize_corpus``
writes, as memory maps, and cuts batches of random windows from them.

A data directory (what ``TrainConfig.data`` names) holds:

- ``train.bin``, ``val.bin``: raw little-endian token ids, uint16 when the vocabulary has at most
  65,535 ids, else uint32; documents follow each other, each ended by the separator id.
- ``meta.json``: dtype, vocabulary size, separator, token counts per split and per source, the
  sources with their weights, the tokenizer's special ids and the SHA-256 of its tokenizer.json.
- ``tokenizer.json`` + ``tokenizer_config.json``: the tokenizer that made the ids, so training can
  check that it uses the same one (``TokenDataset.check_tokenizer``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer as Backend

from llmkit.data.tokenizer import Tokenizer
from llmkit.errors import LlmkitError
from llmkit.files import read_json

SPLITS = ("train", "val")
FORMAT = "llmkit-tokens"


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """SHA-256 of the tokenizer.json the tokenizer saves as, and its special-token roles.

    The JSON is taken after one save-and-load round trip, because a freshly trained Unigram model's
    scores do not survive it to the last digit (-3.9518181610347236 comes back as -3.951818161034723);
    after one trip the text is a fixed point, so a tokenizer and its saved copy fingerprint alike."""
    saved = Backend.from_str(tokenizer.backend.to_str()).to_str()
    roles = json.dumps(tokenizer.special_tokens, sort_keys=True)
    return hashlib.sha256((saved + roles).encode()).hexdigest()


# --- reading -----------------------------------------------------------------------------------------


class TokenDataset:
    """A data directory written by ``tokenize_corpus`` (llmkit.data.shards): memory-mapped splits, random batches."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.meta = _read_meta(self.directory / "meta.json")
        self.dtype = np.dtype(self.meta["dtype"]).newbyteorder("<")
        self.vocab_size: int = self.meta["vocab_size"]
        self._data: dict[str, np.ndarray] = {}
        for split in SPLITS:
            path, expected = self.directory / f"{split}.bin", self.meta["tokens"][split]
            size = path.stat().st_size if path.is_file() else None
            if size != expected * self.dtype.itemsize:
                found = "missing" if size is None else f"{size // self.dtype.itemsize:,} tokens"
                raise LlmkitError(
                    f"{path} is {found} but meta.json says {expected:,} tokens",
                    "the directory is incomplete or corrupt; run `llmkit data tokenize` again",
                )
            empty = np.zeros(0, dtype=self.dtype)
            self._data[split] = np.memmap(path, dtype=self.dtype, mode="r") if expected else empty

    def n_tokens(self, split: str) -> int:
        """Tokens in ``split`` ("train" or "val"), separators included."""
        return len(self.tokens(split))

    def tokens(self, split: str) -> np.ndarray:
        """The read-only memory map of ``split``."""
        if split not in SPLITS:
            raise LlmkitError(f"unknown split {split!r}", f"choose one of {', '.join(SPLITS)}")
        return self._data[split]

    def batch(
        self,
        split: str,
        index: int,
        batch_size: int,
        length: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> torch.Tensor:
        """Rows of ``length`` consecutive tokens from random offsets: a LongTensor (batch_size, length).

        Offsets come from a torch.Generator seeded by (seed, split, index), so batch ``index`` is the same
        in every run (a resumed run redraws it). The generator draws ``world_size * batch_size`` offsets
        and rank r takes rows [r * batch_size, (r + 1) * batch_size): two processes with batch B see
        exactly the rows one process with batch 2B sees.
        """
        data = self.tokens(split)
        if not 0 <= rank < world_size:
            raise LlmkitError(f"rank={rank} is outside world_size={world_size}", "pass 0 <= rank < world_size")
        if len(data) < length:
            raise LlmkitError(
                f"the {split} split of {self.directory} holds {len(data):,} tokens, fewer than one window of {length}",
                "tokenize more data (or raise --val-fraction), or use a smaller block_size",
            )
        generator = torch.Generator().manual_seed(_batch_seed(seed, split, index))
        offsets = torch.randint(0, len(data) - length + 1, (world_size * batch_size,), generator=generator)
        mine = offsets[rank * batch_size : (rank + 1) * batch_size].tolist()
        rows = np.stack([data[o : o + length] for o in mine]).astype(np.int64)
        return torch.from_numpy(rows)

    def check_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Raise if ``tokenizer`` is not the one whose ids these shards hold."""
        if tokenizer_fingerprint(tokenizer) != self.meta.get("tokenizer_sha256"):
            raise LlmkitError(
                f"the tokenizer differs from the one that tokenized {self.directory}",
                f"use the tokenizer saved there ({self.directory}), or tokenize again with yours",
            )

    def tokenizer(self) -> Tokenizer:
        """The tokenizer saved with the data."""
        return Tokenizer.from_dir(self.directory)

    def __repr__(self) -> str:
        counts = ", ".join(f"{split}={self.n_tokens(split):,}" for split in SPLITS)
        return f"TokenDataset({str(self.directory)!r}, {counts}, dtype={self.dtype.name}, vocab_size={self.vocab_size})"


def _batch_seed(seed: int, split: str, index: int) -> int:
    digest = hashlib.blake2b(f"{seed}\0{split}\0{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _read_meta(path: Path) -> dict[str, Any]:
    hint = "point at a directory written by `llmkit data tokenize`, or run it again"
    if not path.is_file():
        raise LlmkitError(f"no meta.json in {path.parent}", hint)
    meta = read_json(path, hint)
    ok = meta.get("format") == FORMAT and meta.get("dtype") in ("uint16", "uint32")
    if not ok or not all(isinstance(meta.get("tokens", {}).get(s), int) for s in SPLITS) or "vocab_size" not in meta:
        raise LlmkitError(f"{path} is not an llmkit token meta file (format, dtype, tokens, vocab_size)", hint)
    return meta
