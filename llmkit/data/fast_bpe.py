"""Encoding engines for `llmkit data tokenize`: tiktoken's for byte-level BPE, `tokenizers` for the rest.

tiktoken encodes byte-level BPE several times faster than `tokenizers` per CPU second (its regex
and merge loop are leaner; it releases the GIL, so threads run texts in parallel; figures in
docs/benchmarks.md). It is a different implementation of the same algorithm, so
:func:`choose_engine` only uses it when the tokenizer is one it reproduces exactly, and checks:

1. structure: a BPE model with no normalizer, the ByteLevel pre-tokenizer with GPT-2's regex
   (``use_regex=True``, ``add_prefix_space=False``), no dropout, continuation prefix, suffix or
   byte fallback, all 256 byte symbols in the vocabulary, no merge producing a token twice, and
   added tokens that match as plain strings (no lstrip/rstrip/single_word, none a prefix of another,
   not switched off by ``encode_special_tokens``);
2. the vocabulary: every merged token, encoded alone by `tokenizers`' BPE model, is that one token
   (tiktoken looks a whole pre-token up in the vocabulary before merging);
3. a sample: unicode, emoji, CRLF, whitespace runs, code and special tokens, plus whatever text the
   caller passes, must give identical ids. ``tokenize_corpus`` also compares the first part of
   every source it reads.

The mapping: tiktoken's ranks are merge priorities (a token's rank is the index of the merge that
makes it; the 256 single bytes come first), and `tokenizers` merges the adjacent pair whose merge
comes first in ``merges``. The ids a tokenizer assigns need not follow merge order (byte symbols
sit after the special tokens, in unicode order; hub files may number tokens freely), so tiktoken's
output ranks are translated to ids through a table, never used as ids directly.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable
from typing import Protocol

import numpy as np

from llmkit.data.tokenizer import Tokenizer, byte_level_alphabet

# The pre-tokenization regex of GPT-2, which HF's ByteLevel(use_regex=True) applies (byte_level.rs).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Text that exercises every branch of the regex and of the byte mapping.
CHECK_TEXTS = (
    "Hello, world! It's we're they've I'm you'll he'd IT'S don't 'quoted' x's",
    "naïve café Ünïcödé ß ﬁ Ελληνικά русский 中文字符 日本語 한국어 العربية עברית हिन्दी ไทย",
    "emoji 😀👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ combining e\u0301 a\u0308 zero\u200bwidth \ufeffbom \ue000private",
    "CRLF line\r\nnext\r\n\r\nblank\rcr only\n\n\n\ttabs\t\t\tand\x0bvertical\x0cform\x1cseparators\x85nel",
    "runs:" + " " * 37 + "end" + "\n" * 9 + "x" + " \t \n " * 5 + "\u00a0\u2003\u3000 unicode spaces  ",
    "def f(x: int) -> dict[str, int]:\n    if x >= 10 and x != 0x1F:\n        return {'a': x ** 2}  # comment\n"
    "\treturn [i for i in range(3)]\n\n\nclass A(B):\n    '''doc'''\n        pass\n",
    "numbers 123 4567890 3.14159 1e-10 ²³ ½ Ⅻ ٣٤ ０１２ $1,000.00 50% #42 @user a_b-c/d\\e",
    "specials <|endoftext|> inside<|endoftext|>text <|pad|><|pad|> <|endoftext <|endoftext|x> </s> [SEP]",
    "   leading spaces and trailing   ",
    "",
    " ",
    "\n",
)


class Engine(Protocol):
    """Encodes texts without special tokens; ``name`` says which implementation runs."""

    name: str
    threads: int  # how many texts to encode at once from a thread pool (1: the engine parallelizes itself)

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids of each text as uint32 arrays, identical to ``Tokenizer.encode(t, add_special_tokens=False)``."""
        ...


