"""The Tokenizer llmkit models carry: encode/decode over HF `tokenizers`, special-token roles, files.

It remembers which token plays which role (bos, eos, pad, ...). Directories are Hugging Face
compatible: ``tokenizer.json`` plus ``tokenizer_config.json``, so `transformers` can load what we
save and we can load what it saves. Training lives in ``llmkit.data.tokenizer_train``.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from llmkit.errors import LlmkitError
from llmkit.files import atomic_write, read_json

ROLES = ("bos", "eos", "pad", "unk", "mask", "cls", "sep")
KINDS = ("bpe", "wordpiece", "unigram")

# Token strings whose role is clear from the name alone, for directories without a roles file.
_WELL_KNOWN: dict[str, tuple[str, ...]] = {
    "<|endoftext|>": ("bos", "eos"),
    "<|pad|>": ("pad",),
    "<s>": ("bos",),
    "</s>": ("eos",),
    "<pad>": ("pad",),
    "<unk>": ("unk",),
    "<mask>": ("mask",),
    "[PAD]": ("pad",),
    "[UNK]": ("unk",),
    "[CLS]": ("cls",),
    "[SEP]": ("sep",),
    "[MASK]": ("mask",),
}

_HF_SAVE_HINT = (
    "convert it with transformers: AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR) writes tokenizer.json"
)


class Tokenizer:
    """A `tokenizers.Tokenizer` (``self.backend``) plus the roles of its special tokens."""

    def __init__(self, backend: tokenizers.Tokenizer, special_tokens: dict[str, str]) -> None:
        unknown_roles = set(special_tokens) - set(ROLES)
        if unknown_roles:
            raise LlmkitError(f"unknown special-token roles {sorted(unknown_roles)}", f"use roles from {ROLES}")
        for role, token in special_tokens.items():
            if backend.token_to_id(token) is None:
                raise LlmkitError(
                    f"the {role} token {token!r} is not in the tokenizer's vocabulary",
                    "fix the special tokens in tokenizer_config.json or add the token to tokenizer.json",
                )
        self.backend = backend
        self._roles = dict(special_tokens)
        # the chat template of tokenizer_config.json (a Jinja string, or HF's list of named templates),
        # carried so that every checkpoint written from this tokenizer (quantize, finetune, lora merge) keeps it
        self.chat_template: str | list | None = None

    # --- encoding -------------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens`` applies the post-processor (BERT [CLS]/[SEP], T5 </s>)."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        """Token ids of each text, encoded in parallel by `tokenizers` (no padding)."""
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return [encoding.ids for encoding in encodings]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """The text of ``ids``; special tokens are dropped unless ``skip_special_tokens`` is False."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # --- vocabulary -----------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens (e.g. T5 sentinels) included: the size an embedding needs."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        """The id of ``token``, or None when it is not in the vocabulary."""
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """The token string of ``token_id``, or None when out of range."""
        return self.backend.id_to_token(token_id)

    @property
    def is_byte_level(self) -> bool:
        """True for byte-level BPE (GPT-2, Llama 3): each token string spells raw bytes in GPT-2's alphabet."""
        return isinstance(self.backend.model, models.BPE) and isinstance(self.backend.decoder, decoders.ByteLevel)

    def token_bytes(self, token_id: int) -> bytes | None:
        """The raw bytes a byte-level BPE token stands for (part of a UTF-8 character, possibly).

        None for other tokenizers, for ids out of range, and for tokens spelled outside the byte
        alphabet (added tokens such as ``<|pad|>`` are spelled in it, and stand for their text).
        """
        piece = self.backend.id_to_token(token_id) if self.is_byte_level else None
        byte_of = byte_level_alphabet()
        if piece is None or not all(ch in byte_of for ch in piece):
            return None
        return bytes(byte_of[ch] for ch in piece)

    @property
    def special_tokens(self) -> dict[str, str]:
        """Role -> token string, e.g. ``{"bos": "<|endoftext|>", ...}`` (a copy)."""
        return dict(self._roles)

    def _role_id(self, role: str) -> int | None:
        token = self._roles.get(role)
        return None if token is None else self.backend.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self._role_id("bos")

    @property
    def eos_token_id(self) -> int | None:
        return self._role_id("eos")

    @property
    def pad_token_id(self) -> int | None:
        return self._role_id("pad")

    @property
    def unk_token_id(self) -> int | None:
        return self._role_id("unk")

    @property
    def mask_token_id(self) -> int | None:
        return self._role_id("mask")

    @property
    def cls_token_id(self) -> int | None:
        return self._role_id("cls")

    @property
    def sep_token_id(self) -> int | None:
        return self._role_id("sep")

    @property
    def sentinel_token_ids(self) -> list[int]:
        """Ids of ``<extra_id_0>``, ``<extra_id_1>``, ... (T5 span-corruption sentinels), in that order."""
        ids = []
        while (token_id := self.backend.token_to_id(f"<extra_id_{len(ids)}>")) is not None:
            ids.append(token_id)
        return ids

    # --- files ----------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike, model_max_length: int | None = None) -> None:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``directory`` (created if needed).

        Each file is written to a temporary file in the same directory and renamed into place, so a
        crash never leaves a half-written file behind.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {f"{role}_token": token for role, token in self._roles.items()}
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        if model_max_length is not None:
            config["model_max_length"] = model_max_length
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        atomic_write(directory / "tokenizer.json", self.backend.to_str(pretty=True))
        atomic_write(directory / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def from_dir(cls, directory: str | os.PathLike) -> Tokenizer:
        """Load ``tokenizer.json``; roles come from tokenizer_config.json / special_tokens_map.json.

        Without either roles file, roles are inferred from well-known token strings in the vocabulary
        (``<|endoftext|>``, ``<s>``, ``[CLS]``, ...).
        """
        directory = _existing_dir(directory)
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise LlmkitError(f"no tokenizer.json in {directory}", "train one with `llmkit tokenizer train`")
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises a bare Exception for any parse error
            raise LlmkitError(f"cannot read {path}: {err}", "the file is corrupt; save or download it again") from err
        # Some hub files (all-MiniLM-L6-v2) carry fixed padding/truncation to 128; transformers ignores
        # them and so do we: batching pads explicitly, and the context window is the model's to enforce.
        backend.no_padding()
        backend.no_truncation()
        tokenizer = cls(backend, _roles_for(directory, backend))
        tokenizer.chat_template = (_read_json(directory / "tokenizer_config.json") or {}).get("chat_template")
        jinja = directory / "chat_template.jinja"  # transformers' newer place for it, preferred when present
        if jinja.is_file():
            tokenizer.chat_template = jinja.read_text(encoding="utf-8")
        return tokenizer

    @classmethod
    def from_hf_dir(cls, directory: str | os.PathLike) -> Tokenizer:
        """Load a Hugging Face tokenizer directory, building tokenizer.json from older files if needed.

        Order: ``tokenizer.json`` if present; else ``vocab.json`` + ``merges.txt`` (byte-level BPE as
        GPT-2); else ``vocab.txt`` (BERT WordPiece, lowercased unless ``do_lower_case`` is false).
        A SentencePiece-only directory (``spiece.model``) is refused with the conversion command.
        """
        directory = _existing_dir(directory)
        if (directory / "tokenizer.json").is_file():
            return cls.from_dir(directory)
        config = _read_json(directory / "tokenizer_config.json") or {}
        if (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
            backend = _byte_level_bpe_from_files(directory, add_prefix_space=bool(config.get("add_prefix_space")))
        elif (directory / "vocab.txt").is_file():
            backend = _wordpiece_from_file(directory, lowercase=config.get("do_lower_case", True))
        elif (directory / "spiece.model").is_file() or (directory / "tokenizer.model").is_file():
            raise LlmkitError(f"{directory} has only a SentencePiece model; llmkit needs tokenizer.json", _HF_SAVE_HINT)
        else:
            raise LlmkitError(
                f"no tokenizer files in {directory} (looked for tokenizer.json, vocab.json+merges.txt, vocab.txt)",
                _HF_SAVE_HINT,
            )
        roles = _roles_for(directory, backend)
        # Built from a bare vocabulary, the special tokens are plain entries: register them as
        # special so they are never split and decode(skip_special_tokens=True) drops them.
        extra = _additional_special_tokens(directory)
        backend.add_special_tokens([t for t in [*roles.values(), *extra] if backend.token_to_id(t) is not None])
        if "cls" in roles and "sep" in roles:
            backend.post_processor = bert_post_processor(backend, roles["cls"], roles["sep"])
        return cls(backend, roles)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, special_tokens={self._roles})"


@functools.cache
def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet (bytes_to_unicode) inverted: character -> the byte it stands for.

    Printable bytes stand for themselves; the other 68 map to U+0100 onwards in byte order, so
    every byte has a visible, non-space character and a token string can spell any bytes.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    mapping = {chr(b): b for b in printable}
    mapping.update({chr(256 + i): b for i, b in enumerate(others)})
    return mapping


def bert_post_processor(backend: tokenizers.Tokenizer, cls: str, sep: str) -> processors.TemplateProcessing:
    """``[CLS] $A [SEP]`` and ``[CLS] $A [SEP] $B [SEP]`` with BERT's token-type ids 0 / 1."""
    return processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, backend.token_to_id(cls)), (sep, backend.token_to_id(sep))],
    )


