"""Train GPT-2 (byte-level BPE), BERT (WordPiece) and T5 (Unigram) tokenizers with HF `tokenizers`.

The algorithms are the library's; this module chooses the pieces per family (normalizer,
pre-tokenizer, model, post-processor, decoder) and the special tokens with their roles.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from llmkit.data.tokenizer import KINDS, Tokenizer, bert_post_processor
from llmkit.errors import LlmkitError
from llmkit.files import open_text

TEXT_SUFFIXES = (".txt", ".md", ".txt.gz", ".md.gz")  # what a folder contributes

# --- training -------------------------------------------------------------------------------------


def train_tokenizer(
    texts: Iterable[str],
    kind: str,
    vocab_size: int,
    min_frequency: int = 2,
    n_sentinels: int = 100,
    show_progress: bool = False,
) -> Tokenizer:
    """Train a tokenizer of family ``kind`` on ``texts``; ``vocab_size`` counts every id, specials included.

    - ``"bpe"`` (GPT-2): byte-level BPE, lossless on any text; ``<|endoftext|>`` is bos and eos,
      ``<|pad|>`` a separate pad so padding never looks like an end of text. Adds no tokens on encode.
    - ``"wordpiece"`` (BERT): lowercasing BERT normalizer, ``##`` continuations, ``[PAD]`` = 0,
      then ``[UNK] [CLS] [SEP] [MASK]``; encode wraps text as ``[CLS] text [SEP]``.
    - ``"unigram"`` (T5): SentencePiece-style unigram with ``▁`` for spaces; ``<pad>`` = 0,
      ``</s>`` = 1, ``<unk>`` = 2; ``n_sentinels`` ``<extra_id_i>`` tokens take the last ids with
      ``<extra_id_0>`` the highest, as in T5; encode appends ``</s>``. ``min_frequency`` is unused.
    """
    if kind not in _BUILDERS:
        raise LlmkitError(f"unknown tokenizer kind {kind!r}", f"choose one of {', '.join(KINDS)}")
    minimum = _MIN_VOCAB[kind] + (n_sentinels if kind == "unigram" else 0)
    if vocab_size < minimum:
        raise LlmkitError(
            f"vocab_size={vocab_size} is too small for a {kind} tokenizer (its fixed tokens need {minimum})",
            f"use --vocab-size {max(minimum * 2, 1000)} or more",
        )
    return _BUILDERS[kind](iter(texts), vocab_size, min_frequency, n_sentinels, show_progress)


def _train_bpe(texts: Iterator[str], vocab_size: int, min_frequency: int, _: int, progress: bool) -> Tokenizer:
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # GPT-2 ships this post-processor; it only adjusts offsets and never adds tokens.
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=progress,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        # All 256 byte symbols up front, so no input can ever be unknown.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(texts, trainer)
    return Tokenizer(backend, {"bos": "<|endoftext|>", "eos": "<|endoftext|>", "pad": "<|pad|>"})


def _train_wordpiece(texts: Iterator[str], vocab_size: int, min_frequency: int, _: int, progress: bool) -> Tokenizer:
    backend = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=progress,
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        continuing_subword_prefix="##",
        # Without a cap, every distinct character gets an id (and a ## twin), which on multilingual text
        # can exceed vocab_size; BERT capped its alphabet at 1000 and left the rarest characters [UNK].
        limit_alphabet=min(1000, vocab_size // 4),
    )
    backend.train_from_iterator(texts, trainer)
    backend.post_processor = bert_post_processor(backend, "[CLS]", "[SEP]")
    roles = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
    return Tokenizer(backend, roles)


def _train_unigram(texts: Iterator[str], vocab_size: int, _: int, n_sentinels: int, progress: bool) -> Tokenizer:
    backend = tokenizers.Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size - n_sentinels,  # the sentinels are added after training
        show_progress=progress,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
    )
    try:
        backend.train_from_iterator(texts, trainer)
    except Exception as err:  # tokenizers raises a bare Exception; errors from `texts` pass through as they are
        if "not large enough" not in str(err):
            raise
        raise LlmkitError(
            f"vocab_size={vocab_size} cannot hold every distinct character of the text (unigram needs one id each)",
            "raise --vocab-size, or drop text in rarely used scripts",
        ) from err
    # T5 numbers sentinels downward from the top id (<extra_id_0> = vocab_size - 1), and span-corruption
    # code written for T5 relies on that; adding them highest index first reproduces it.
    backend.add_special_tokens([f"<extra_id_{i}>" for i in reversed(range(n_sentinels))])
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", backend.token_to_id("</s>"))]
    )
    return Tokenizer(backend, {"pad": "<pad>", "eos": "</s>", "unk": "<unk>"})


_BUILDERS = {"bpe": _train_bpe, "wordpiece": _train_wordpiece, "unigram": _train_unigram}
# Fixed tokens per kind: BPE's 256 byte symbols + 2 specials; 5 BERT specials + a few characters;
# 3 T5 specials + a few pieces (sentinels are added on top).
_MIN_VOCAB = {"bpe": 258, "wordpiece": 16, "unigram": 16}


# --- input files ----------------------------------------------------------------------------------


def iter_text_files(paths: Iterable[str | os.PathLike]) -> Iterator[str]:
    """Yield the contents of each file; a folder contributes its ``.txt`` and ``.md`` files (plain or ``.gz``),
    recursively, sorted.

    Every path is checked when this is called, before anything is read, so a typo fails at once
    rather than after a progress bar has started.
    """
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.name.endswith(TEXT_SUFFIXES) and p.is_file())
            if not found:
                raise LlmkitError(
                    f"no .txt or .md files (or .gz of them) under {path}", "point at text files or a folder of them"
                )
            files.extend(found)
        else:
            raise LlmkitError(f"no such file or directory: {path}", "check the path")
    return (_read_text(file) for file in files)


def _read_text(path: Path) -> str:
    """A text file's contents; ``.gz`` files (as the shipped data sets in data/ are) decompressed."""
    # Real corpora carry stray bytes; a replacement character is better than aborting a long run.
    with open_text(path, errors="replace") as file:
        return file.read()


# --- helpers --------------------------------------------------------------------------------------