class TokenizersEngine:
    """The reference: `tokenizers`' encode_batch, parallel over the batch (Rust threads)."""

    name = "tokenizers"
    threads = 1

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        encodings = self.tokenizer.backend.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(encoding.ids, dtype=np.uint32) for encoding in encodings]


class TiktokenEngine:
    """tiktoken's CoreBPE loaded with a byte-level BPE vocabulary; ranks translated to the tokenizer's ids."""

    name = "tiktoken"

    def __init__(self, encoding, rank_to_id: np.ndarray, threads: int | None = None) -> None:
        self.encoding = encoding
        self.rank_to_id = rank_to_id
        self._specials = encoding.special_tokens_set
        self.threads = threads or _usable_cpus()

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        return [self.encode_one(text) for text in texts]

    def encode_one(self, text: str) -> np.ndarray:
        ranks = self.encoding.encode_to_numpy(text, allowed_special=self._specials, disallowed_special=())
        return self.rank_to_id[ranks]


class UnsupportedTokenizer(Exception):
    """The tokenizer is not one tiktoken reproduces; the message says why."""


def tiktoken_engine(tokenizer: Tokenizer) -> TiktokenEngine:
    """Build the tiktoken engine for a byte-level BPE ``tokenizer`` (checks 1 and 2 of the module docstring).

    Raises :class:`UnsupportedTokenizer` with the reason when the tokenizer is not byte-level BPE
    as GPT-2 and llmkit's ``bpe`` kind define it, or when tiktoken is not installed.
    """
    try:
        import tiktoken
    except ImportError as err:
        raise UnsupportedTokenizer("tiktoken is not installed (pip install tiktoken)") from err
    if getattr(tokenizer.backend, "encode_special_tokens", False):
        raise UnsupportedTokenizer("special tokens are encoded as text (encode_special_tokens)")
    spec = json.loads(tokenizer.backend.to_str())
    _check_structure(spec)
    model = spec["model"]
    vocab: dict[str, int] = model["vocab"]
    byte_of = _unicode_to_byte()
    to_latin1 = str.maketrans({char: chr(b) for char, b in byte_of.items()})
    pairs = [merge if isinstance(merge, list) else merge.split(" ") for merge in model["merges"]]
    merged_tokens = [left + right for left, right in pairs]
    # Ranks: 0-255 the single bytes in byte order, then each merge's token in merge order (its priority).
    ranks: dict[bytes, int] = {bytes([b]): b for b in range(256)}
    ranks.update(zip([t.translate(to_latin1).encode("latin-1") for t in merged_tokens], itertools.count(256)))
    if len(ranks) != 256 + len(merged_tokens):
        raise UnsupportedTokenizer("two merges produce the same token")
    rank_to_id = [vocab[char] for char in sorted(byte_of, key=byte_of.get)] + [vocab[t] for t in merged_tokens]
    if model.get("ignore_merges"):
        # tiktoken's whole-pre-token lookup then mirrors HF exactly, if every vocab entry is reachable.
        if len(vocab) - len(_added_in_vocab(spec, vocab)) != len(ranks):
            raise UnsupportedTokenizer("ignore_merges with vocabulary entries that no merge makes")
    else:
        _check_tokens_encode_to_themselves(tokenizer, merged_tokens, rank_to_id[256:])
    specials = {token["content"]: len(rank_to_id) + i for i, token in enumerate(spec["added_tokens"])}
    rank_to_id += [token["id"] for token in spec["added_tokens"]]
    encoding = tiktoken.Encoding(
        "llmkit-byte-level-bpe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=specials
    )
    return TiktokenEngine(encoding, np.asarray(rank_to_id, dtype=np.uint32))


