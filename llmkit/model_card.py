"""Model cards: the README.md every checkpoint llmkit writes carries beside its weights.

A card says what the model is (architecture and size), how it was made (pretrained, fine-tuned,
converted, quantized; from which base), on what data under which licenses, with which objective,
for how many steps and tokens, the final metrics, what it is for and what it is not. It follows
the Hugging Face layout: YAML front matter (``library_name``, ``license``, ``base_model``, ``tags``)
and Markdown sections, so hub tools and people read the same file.

Standard library only (layer L0): the workflows fill a ``ModelCard``; ``checkpoint.save`` adds
the architecture facts it counts from the built model and writes ``render(card)`` atomically
with the rest of the directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CARD = "README.md"
SIGNATURE = "Written by llmkit (`llmkit inspect` shows this card)."

# licenses of the corpora that every Python installation carries (llmkit.data.builtin)
BUILTIN_LICENSES = {
    "builtin:python-docs": ("Python Software Foundation License 2.0", "yes"),
    "builtin:python-stdlib": ("Python Software Foundation License 2.0", "yes"),
}
COMMERCIAL = ("yes", "no", "unclear", "unknown")


@dataclass
class DataSource:
    """One training data source and the terms it comes under."""

    name: str  # a path, a catalog name or builtin:NAME
    license: str = "unknown: check the data's origin before you share or sell the model"
    commercial: str = "unknown"  # yes | no | unclear | unknown: may a model trained on it be used commercially?
    share: float | None = None  # fraction of the training tokens

    def line(self) -> str:
        share = "" if self.share is None else f" ({self.share:.1%} of tokens)"
        flag = {"no": " **non-commercial**", "unclear": " **license unclear**"}.get(self.commercial, "")
        return f"- `{self.name}`{share}: {self.license}{flag}"


@dataclass
class ModelCard:
    """What a checkpoint's README.md says; ``checkpoint.save`` fills ``architecture``."""

    how_made: str  # one sentence: "Pretrained from scratch by `llmkit pretrain` ..."
    name: str = ""
    base_model: str | None = None
    objective: str | None = None
    training_data: list[DataSource] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)  # steps, tokens, batch, lr, ... as shown
    metrics: dict[str, Any] = field(default_factory=dict)
    intended_use: str = (
        "Research, teaching and experiments with llmkit: reading the model, measuring it, adapting it. "
        "It is not evaluated for any application; evaluate it on your task before you rely on it."
    )
    limitations: list[str] = field(default_factory=list)
    license: str | None = None  # of the weights, where known
    base_card: str | None = None  # the card of the checkpoint this one was made from, kept whole
    architecture: dict[str, Any] = field(default_factory=dict)
    # other names of this same model (a conversion's Hugging Face origin, e.g. "HuggingFaceTB/SmolLM2-135M-Instruct"):
    # `llmkit serve` answers to them too; a model made from it (fine-tuned, quantized) starts without them
    aliases: list[str] = field(default_factory=list)


def source_of(name: str, catalog_lookup: Any = None) -> DataSource:
    """A DataSource for a corpus name, with its license where llmkit knows it.

    ``catalog_lookup(name)`` may return (license, commercial) for data sets llmkit ships.
    """
    if name in BUILTIN_LICENSES:
        license_, commercial = BUILTIN_LICENSES[name]
        return DataSource(name, license_, commercial)
    if catalog_lookup is not None:
        found = catalog_lookup(name)
        if found is not None:
            return DataSource(name, *found)
    return DataSource(name)


def architecture(config: dict[str, Any], parameters: int) -> dict[str, Any]:
    """The facts of a ModelConfig dict a reader wants first: family, shape, positions, size."""
    keys = ("family", "n_layer", "n_decoder_layer", "d_model", "n_head", "n_kv_head", "d_ff", "vocab_size")
    facts = {k: config[k] for k in keys if config.get(k) is not None}
    if config.get("family") != "encoder_decoder":
        facts.pop("n_decoder_layer", None)
    facts["context window"] = config.get("max_seq_len")
    facts["positions"] = config.get("pos")
    facts["norm"] = f"{config.get('norm')} ({config.get('norm_placement')})"
    facts["mlp"] = f"{config.get('mlp')}, {config.get('activation')}"
    facts["tied embeddings"] = config.get("tie_embeddings")
    facts["parameters"] = parameters
    return facts


