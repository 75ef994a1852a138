"""Hub model names and which of a repository's files `llmkit models get` needs. Standard library only.

``ORG/NAME[@REVISION]`` names a repository on the Hugging Face Hub (a registry name has no ``/``).
Of its files only what the converters read is fetched: safetensors weights (one file, or the shards a
``model.safetensors.index.json`` names), ``config.json``, ``generation_config.json``, the tokenizer
files, the model card (``README.md``) and license files; or, for a repository of GGUF files, one
``.gguf`` chosen by its quantization type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmkit.errors import LlmkitError

EXAMPLE = "HuggingFaceTB/SmolLM2-135M-Instruct"
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # the Hub's rule for user, organisation and repo names
_REVISION = re.compile(r"^[A-Za-z0-9._/-]+$")  # branch, tag (may hold '/', as refs/pr/1 does) or commit sha

CONFIG = "config.json"
INDEX = "model.safetensors.index.json"
WEIGHTS = "model.safetensors"
CARD = "README.md"
# read by from_hf and Tokenizer.from_hf_dir when present (tokenizer_extras: chat template, model_max_length)
OPTIONAL = ("generation_config.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
# the vocabulary, in the order Tokenizer.from_hf_dir prefers it
VOCABULARIES = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("vocab.txt",))
SENTENCEPIECE = ("spiece.model", "tokenizer.model")
PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_LICENSE = re.compile(r"^(LICEN[CS]E|COPYING)([-_.][A-Za-z0-9_.-]*)?$", re.IGNORECASE)

# llama.cpp's quantization types as they appear in file names (Q4_K_M, IQ4_XS, Q8_0, F16, BF16, ...)
_QUANT = re.compile(r"(?:^|[-_.])((?:I?Q|TQ)\d+(?:_[A-Z0-9]+)*|BF16|FP16|FP32|F16|F32|MXFP4)$", re.IGNORECASE)
_SPLIT = re.compile(r"-\d{5}-of-\d{5}$")  # gguf-split's parts: llmkit reads whole files only
# The default when --quant is not given. llmkit dequantizes every GGUF on conversion, so a smaller file
# saves only download time: the most exact type short of full precision first (Q8_0 is nearly lossless
# at half of F16's bytes), then full precision, then the larger quantizations before the smaller.
QUANT_PREFERENCE = (
    "Q8_0", "F16", "BF16", "F32", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0",
)  # fmt: skip


@dataclass(frozen=True)
class HubName:
    """A repository on the Hub and the revision asked for (None: the default branch, main)."""

    repo_id: str
    revision: str | None = None

    @property
    def name(self) -> str:
        """The repository's own name, without its organisation: the default folder under models/."""
        return self.repo_id.split("/")[1]

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def is_hub_name(text: str) -> bool:
    """True for ``ORG/NAME[@REV]`` (a registry name never holds a '/')."""
    return "/" in text


def parse(text: str) -> HubName:
    """``ORG/NAME`` or ``ORG/NAME@REVISION`` -> HubName, or a one-line error saying the form."""
    repo, _, revision = text.partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(_PART.match(p) for p in parts) or (_ and not _REVISION.match(revision)):
        raise LlmkitError(
            f"'{text}' is not a Hub model name",
            f"write ORG/NAME or ORG/NAME@REVISION (a branch, tag or commit), e.g. {EXAMPLE}",
        )
    return HubName(repo, revision or None)


# ---- which files ---------------------------------------------------------------------------------
def quant_type(filename: str) -> str | None:
    """The quantization type a GGUF file name states (``SmolLM2.Q4_K_M.gguf`` -> ``Q4_K_M``), or None."""
    stem = filename.rsplit("/", 1)[-1].removesuffix(".gguf")
    match = _QUANT.search(stem)
    return normalize_quant(match.group(1)) if match else None


