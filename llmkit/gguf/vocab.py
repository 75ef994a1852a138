"""The tokenizer a GGUF file describes in its metadata <-> a Hugging Face ``tokenizers`` tokenizer.

A GGUF carries no tokenizer.json: llama.cpp stores the vocabulary (``tokenizer.ggml.tokens``), the
BPE merges, each token's type (1 normal, 3 control, 4 user-defined, 5 unused), the special-token ids
and, in ``tokenizer.ggml.pre``, the name of the pre-tokenizer regex the merges were learned with.
llmkit reads byte-level BPE (``tokenizer.ggml.model = gpt2``: GPT-2, SmolLM, Qwen2, Llama 3) and
rebuilds it the way transformers' GGUF loader does, with the split regex llama.cpp uses for each
``pre`` name; SentencePiece vocabularies (``llama``) and others are refused with their name.
"""

from __future__ import annotations

import json
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors

from llmkit.data.tokenizer import Tokenizer, byte_level_alphabet
from llmkit.errors import LlmkitError

NORMAL, CONTROL, USER_DEFINED = 1, 3, 4  # llama.cpp's token types

GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre -> the regex that cuts text before BPE (llama.cpp's llama-vocab.cpp); None means
# GPT-2's own regex inside the ByteLevel pre-tokenizer
SPLITS: dict[str, str | None] = {
    "default": None,
    "gpt2": None,
    "smollm": None,  # GPT-2's regex after every digit is split off (see _pre_tokenizer)
    "llama3": LLAMA3_SPLIT,
    "llama-v3": LLAMA3_SPLIT,
    "llama-bpe": LLAMA3_SPLIT,
    "smaug-bpe": LLAMA3_SPLIT,
    "qwen2": QWEN2_SPLIT,
    "deepseek-r1-qwen": QWEN2_SPLIT,
}
DIGITS_FIRST = ("smollm",)


# ---- GGUF metadata -> tokenizer -----------------------------------------------------------------
def tokenizer_from_metadata(meta: dict[str, Any], source: str) -> tuple[Tokenizer, dict[str, Any]] | None:
    """The tokenizer and its tokenizer_config.json entries (chat template, add_bos_token), or None
    when the file has no vocabulary."""
    kind = meta.get("tokenizer.ggml.model")
    if kind is None or "tokenizer.ggml.tokens" not in meta:
        return None
    if kind != "gpt2":
        raise LlmkitError(
            f"{source}: tokenizer model '{kind}' is unsupported",
            "llmkit rebuilds byte-level BPE vocabularies (tokenizer.ggml.model = gpt2) only",
        )
    pre = str(meta.get("tokenizer.ggml.pre", "default"))
    if pre not in SPLITS:
        raise LlmkitError(
            f"{source}: pre-tokenizer '{pre}' is unknown to llmkit",
            f"known tokenizer.ggml.pre names: {', '.join(SPLITS)}",
        )
    tokens, types = list(meta["tokenizer.ggml.tokens"]), list(meta.get("tokenizer.ggml.token_type") or [])
    backend = _byte_level_bpe(tokens, list(meta.get("tokenizer.ggml.merges") or []), source)
    backend.pre_tokenizer = _pre_tokenizer(pre, bool(meta.get("tokenizer.ggml.add_space_prefix", False)))
    backend.decoder = decoders.ByteLevel()
    _add_special(backend, tokens, types)
    roles = {
        role: backend.id_to_token(token_id)
        for role, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"), ("unk", "unknown"))
        if (token_id := meta.get(f"tokenizer.ggml.{key}_token_id")) is not None and 0 <= token_id < len(tokens)
    }
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    backend.post_processor = _post_processor(backend, roles, add_bos, add_eos)
    config: dict[str, Any] = {"add_bos_token": add_bos, "add_eos_token": add_eos}
    if "tokenizer.chat_template" in meta:
        config["chat_template"] = meta["tokenizer.chat_template"]
    return Tokenizer(backend, roles), config


def _byte_level_bpe(tokens: list[str], merges: list[str], source: str) -> tokenizers.Tokenizer:
    """BPE over GPT-2's byte alphabet. A token spelled outside the alphabet (a raw-text added token)
    is respelled in it, as transformers does; ids follow the file's order."""
    alphabet = byte_level_alphabet()
    spelling = {b: ch for ch, b in alphabet.items()}
    vocab = {
        t if set(t) <= alphabet.keys() else "".join(spelling[b] for b in t.encode("utf-8")): i
        for i, t in enumerate(tokens)
    }
    pairs = []
    for merge in merges:
        parts = merge.split(" ")
        if len(parts) != 2:
            raise LlmkitError(f"{source}: malformed merge {merge!r}", "the file's tokenizer.ggml.merges is corrupt")
        pairs.append((parts[0], parts[1]))
    try:
        bpe = models.BPE(vocab=vocab, merges=pairs, dropout=None, continuing_subword_prefix="", end_of_word_suffix="")
    except Exception as err:  # a merge naming a token that is not in the vocabulary
        raise LlmkitError(f"{source}: inconsistent vocabulary and merges ({err})", "the file is corrupt") from None
    return tokenizers.Tokenizer(bpe)


def _pre_tokenizer(pre: str, add_prefix_space: bool) -> Any:
    split = SPLITS[pre]
    if split is not None:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    if pre in DIGITS_FIRST:  # SmolLM's own tokenizer.json: every digit on its own, then GPT-2's regex
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    return byte_level


def _add_special(backend: tokenizers.Tokenizer, tokens: list[str], types: list[int]) -> None:
    """Control tokens match whole as special tokens, user-defined ones as plain added tokens.

    A control token spelled outside the byte alphabet was respelled in the vocabulary, so it has no
    id of its own to match; transformers skips it, and so do we. A file without token types
    (``types`` empty) has no special tokens to add.
    """
    alphabet = byte_level_alphabet()
    control = [t for t, k in zip(tokens, types, strict=False) if k == CONTROL and set(t) <= alphabet.keys()]
    if control:
        backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control])
    vocab = backend.get_vocab()
    user = [t for t, k in zip(tokens, types, strict=False) if k == USER_DEFINED and t in vocab]
    if user:
        backend.add_tokens([AddedToken(t, normalized=False, special=False) for t in user])


