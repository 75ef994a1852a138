"""Fine-tuning data: read labelled files, encode them with the checkpoint's tokenizer, draw batches.

Readers: ``read_labelled`` (TSV with a header row, or JSONL; ``.gz`` too) for classification,
``read_conll`` for token classification (``word TAG`` lines, blank lines between sentences).
Encoding follows transformers' examples: sequences truncated to ``max_length`` with the
tokenizer's special tokens kept; for tokens, each word's label on its first sub-token and -100 on
the others and on special tokens (``align_labels``).

``Examples.batch`` draws training rows as a function of (seed, index, rank) only: the rows are
taken in the order of a permutation per epoch seeded by (seed, epoch), so a resumed run sees the
same rows, and two processes with batch B see exactly the rows one process with batch 2B sees.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import tokenizers
import torch

from llmkit.data.tokenizer import Tokenizer
from llmkit.errors import LlmkitError
from llmkit.files import open_text, read_jsonl
from llmkit.objectives import IGNORE_INDEX, Batch

LABEL_SEEDS = 2  # stream of derived seeds for the epoch permutations (train/eval use 0 and 1)


# ---- reading --------------------------------------------------------------------------------
def read_labelled(
    path: str | os.PathLike, text_field: str, label_field: str, columns: Sequence[str] = ()
) -> list[tuple[str, str]]:
    """(text, label) rows of a TSV file with a header row (or without one, its ``columns`` named), or
    of a JSONL file (``.jsonl``)."""
    path = _existing(path)
    rows: list[tuple[str, str]] = []
    if ".jsonl" in path.suffixes:
        for number, record in read_jsonl(path, "one JSON object per line"):
            rows.append(_pick(record, text_field, label_field, f"{path}:{number}"))
    else:
        with open_text(path, newline="") as f:
            reader = csv.DictReader(f, fieldnames=list(columns) or None, delimiter="\t", quoting=csv.QUOTE_NONE)
            for number, record in enumerate(reader, 1 if columns else 2):
                rows.append(_pick(record, text_field, label_field, f"{path}:{number}"))
    if not rows:
        raise LlmkitError(f"{path}: no examples", "the file holds a header row and one example per line")
    return rows


def _pick(record: dict, text_field: str, label_field: str, where: str) -> tuple[str, str]:
    for name in (text_field, label_field):
        if record.get(name) is None:
            raise LlmkitError(
                f"{where}: no field '{name}' (fields: {', '.join(map(str, record))})",
                "set --task.text_field and --task.label_field to the file's column names",
            )
    return str(record[text_field]), str(record[label_field])


def read_conll(path: str | os.PathLike) -> list[tuple[list[str], list[str]]]:
    """Sentences of a CoNLL file as (words, tags): the first and last column of each line."""
    path = _existing(path)
    sentences: list[tuple[list[str], list[str]]] = []
    words: list[str] = []
    tags: list[str] = []
    with open_text(path) as f:
        for number, line in enumerate(f, 1):
            parts = line.split()
            if not parts or parts[0] == "-DOCSTART-":
                if words:
                    sentences.append((words, tags))
                words, tags = [], []
                continue
            if len(parts) < 2:
                raise LlmkitError(f"{path}:{number}: expected 'word TAG', got {line.strip()!r}", "fix the line")
            words.append(parts[0])
            tags.append(parts[-1])
    if words:
        sentences.append((words, tags))
    if not sentences:
        raise LlmkitError(f"{path}: no sentences", "a CoNLL file has one 'word TAG' per line")
    return sentences


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise LlmkitError(f"{path}: file not found", "check [task] train_file / dev_file")
    return path


def check_labels(found: Sequence[str], labels: Sequence[str], source: str) -> None:
    """Every label of the data must be one of the config's."""
    known = set(labels)
    missing = sorted({label for label in found if label not in known})
    if missing:
        raise LlmkitError(
            f"{source}: label {missing[0]!r} is not in the config's labels ({', '.join(labels)})"
            + (f", nor {len(missing) - 1} more" if len(missing) > 1 else ""),
            "add it to [task] labels, or fix the file",
        )


# ---- encoding -------------------------------------------------------------------------------
@dataclass
class Encoded:
    """One example: token ids and its labels (an int per sequence, or one per token, -100 where none)."""

    ids: list[int]
    labels: int | list[int]


def truncating(tokenizer: Tokenizer, max_length: int) -> tokenizers.Tokenizer:
    """A copy of the tokenizer's backend that truncates to ``max_length`` tokens, its special tokens
    (BERT's [CLS] ... [SEP]) kept, and does not pad."""
    backend = tokenizers.Tokenizer.from_str(tokenizer.backend.to_str())
    backend.enable_truncation(max_length)
    backend.no_padding()
    return backend