def normalize_quant(text: str) -> str:
    """``q4_k_m`` -> ``Q4_K_M``, ``fp16`` -> ``F16``: one spelling for file names and --quant."""
    upper = text.upper()
    return {"FP16": "F16", "FP32": "F32"}.get(upper, upper)


def gguf_files(files: list[str]) -> dict[str, str]:
    """Quantization type -> file, for the repository's whole .gguf files (the first by path for a type)."""
    found: dict[str, str] = {}
    for path in sorted(files):
        if path.endswith(".gguf") and not _SPLIT.search(path.removesuffix(".gguf")):
            found.setdefault(quant_type(path) or path.rsplit("/", 1)[-1], path)
    return found


def choose_gguf(files: list[str], quant: str | None, repo: str, listing: str = "the repository") -> str:
    """The GGUF file for ``quant`` (or the first of QUANT_PREFERENCE present, else the first by type);
    ``listing`` says where ``files`` were listed, for the error (offline: the cache)."""
    by_type = gguf_files(files)
    if not by_type:
        raise LlmkitError(f"{repo}: no single-file GGUF in the repository", "llmkit reads whole .gguf files")
    if quant is not None:
        wanted = normalize_quant(quant)
        if wanted not in by_type:
            raise LlmkitError(
                f"{repo}: no {wanted} GGUF file; {listing} has {', '.join(sorted(by_type))}",
                f"pick one with --quant, e.g. --quant {sorted(by_type)[0]}",
            )
        return by_type[wanted]
    for q in QUANT_PREFERENCE:
        if q in by_type:
            return by_type[q]
    return by_type[sorted(by_type)[0]]


def weights_format(files: list[str], quant: str | None, repo: str) -> str:
    """``safetensors`` or ``gguf``: what the conversion reads. --quant asks for GGUF; otherwise
    safetensors where the repository has them, GGUF where it holds only that."""
    top = set(files)
    has_safetensors = WEIGHTS in top or INDEX in top
    has_gguf = bool(gguf_files(files))
    if quant is not None or (has_gguf and not has_safetensors):
        if not has_gguf:
            raise LlmkitError(f"{repo}: --quant asks for a GGUF file, but the repository has none", "leave --quant out")
        return "gguf"
    if has_safetensors:
        if CONFIG not in top:
            raise LlmkitError(f"{repo}: safetensors weights but no config.json", "llmkit converts transformers repos")
        return "safetensors"
    if any(name in top for name in PICKLED):
        raise LlmkitError(
            f"{repo}: only pickled PyTorch weights (pytorch_model.bin), no safetensors",
            "llmkit downloads safetensors or GGUF; look for a revision or a copy of the model that has them",
        )
    raise LlmkitError(
        f"{repo}: no model weights llmkit reads (model.safetensors, a sharded safetensors index, or .gguf)",
        "check the repository's files on its page; adapters and other formats are not models to convert",
    )


def support_files(files: list[str], repo: str, transformers: bool = True) -> list[str]:
    """The small files that come with the weights: for a transformers repository config and tokenizer (one
    vocabulary form); for any, the card and license files."""
    top = set(files)
    wanted = [CONFIG, *OPTIONAL] if transformers else []
    if transformers:
        vocab = next((group for group in VOCABULARIES if all(n in top for n in group)), None)
        if vocab is None and any(n in top for n in SENTENCEPIECE):
            raise LlmkitError(
                f"{repo}: only a SentencePiece tokenizer ({', '.join(n for n in SENTENCEPIECE if n in top)})",
                "llmkit needs tokenizer.json; look for a copy of the model saved by a recent transformers",
            )
        wanted += list(vocab or ())
    wanted += [CARD] + sorted(n for n in top if _LICENSE.match(n))
    return [n for n in dict.fromkeys(wanted) if n in top]


def license_files(files: list[str]) -> list[str]:
    """The license files among ``files`` (LICENSE, LICENSE.txt, LICENCE.md, COPYING, ...)."""
    return [n for n in files if _LICENSE.match(n)]
