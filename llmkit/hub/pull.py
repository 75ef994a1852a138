"""`llmkit models get ORG/NAME[@REVISION]`: a Hub repository, downloaded and checked, converted to a checkpoint.

Order: resolve the revision to a commit (download.resolve) -> decide the format (safetensors, else a
GGUF file chosen by quantization type) -> fetch the small files and, for safetensors, check the
architecture in config.json before any weights move -> fetch the weights -> convert from a folder
that holds only the checked files (llmkit.hf.from_hf or llmkit.gguf.from_gguf; both write atomically).
The checkpoint's card records the repository, revision and commit, the upstream license and the
upstream card whole; ``hub.json`` beside it lists every file with its size and hash, and the
repository's license files are copied in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llmkit import model_card
from llmkit.errors import LlmkitError
from llmkit.gguf.layout import ARCHITECTURES
from llmkit.hub import download
from llmkit.hub.download import Snapshot
from llmkit.hub.names import (
    CARD,
    CONFIG,
    INDEX,
    WEIGHTS,
    HubName,
    choose_gguf,
    license_files,
    parse,
    support_files,
    weights_format,
)
from llmkit.model_card import ModelCard
from llmkit.units import human_bytes

PROVENANCE = "hub.json"  # where the checkpoint says which files of which commit it was made from


@dataclass
class GetResult:
    """What `models get` did, for its summary line."""

    out: Path
    name: HubName
    commit: str
    files: dict[str, int]  # path -> bytes
    fetched_bytes: int
    seconds: float
    dtype: str
    source: str  # "safetensors" or the GGUF file's name
    offline: bool

    def summary(self) -> str:
        total = sum(self.files.values())
        came = "from the cache (offline)" if self.offline else f"{human_bytes(self.fetched_bytes)} downloaded"
        return (
            f"{self.name} (commit {self.commit[:12]}): {len(self.files)} files, {human_bytes(total)} ({came}), "
            f"sizes and hashes checked, {self.source} converted to {self.out} ({self.dtype}) in {self.seconds:.1f} s"
        )


def default_dir(name: HubName) -> Path:
    """models/NAME ($LLMKIT_MODELS moves models/), as for the registry's names."""
    from llmkit.gguf.registry import models_dir

    return models_dir() / name.name


def get(spec: str | HubName, out: Path | None = None, dtype: str = "bf16", quant: str | None = None) -> GetResult:
    """Download ``spec`` (ORG/NAME[@REVISION]) through the hub cache, check it, convert it to ``out``."""
    start = time.perf_counter()
    name = parse(spec) if isinstance(spec, str) else spec
    if dtype not in ("bf16", "fp32", "quantized"):
        raise LlmkitError(f"dtype '{dtype}' is not valid", "choose one of: bf16, fp32, quantized")
    out = Path(out) if out is not None else default_dir(name)
    snap = download.resolve(name)
    fmt = weights_format(snap.files, quant, str(name))
    if dtype == "quantized" and fmt == "safetensors":
        raise LlmkitError(
            f"--dtype quantized keeps a GGUF file's blocks; {name} is taken as safetensors",
            "pass --quant Q4_0, Q4_1 or Q8_0 to take its GGUF file, or quantize later with llmkit quantize",
        )
    convert = _convert_safetensors if fmt == "safetensors" else _convert_gguf
    source, local = convert(snap, out, dtype, quant)
    sizes = {path: p.stat().st_size for path, p in local.items()}
    return GetResult(
        out, name, snap.commit, sizes, snap.fetched_bytes, time.perf_counter() - start, dtype, source, snap.offline
    )


def _fetch_all(snap: Snapshot, paths: list[str]) -> dict[str, Path]:
    download.describe(snap, paths)
    return {path: download.fetch(snap, path) for path in paths}


def _convert_safetensors(snap: Snapshot, out: Path, dtype: str, quant: str | None) -> tuple[str, dict[str, Path]]:
    from llmkit.hf.convert import from_hf

    repo = str(snap.name)
    small = support_files(snap.files, repo) + ([INDEX] if INDEX in snap.files else [])
    local = _fetch_all(snap, small)
    hf = _read_json(local[CONFIG], repo)
    check_architecture(hf, repo)  # before the weights: an unsupported model costs no gigabytes
    weights = _shards(local[INDEX], snap, repo) if INDEX in local else [WEIGHTS]
    local.update(_fetch_all(snap, weights))
    card = hub_card(snap, local, f"converted from safetensors (model_type {hf.get('model_type')})", dtype)
    with _staging(local) as folder:
        from_hf(folder, out, dtype=dtype, card=card, extra_files=_extra_files(snap, local, "safetensors"))
    return "safetensors", local


def _convert_gguf(snap: Snapshot, out: Path, dtype: str, quant: str | None) -> tuple[str, dict[str, Path]]:
    from llmkit.gguf.convert import converted_card, from_gguf
    from llmkit.gguf.reader import open_gguf

    repo = str(snap.name)
    chosen = choose_gguf(snap.files, quant, repo, "the cache (HF_HUB_OFFLINE=1)" if snap.offline else "the repository")
    local = _fetch_all(snap, support_files(snap.files, repo, transformers=False) + [chosen])
    f = open_gguf(local[chosen])
    if f.architecture not in ARCHITECTURES:
        raise LlmkitError(f"{repo}: GGUF architecture '{f.architecture}' is not a family llmkit loads", _families())
    types = ", ".join(f"{t} x{n}" for t, n in sorted(f.type_counts().items(), key=lambda kv: -kv[1]))
    kept = "Q4_0/Q4_1/Q8_0 matrices kept as int4/int8" if dtype == "quantized" else "dequantized"
    how = f"converted from `{chosen}` (GGUF, architecture {f.architecture}; tensor types {types}), {kept}"
    card = hub_card(snap, local, how, dtype)
    # converted_card's limitations say the weights keep the file's quantization error
    card = dataclasses.replace(card, limitations=converted_card(f, dtype).limitations)
    from_gguf(f.path, out, dtype=dtype, progress=True, card=card, extra_files=_extra_files(snap, local, chosen))
    return chosen, local