def choose_engine(tokenizer: Tokenizer, sample: Iterable[str] = ()) -> tuple[Engine, str]:
    """The fastest engine that gives ``tokenizer``'s exact ids, and a note saying which and why.

    Order: try :func:`tiktoken_engine`; compare it with `tokenizers` on :data:`CHECK_TEXTS` plus
    ``sample``; use it if every id matches, else fall back to :class:`TokenizersEngine`.
    """
    reference = TokenizersEngine(tokenizer)
    try:
        fast = tiktoken_engine(tokenizer)
    except UnsupportedTokenizer as why:
        return reference, f"tokenizers (tiktoken cannot run this tokenizer: {why})"
    mismatch = first_mismatch(fast, reference, [*CHECK_TEXTS, *sample])
    if mismatch is not None:
        return reference, f"tokenizers (tiktoken's ids differ on {mismatch[:60]!r})"
    return fast, "tiktoken (ids checked against tokenizers)"


def first_mismatch(engine: Engine, reference: Engine, texts: list[str]) -> str | None:
    """The first text on which the two engines disagree, None when they agree on all."""
    for text, mine, theirs in zip(texts, engine.encode(texts), reference.encode(texts), strict=True):
        if not np.array_equal(mine, theirs):
            return text
    return None


# --- checks -----------------------------------------------------------------------------------------


def _check_structure(spec: dict) -> None:
    model = spec.get("model") or {}
    pre = spec.get("pre_tokenizer") or {}
    problems = [
        (model.get("type") != "BPE", f"the model is {model.get('type')}, not BPE"),
        (spec.get("normalizer") is not None, "it has a normalizer"),
        (pre.get("type") != "ByteLevel", f"the pre-tokenizer is {pre.get('type')}, not ByteLevel"),
        (not pre.get("use_regex", True), "ByteLevel runs without GPT-2's regex"),
        # HF prepends the space to every stretch between added tokens, tiktoken could not follow.
        (bool(pre.get("add_prefix_space")), "ByteLevel adds a prefix space"),
        (model.get("dropout") not in (None, 0.0), "BPE dropout is on"),
        (bool(model.get("continuing_subword_prefix")), "BPE has a continuing-subword prefix"),
        (bool(model.get("end_of_word_suffix")), "BPE has an end-of-word suffix"),
        (bool(model.get("byte_fallback")), "BPE uses byte fallback"),
    ]
    for failed, reason in problems:
        if failed:
            raise UnsupportedTokenizer(reason)
    vocab = model.get("vocab") or {}
    missing = [char for char in _unicode_to_byte() if char not in vocab]
    if missing:
        raise UnsupportedTokenizer(f"{len(missing)} of the 256 byte symbols are not in the vocabulary")
    added = [token["content"] for token in spec.get("added_tokens", [])]
    for token in spec.get("added_tokens", []):
        if token.get("lstrip") or token.get("rstrip") or token.get("single_word"):
            raise UnsupportedTokenizer(f"the added token {token['content']!r} strips spaces or matches whole words")
    # HF matches added tokens leftmost-longest; tiktoken's alternation is leftmost-first in no set order.
    for a in added:
        if any(b != a and b.startswith(a) for b in added):
            raise UnsupportedTokenizer(f"the added token {a!r} is a prefix of another")


def _check_tokens_encode_to_themselves(tokenizer: Tokenizer, tokens: list[str], ids: list[int]) -> None:
    """tiktoken returns a pre-token found in the vocabulary as is; HF's BPE must agree for every merged token."""
    tokenize = tokenizer.backend.model.tokenize
    for token, token_id in zip(tokens, ids, strict=True):
        pieces = tokenize(token)
        if len(pieces) != 1 or pieces[0].id != token_id:
            raise UnsupportedTokenizer(f"the token {token!r} does not encode to itself")


def _added_in_vocab(spec: dict, vocab: dict[str, int]) -> list[str]:
    return [token["content"] for token in spec.get("added_tokens", []) if token["content"] in vocab]


def _unicode_to_byte() -> dict[str, int]:
    """GPT-2's byte-level alphabet inverted (a copy: callers may change it)."""
    return dict(byte_level_alphabet())


def _usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS and Windows have no affinity call
        return max(1, os.cpu_count() or 1)