def _existing_dir(directory: str | os.PathLike) -> Path:
    path = Path(directory)
    if not path.is_dir():
        raise LlmkitError(f"tokenizer directory not found: {path}", "pass a directory holding tokenizer.json")
    return path


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, None when the file does not exist."""
    return read_json(path, "the file is corrupt; save or download it again") if path.is_file() else None


def _token_content(value: Any) -> str | None:
    """HF stores a special token as a string or as an AddedToken dict ``{"content": ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _roles_for(directory: Path, backend: tokenizers.Tokenizer) -> dict[str, str]:
    """Roles from tokenizer_config.json then special_tokens_map.json; inferred from the vocab if neither exists."""
    files = [_read_json(directory / name) for name in ("tokenizer_config.json", "special_tokens_map.json")]
    if all(f is None for f in files):
        return _infer_roles(backend)
    roles: dict[str, str] = {}
    for data in filter(None, files):
        for role in ROLES:
            token = _token_content(data.get(f"{role}_token"))
            if token is not None:
                roles[role] = token
    return roles


def _infer_roles(backend: tokenizers.Tokenizer) -> dict[str, str]:
    roles: dict[str, str] = {}
    for token, token_roles in _WELL_KNOWN.items():
        if backend.token_to_id(token) is not None:
            for role in token_roles:
                roles.setdefault(role, token)
    return roles


def _additional_special_tokens(directory: Path) -> list[str]:
    tokens: list[str] = []
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        for value in (_read_json(directory / name) or {}).get("additional_special_tokens") or []:
            if (token := _token_content(value)) is not None:
                tokens.append(token)
    return tokens


def _byte_level_bpe_from_files(directory: Path, add_prefix_space: bool) -> tokenizers.Tokenizer:
    """GPT-2's layout: vocab.json + merges.txt, byte-level pre-tokenizer and decoder, no normalizer."""
    try:
        model = models.BPE.from_file(str(directory / "vocab.json"), str(directory / "merges.txt"))
    except Exception as err:
        raise LlmkitError(f"cannot read vocab.json/merges.txt in {directory}: {err}", _HF_SAVE_HINT) from err
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return backend


def _wordpiece_from_file(directory: Path, lowercase: bool) -> tokenizers.Tokenizer:
    """BERT's layout: vocab.txt, BERT normalizer and pre-tokenizer, ``##`` continuations."""
    path = directory / "vocab.txt"
    try:
        model = models.WordPiece.from_file(str(path), unk_token="[UNK]")
    except Exception as err:
        raise LlmkitError(f"cannot read {path}: {err}", _HF_SAVE_HINT) from err
    backend = tokenizers.Tokenizer(model)
    backend.normalizer = normalizers.BertNormalizer(lowercase=bool(lowercase))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    return backend