def check_architecture(hf: dict[str, Any], repo: str) -> None:
    """A one-line error, naming what loads, for a model_type no converter reads."""
    from llmkit.hf.convert import ALIASES, CONVERTERS

    model_type = hf.get("model_type")
    if ALIASES.get(model_type, model_type) not in CONVERTERS:
        classes = ", ".join(hf.get("architectures") or []) or "no architectures"
        raise LlmkitError(f"{repo}: model_type '{model_type}' ({classes}) is not a family llmkit loads", _families())


def _families() -> str:
    """The hint of an unsupported model: every family that loads, by the names config.json and GGUF files use."""
    from llmkit.hf.convert import ALIASES, CONVERTERS

    return (
        f"llmkit converts model_type {', '.join(sorted([*CONVERTERS, *ALIASES]))} from safetensors, "
        f"and GGUF files of architecture {', '.join(ARCHITECTURES)}"
    )


def _shards(index: Path, snap: Snapshot, repo: str) -> list[str]:
    """The safetensors files a sharded checkpoint's index names, each listed by the repository."""
    weight_map = _read_json(index, repo).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise LlmkitError(f"{repo}: {INDEX} has no weight_map", "the repository's index is broken")
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards if s not in snap.files]
    if missing:
        raise LlmkitError(f"{repo}: {INDEX} names {missing[0]}, which the repository lacks", "the upload is incomplete")
    return shards


def _read_json(path: Path, repo: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LlmkitError(f"{repo}: {path.name} is not valid JSON ({err})", "the repository's file is broken") from None
    if not isinstance(data, dict):
        raise LlmkitError(f"{repo}: {path.name} is not a JSON object", "the repository's file is broken")
    return data


@contextlib.contextmanager
def _staging(local: dict[str, Path]) -> Iterator[Path]:
    """A temporary folder of links to exactly the checked files, so the converter reads nothing else the cache's
    snapshot folder may hold (files other tools downloaded at the same commit)."""
    with tempfile.TemporaryDirectory(prefix="llmkit-hub-") as tmp:
        folder = Path(tmp)
        for path, source in local.items():
            try:
                os.symlink(source.resolve(), folder / path)
            except OSError:  # no symlinks here (Windows without developer mode): copy
                shutil.copyfile(source, folder / path)
        yield folder


# ---- card and provenance ------------------------------------------------------------------------
def upstream_license(card_text: str | None) -> str | None:
    """The license the upstream card's YAML front matter states (``other`` with its ``license_name``)."""
    if not card_text:
        return None
    license_ = model_card.front_matter_value(card_text, "license")
    named = model_card.front_matter_value(card_text, "license_name")
    return f"{license_} ({named})" if license_ == "other" and named else license_


def hub_card(snap: Snapshot, local: dict[str, Path], how: str, dtype: str) -> ModelCard:
    """llmkit's card for the checkpoint: where it came from, at which commit; upstream's license and card."""
    upstream = local[CARD].read_text(encoding="utf-8", errors="replace") if CARD in local else None
    name = snap.name
    checked = "the hashes the cache holds them under (offline)" if snap.offline else "the Hub's sizes and hashes"
    return ModelCard(
        how_made=f"Downloaded by `llmkit models get {name}` from {snap.endpoint}/{name.repo_id} at commit "
        f"`{snap.commit}` (revision `{snap.revision}`), every file checked against {checked}, "
        f"and {how}; stored as {dtype}. {PROVENANCE} lists the files.",
        name=name.name,
        base_model=name.repo_id,
        aliases=[name.repo_id],  # served under the Hub's name too, as vLLM serves a model it pulled
        license=upstream_license(upstream),
        intended_use="As the upstream model card says"
        + (" (kept below, under Card of the base checkpoint)." if upstream else "; the repository has none."),
        limitations=["llmkit did not train this model: its training data, biases and limits are the source's."],
        base_card=upstream,
    )


def _extra_files(snap: Snapshot, local: dict[str, Path], source: str) -> dict[str, Any]:
    """hub.json (repository, revision, commit, every file's size and hash) and the license files, as they are."""
    files = {}
    for path, p in local.items():
        expected = snap.expected.get(path)
        files[path] = {
            "size": p.stat().st_size,
            "sha256": expected.sha256 if expected else None,
            "git_sha1": expected.git_sha1 if expected else None,
        }
    provenance = {
        "repo_id": snap.name.repo_id,
        "revision": snap.revision,
        "commit": snap.commit,
        "endpoint": snap.endpoint,
        "source": source,
        "offline": snap.offline,
        "fetched": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "files": files,
    }
    licenses = {path: local[path].read_bytes() for path in license_files(list(local))}
    return {PROVENANCE: provenance, **licenses}
