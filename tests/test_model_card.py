"""Model cards: rendering, the licenses they flag, and the cards convert and init write."""

import json

import pytest
import torch

from llmkit import checkpoint, model_card
from llmkit.cli import main
from llmkit.model_card import DataSource, ModelCard, render, source_of


def test_render_has_front_matter_and_every_section_in_order():
    card = ModelCard(
        how_made="Fine-tuned by hand.",
        name="tiny",
        base_model="base/model",
        objective="causal language modelling",
        training_data=[DataSource("data/dialogsum", "CC BY-NC-SA 4.0", "no", 0.25), source_of("builtin:python-docs")],
        training={"steps": 1200, "lr": 0.001},
        metrics={"validation loss": 2.345678},
        limitations=["small"],
        license="apache-2.0",
        architecture={"family": "decoder", "parameters": 1_234_567},
    )
    text = render(card)
    assert text.startswith('---\nlibrary_name: llmkit\nlicense: "apache-2.0"\nbase_model: "base/model"\ntags:\n')
    heads = [line for line in text.splitlines() if line.startswith("#")]
    assert heads == ["# tiny", "## Architecture (1.23M parameters)", "## Base model", "## Training data",
                     "## Training", "## Metrics", "## Intended use", "## Limitations"]  # fmt: skip
    assert "- `data/dialogsum` (25.0% of tokens): CC BY-NC-SA 4.0 **non-commercial**" in text
    assert "- `builtin:python-docs`: Python Software Foundation License 2.0\n" in text
    assert "check it before any commercial use" in text
    assert (
        "| steps | 1,200 |" in text and "| validation loss | 2.346 |" in text and "| parameters | 1,234,567 |" in text
    )
    assert model_card.front_matter_value(text, "license") == "apache-2.0"
    assert model_card.front_matter_value(text, "base_model") == "base/model"
    assert model_card.front_matter_value(text, "datasets") is None
    assert model_card.body(text).startswith("# tiny\n")


def test_a_card_without_training_says_so_and_flags_nothing():
    text = render(ModelCard("Saved by hand."))
    assert "None recorded: this checkpoint was not trained by llmkit." in text
    assert "commercial" not in text and "## Metrics" not in text


def test_init_writes_an_untrained_card(tmp_path):
    assert main(["init", "tiny-gpt-1m", str(tmp_path / "m"), "--model.n_layer", "1"]) == 0
    text = (tmp_path / "m" / "README.md").read_text()
    assert "Freshly initialized with random weights (seed 0) by `llmkit init tiny-gpt-1m`" in text
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    params = sum(p.numel() for p in checkpoint.load(tmp_path / "m").parameters())
    assert f"| n_layer | {cfg['n_layer']} |" in text and f"| parameters | {params:,} |" in text


def test_convert_from_hf_names_its_source_and_keeps_its_license_and_to_hf_carries_the_card(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, bos_token_id=0, eos_token_id=0)
    )
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "README.md").write_text("---\nlicense: mit\ntags:\n- x\n---\n# a model\n")
    from llmkit.hf.convert import from_hf, to_hf

    from_hf(tmp_path / "hf", tmp_path / "ours")
    text = (tmp_path / "ours" / "README.md").read_text()
    assert model_card.front_matter_value(text, "license") == "mit"
    assert f"Converted by `llmkit convert --from-hf` from the transformers checkpoint in `{tmp_path / 'hf'}`" in text
    assert "model_type gpt2" in text and "(its README.md, beside the source weights)" in text
    to_hf(tmp_path / "ours", tmp_path / "back")
    assert (tmp_path / "back" / "README.md").read_text() == text


def test_shipped_data_gets_its_catalog_license_in_a_pretrain_card():
    from llmkit.train.card import data_sources

    meta = {"sources": [
        {"source": "data/dialogsum/dialogsum.train.jsonl.gz", "train": {"share": 0.75}},
        {"source": "/abs/clone/data/domain/legal_scotus/scotus_ot2019.txt.gz", "train": {"share": 0.25}},
        {"source": "builtin:python-docs", "train": {"share": 0.0}},
        {"source": "notes/mine.txt", "train": {"share": 0.0}},
    ]}  # fmt: skip
    lines = [s.line() for s in data_sources(meta)]
    assert lines == [
        "- `data/dialogsum/dialogsum.train.jsonl.gz` (75.0% of tokens): CC BY-NC-SA 4.0 **non-commercial**",
        "- `/abs/clone/data/domain/legal_scotus/scotus_ot2019.txt.gz` (25.0% of tokens): public domain (US gov.)",
        "- `builtin:python-docs` (0.0% of tokens): Python Software Foundation License 2.0",
        "- `notes/mine.txt` (0.0% of tokens): unknown: check the data's origin before you share or sell the model",
    ]


def test_quantize_writes_its_card_with_the_weight_error_and_keeps_the_base_card(tmp_path, capsys):
    assert main(["init", "tiny-gpt-1m", str(tmp_path / "m"), "--model.n_layer", "1"]) == 0
    assert main(["quantize", str(tmp_path / "m"), "--to", "int8", str(tmp_path / "q")]) == 0
    report = capsys.readouterr().out
    text = (tmp_path / "q" / "README.md").read_text()
    assert f"Quantized by `llmkit quantize` from `{tmp_path / 'm'}`: int8" in text
    error = report.split("at most ")[1].split(" (")[0]  # the CLI's figure, e.g. "0.41%"
    assert f"| largest relative weight error | {error[:-1]}" in text
    base = model_card.body((tmp_path / "m" / "README.md").read_text())
    assert "## Card of the base checkpoint" in text and "### Architecture" in text
    assert "Freshly initialized with random weights (seed 0)" in text.split("## Card of the base checkpoint")[1]
    kept = text.split("## Card of the base checkpoint")[1]
    assert base.count("\n## ") == kept.count("\n#### ") == 4 and text.count(model_card.SIGNATURE) == 1


def test_inspect_shows_the_card_after_the_figures_and_in_json(tmp_path, capsys):
    assert main(["init", "tiny-gpt-1m", str(tmp_path / "m"), "--model.n_layer", "1"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    figures, card = out.split("\nmodel card (README.md):\n\n")
    assert "weights memory:" in figures and card.startswith("# tiny-gpt-1m\n\nFreshly initialized")
    assert card.rstrip() == model_card.body((tmp_path / "m" / "README.md").read_text()).rstrip()
    assert main(["inspect", str(tmp_path / "m"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model_card"] == (tmp_path / "m" / "README.md").read_text()
    assert "\n  license: not stated (no license in the model card)" in figures
    readme = tmp_path / "m" / "README.md"
    readme.write_text(readme.read_text().replace("library_name: llmkit\n", "library_name: llmkit\nlicense: mit\n"))
    assert main(["inspect", str(tmp_path / "m")]) == 0
    assert "\n  license: mit\n" in capsys.readouterr().out.split("\nmodel card")[0]
    (tmp_path / "m" / "README.md").unlink()
    assert main(["inspect", str(tmp_path / "m")]) == 0
    assert "model card: none (README.md is missing from the checkpoint)" in capsys.readouterr().out