def encode_classify(
    tokenizer: Tokenizer, rows: Sequence[tuple[str, str]], labels: Sequence[str], max_length: int
) -> list[Encoded]:
    """(text, label) rows -> token ids with special tokens, truncated, and the label's index."""
    index = {name: i for i, name in enumerate(labels)}
    encodings = truncating(tokenizer, max_length).encode_batch([text for text, _ in rows])
    return [Encoded(e.ids, index[label]) for e, (_, label) in zip(encodings, rows, strict=True)]


def encode_tokens(
    tokenizer: Tokenizer, sentences: Sequence[tuple[list[str], list[str]]], labels: Sequence[str], max_length: int
) -> list[Encoded]:
    """(words, tags) -> ids of the pre-split words with special tokens, truncated, and ``align_labels``."""
    index = {name: i for i, name in enumerate(labels)}
    backend = truncating(tokenizer, max_length)
    encodings = backend.encode_batch([words for words, _ in sentences], is_pretokenized=True)
    out = []
    for encoding, (_, tags) in zip(encodings, sentences, strict=True):
        out.append(Encoded(encoding.ids, align_labels(encoding.word_ids, [index[t] for t in tags])))
    return out


def align_labels(word_ids: Sequence[int | None], word_labels: Sequence[int]) -> list[int]:
    """Per-token labels as transformers' token-classification examples make them: the word's label
    on its first sub-token, -100 on the later ones and on special tokens (word id None)."""
    out, previous = [], None
    for word in word_ids:
        out.append(IGNORE_INDEX if word is None or word == previous else word_labels[word])
        previous = word
    return out


def first_subtokens(word_ids: Sequence[int | None]) -> dict[int, int]:
    """word index -> position of its first sub-token (words cut off by truncation are absent)."""
    out: dict[int, int] = {}
    for position, word in enumerate(word_ids):
        if word is not None and word not in out:
            out[word] = position
    return out


# ---- batches --------------------------------------------------------------------------------
def collate(examples: Sequence[Encoded], pad_id: int) -> Batch:
    """Right-padded ids (padded to the longest row), the attention mask and the labels."""
    length = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    per_token = isinstance(examples[0].labels, list)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long) if per_token else None
    for row, e in enumerate(examples):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        mask[row, : len(e.ids)] = 1
        if per_token:
            labels[row, : len(e.labels)] = torch.tensor(e.labels)
    if not per_token:
        labels = torch.tensor([e.labels for e in examples], dtype=torch.long)
    return Batch({"input_ids": ids, "attention_mask": mask}, labels)


class Examples:
    """Encoded training examples and the deterministic order they are drawn in."""

    def __init__(self, examples: list[Encoded], pad_id: int, collate_fn=None, group_size: int = 0) -> None:
        """``group_size`` > 0: each epoch's shuffled order is cut into runs of that many rows, each sorted
        by length, longest first (transformers' LengthGroupedSampler, whose runs are 50 global batches):
        rows of similar length share a batch, so batches carry little padding."""
        if not examples:
            raise LlmkitError("no training examples", "check [task] train_file")
        self.examples = examples
        self.pad_id = pad_id
        self.collate = collate_fn or (lambda rows: collate(rows, pad_id))  # seq2seq adds decoder inputs
        self.group_size = group_size
        self._orders: dict[tuple[int, int], list[int]] = {}

    def __len__(self) -> int:
        return len(self.examples)

    def _order(self, seed: int, epoch: int) -> list[int]:
        from llmkit.train.step import derive_seed

        key = (seed, epoch)
        if key not in self._orders:
            generator = torch.Generator().manual_seed(derive_seed(seed, LABEL_SEEDS, epoch))
            order = torch.randperm(len(self.examples), generator=generator).tolist()
            if self.group_size > 0:
                runs = [order[i : i + self.group_size] for i in range(0, len(order), self.group_size)]
                order = [i for run in runs for i in sorted(run, key=lambda i: -len(self.examples[i].ids))]
            self._orders = {key: order}
        return self._orders[key]

    def batch(self, index: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1) -> Batch:
        """Micro-batch ``index`` of this process: rows [index * B * world + rank * B, ... + B) of the
        endless sequence of shuffled epochs."""
        start = (index * world_size + rank) * batch_size
        rows = []
        for position in range(start, start + batch_size):
            epoch, offset = divmod(position, len(self.examples))
            rows.append(self.examples[self._order(seed, epoch)[offset]])
        return self.collate(rows)
