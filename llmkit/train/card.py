"""The model card of a pretraining run: data and licenses, objective, steps, tokens, losses."""

from __future__ import annotations

from typing import Any

from llmkit.config import ModelConfig, TrainConfig
from llmkit.data.catalog import DATASETS
from llmkit.model_card import DataSource, ModelCard, source_of

OBJECTIVES = {  # objective name -> what the card says it is
    "causal_lm": "causal language modelling (predict each next token)",
    "masked_lm": "masked language modelling (BERT: predict masked tokens from both sides)",
    "span_corruption": "span corruption (T5: reconstruct masked spans of the input)",
}


def shipped_license(source: str) -> tuple[str, str] | None:
    """(license, commercial) of a source inside one of the data sets shipped under data/, else None."""
    parts = source.replace("\\", "/").split("/")
    for dataset in DATASETS:
        folder = ["data", *dataset.folder.split("/")]
        if any(parts[i : i + len(folder)] == folder for i in range(len(parts))):
            return dataset.license, dataset.commercial
    return None


def data_sources(meta: dict[str, Any], catalog_lookup: Any = shipped_license) -> list[DataSource]:
    """The training sources of a data directory's meta.json, with their share of train tokens."""
    out = []
    for entry in meta.get("sources", []):
        source = source_of(str(entry.get("source", "?")), catalog_lookup)
        source.share = entry.get("train", {}).get("share")
        out.append(source)
    return out


def pretrain_card(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    objective: str,
    data_meta: dict[str, Any],
    progress: dict[str, Any],
    catalog_lookup: Any = shipped_license,
) -> ModelCard:
    """The card of a checkpoint saved at ``progress`` (step, tokens, losses, seconds) of a run."""
    step, tokens = progress["step"], progress["tokens"]
    training = {
        "steps": step,
        "tokens seen": tokens,
        "batch": f"{cfg.batch_size * cfg.grad_accum * progress.get('world_size', 1)} x {cfg.block_size} tokens",
        "learning rate": f"{cfg.lr:g}, warmup {cfg.warmup_steps} steps, cosine to {cfg.min_lr:g}",
        "precision": cfg.dtype,
        "train seconds": round(progress.get("seconds", 0.0), 1),
        "data": cfg.data,
    }
    metrics = {
        k: v
        for k, v in (
            ("train loss", progress.get("train_loss")),
            ("validation loss", progress.get("val_loss")),
            ("validation perplexity", progress.get("val_ppl")),
            ("validation loss at init", progress.get("init_val_loss")),
        )
        if v is not None
    }
    return ModelCard(
        how_made=f"Pretrained from scratch by `llmkit pretrain` ({OBJECTIVES.get(objective, objective)}).",
        name=model_cfg.name,
        objective=OBJECTIVES.get(objective, objective),
        training_data=data_sources(data_meta, catalog_lookup),
        training=training,
        metrics=metrics,
        limitations=[
            f"A small model trained for {step:,} steps on {tokens:,} tokens: it continues text in the style of "
            "its data; it states no reliable facts and follows no instructions.",
            "No instruction tuning, preference tuning or safety training.",
            "It knows only the languages and domains of its training data (above).",
        ],
    )
