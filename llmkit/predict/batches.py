"""Texts in, one logits tensor per text out: encoded as fine-tuning encoded them, run in batches.

Encoding is ``llmkit.finetune.data.truncating``'s: the checkpoint's tokenizer with its special tokens
([CLS] ... [SEP]), cut to the context window with those kept (transformers' pipelines truncate to
``model_max_length`` the same way). Batches hold texts of similar length (sorted by token count), so
little of each batch is padding; results come back in input order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import tokenizers
import torch
from torch import nn
from tqdm.auto import tqdm

from llmkit.errors import LlmkitError
from llmkit.files import open_text, read_jsonl
from llmkit.finetune.data import truncating
from llmkit.inference.inputs import pad

DEFAULT_BATCH = 32


def encode(model: nn.Module, texts: Sequence[str]) -> list[tokenizers.Encoding]:
    """Each text's encoding (ids, offsets into the text, special-token mask), truncated to the window."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise LlmkitError("this checkpoint has no tokenizer", "save the model with its tokenizer (tokenizer.json)")
    return truncating(tokenizer, model.config.max_seq_len).encode_batch(list(texts))


def pad_id(model: nn.Module) -> int:
    """The id that pads batches: the tokenizer's pad, else the model's, else 0 (masked out either way)."""
    for candidate in (model.tokenizer.pad_token_id, model.config.pad_token_id):
        if candidate is not None:
            return candidate
    return 0


@torch.no_grad()
def logits_per_text(
    model: nn.Module, rows: Sequence[Sequence[int]], batch_size: int = DEFAULT_BATCH, progress: bool = False
) -> list[torch.Tensor]:
    """fp32 CPU logits of each row of token ids, in input order: (labels,) for a sequence classifier,
    (tokens, labels) for a token classifier.

    Order: rows sorted by length -> batches of ``batch_size``, right-padded with an attention mask -> one
    forward pass each -> each row's logits (its real tokens only) put back at its input position."""
    if batch_size < 1:
        raise LlmkitError(f"batch size {batch_size} must be >= 1", "pass a positive --batch-size")
    if any(len(row) == 0 for row in rows):
        raise LlmkitError("a text encodes to no tokens", "give non-empty texts")
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out: list[torch.Tensor | None] = [None] * len(rows)
    bar = tqdm(total=len(rows), unit="text", desc="predict", disable=not progress, leave=False)
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        ids, mask = pad([list(rows[i]) for i in chosen], pad_id(model), left=False)
        logits = model(ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()
        for b, i in enumerate(chosen):
            out[i] = logits[b] if logits.dim() == 2 else logits[b, : len(rows[i])]
        bar.update(len(chosen))
    bar.close()
    return out


def read_texts(path: str | os.PathLike) -> list[str]:
    """The texts of ``--file``: one per line (blank lines skipped), or JSONL (``.jsonl``, ``.jsonl.gz``)
    with a ``"text"`` field per object."""
    path = Path(path)
    if not path.is_file():
        raise LlmkitError(f"{path}: file not found", "pass a text file with one text per line, or JSONL")
    texts: list[str] = []
    if ".jsonl" in path.suffixes:
        for number, record in read_jsonl(path, 'write {"text": "..."} per line', objects=False):
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise LlmkitError(f"{path}:{number}: no string field 'text'", 'write {"text": "..."} per line')
            texts.append(record["text"])
    else:
        with open_text(path) as f:
            texts = [line.rstrip("\r\n") for line in f if line.strip()]
    if not texts:
        raise LlmkitError(f"{path}: no texts", "one text per line, or JSONL with a 'text' field")
    return texts