def _post_processor(backend: tokenizers.Tokenizer, roles: dict[str, str], add_bos: bool, add_eos: bool) -> Any:
    """BOS/EOS around each sequence when the file says so (``add_special_tokens=True`` applies it)."""
    bos, eos = roles.get("bos") if add_bos else None, roles.get("eos") if add_eos else None
    if bos is None and eos is None:
        return processors.ByteLevel(trim_offsets=False)
    first, last = [bos] if bos else [], [eos] if eos else []
    special = [(t, backend.token_to_id(t)) for t in dict.fromkeys(first + last)]
    return processors.TemplateProcessing(
        single=" ".join([*first, "$A", *last]),
        pair=" ".join([*first, "$A", *last, *first, "$B:1", *last]),
        special_tokens=special,
    )


# ---- tokenizer -> GGUF metadata -----------------------------------------------------------------
def metadata_from_tokenizer(tok: Tokenizer, chat_template: str | None = None) -> dict[str, Any]:
    """``tokenizer.*`` keys for a byte-level BPE tokenizer; an LlmkitError names what has no GGUF form."""
    backend = tok.backend
    if not tok.is_byte_level:
        raise LlmkitError(
            "this checkpoint's tokenizer is not byte-level BPE; GGUF export writes byte-level BPE vocabularies only",
            "export a model whose tokenizer is byte-level BPE (llmkit tokenizer train --kind bpe)",
        )
    n = tok.vocab_size
    tokens = [backend.id_to_token(i) for i in range(n)]
    if any(t is None for t in tokens):
        raise LlmkitError("the tokenizer's ids are not contiguous", "GGUF lists one token per id from 0")
    added = {a.content: a for a in backend.get_added_tokens_decoder().values()}
    types = [(CONTROL if added[t].special else USER_DEFINED) if t in added else NORMAL for t in tokens]
    model = json.loads(backend.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    meta: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": _pre_name(json.loads(backend.to_str()).get("pre_tokenizer")),
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
    }
    for role, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"), ("unk", "unknown")):
        if (token_id := getattr(tok, f"{role}_token_id")) is not None:
            meta[f"tokenizer.ggml.{key}_token_id"] = token_id
    with_special, plain = tok.encode("a"), tok.encode("a", add_special_tokens=False)
    meta["tokenizer.ggml.add_bos_token"] = len(with_special) > len(plain) and with_special[0] == tok.bos_token_id
    meta["tokenizer.ggml.add_eos_token"] = len(with_special) > len(plain) and with_special[-1] == tok.eos_token_id
    if chat_template:
        meta["tokenizer.chat_template"] = chat_template
    return meta


def _pre_name(pre: dict[str, Any] | None) -> str:
    """The tokenizer.ggml.pre name whose regex is this pre-tokenizer, or an error."""
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre] if pre else []
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = steps[0].get("pattern", {}).get("Regex")
        for name, split in SPLITS.items():
            if split is not None and split == regex:
                return name
    raise LlmkitError(
        f"the tokenizer's pre-tokenizer ({' + '.join(map(str, kinds)) or 'none'}) has no llama.cpp name",
        f"GGUF export knows the pre-tokenizers {', '.join(SPLITS)}",
    )