def _yaml_scalar(value: Any) -> str:
    return json.dumps(value)  # a JSON string or number is a YAML scalar


def _front_matter(card: ModelCard) -> str:
    lines = ["---", "library_name: llmkit"]
    if card.license:
        lines.append(f"license: {_yaml_scalar(card.license)}")
    if card.base_model:
        lines.append(f"base_model: {_yaml_scalar(card.base_model)}")
    if card.aliases:  # a JSON list is a YAML flow sequence
        lines.append(f"aliases: {json.dumps(card.aliases, ensure_ascii=False)}")
    family = card.architecture.get("family", "")
    lines.append("tags:")
    lines += [f"- {t}" for t in ("llmkit", family.replace("_", "-") or "transformer")]
    lines.append("---")
    return "\n".join(lines)


def _table(rows: dict[str, Any]) -> list[str]:
    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, int):
            return f"{v:,}"
        if isinstance(v, float):
            return f"{v:,.4g}"
        return str(v)

    return ["| | |", "|---|---|", *(f"| {k} | {fmt(v)} |" for k, v in rows.items())]


def render(card: ModelCard) -> str:
    """The card as Markdown with YAML front matter; sections in the order readers look for them."""
    title = card.name or "llmkit model"
    out = [_front_matter(card), "", f"# {title}", "", card.how_made, ""]
    if card.architecture:
        params = card.architecture.get("parameters")
        size = f" ({params / 1e6:,.2f}M parameters)" if isinstance(params, int) else ""
        out += [f"## Architecture{size}", "", *_table(card.architecture), ""]
    if card.base_model:
        out += ["## Base model", "", f"`{card.base_model}`", ""]
    out += ["## Training data", ""]
    if card.training_data:
        out += [s.line() for s in card.training_data]
        if any(s.commercial in ("no", "unclear") for s in card.training_data):
            out += ["", "Some of this data is non-commercial or has no stated license: check it before any "
                    "commercial use of the model."]  # fmt: skip
    else:
        out.append("None recorded: this checkpoint was not trained by llmkit.")
    out.append("")
    if card.objective or card.training:
        out += ["## Training", ""]
        if card.objective:
            out += [f"Objective: {card.objective}.", ""]
        if card.training:
            out += [*_table(card.training), ""]
    if card.metrics:
        out += ["## Metrics", "", *_table(card.metrics), ""]
    out += ["## Intended use", "", card.intended_use, ""]
    if card.limitations:
        out += ["## Limitations", "", *(f"- {item}" for item in card.limitations), ""]
    if card.base_card:  # its training data and licenses still apply: keep them, headings one level down
        lines = [line for line in body(card.base_card).splitlines() if line != SIGNATURE]
        demoted = [("##" + line if line.startswith("#") else line) for line in lines]
        out += ["## Card of the base checkpoint", "", *demoted, ""]
    out += [SIGNATURE]
    return "\n".join(out) + "\n"


def read(directory: str | Path) -> str | None:
    """The README.md of a checkpoint directory, None where there is none."""
    path = Path(directory) / CARD
    try:
        return path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        return None


def front_matter_value(text: str, key: str) -> str | None:
    """A top-level scalar of a card's YAML front matter (e.g. ``license``), None when absent."""
    if not text.startswith("---\n"):
        return None
    end = text.find("\n---", 4)
    for line in text[4 : end if end != -1 else len(text)].splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == key and not line.startswith((" ", "-")):
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            return value or None
    return None


def body(text: str) -> str:
    """The card without its YAML front matter, for printing."""
    if text.startswith("---\n"):
        end = text.find("\n---\n", 4)
        if end != -1:
            return text[end + 5 :].lstrip("\n")
    return text


def aliases(text: str) -> list[str]:
    """The card's ``aliases`` (other names of the same model), [] when it has none or they do not parse."""
    raw = front_matter_value(text, "aliases")
    try:
        names = json.loads(raw) if raw else []
    except json.JSONDecodeError:
        return []
    return [n for n in names if isinstance(n, str) and n.strip()] if isinstance(names, list) else []
