"""merge_checkpoint: a base checkpoint plus a LoRA adapter -> a plain checkpoint (`llmkit lora merge`)."""

from __future__ import annotations

import os
from pathlib import Path

from llmkit import checkpoint, model_card
from llmkit.errors import LlmkitError
from llmkit.lora.layers import merge_lora
from llmkit.lora.peft_format import load_adapter, read_adapter_config
from llmkit.model_card import ModelCard


def merge_checkpoint(
    base: str | os.PathLike, adapter: str | os.PathLike, out: str | os.PathLike, verify: bool = True
) -> Path:
    """Load ``base`` (an llmkit checkpoint), wrap it with the peft-format ``adapter``, fold B A into
    the weights and save a plain checkpoint at ``out`` (atomically, in the base's dtype).

    A quantized (int8/int4) base is refused: merge into the float checkpoint it was made from, then
    quantize the merged one if wanted (re-quantizing W + BA rounds away most of a small update).
    """
    base, adapter = Path(base), Path(adapter)
    read_adapter_config(adapter)  # a bad adapter is reported before the base is loaded
    model = checkpoint.load(base, verify=verify)
    spec = model.quantization
    if spec is not None and not spec.is_cast:
        raise LlmkitError(
            f"{base} is quantized to {spec.method}: merging would quantize W + BA again and lose most of the update",
            "merge into the float checkpoint it was quantized from, then llmkit quantize the result",
        )
    lora = load_adapter(model, adapter)
    merge_lora(model)
    model.requires_grad_(True)  # a plain checkpoint: trainable in full again
    return checkpoint.save(model, out, card=merged_card(base, adapter, lora.rank, lora.alpha))


def merged_card(base: Path, adapter: Path, rank: int, alpha: float) -> ModelCard:
    """The card of a merged checkpoint: base and adapter named, the base's card kept below."""
    base_card = model_card.read(base)
    return ModelCard(
        how_made=f"Merged by `llmkit lora merge`: the LoRA adapter in `{adapter}` (rank {rank}, alpha {alpha:g}) "
        f"folded into the weights of `{base}` (W + alpha/rank * B A); the result needs no adapter.",
        name=f"{base.name} + {adapter.name}",
        base_model=str(base),
        license=model_card.front_matter_value(base_card, "license") if base_card else None,
        limitations=[
            "The adapter's training data and task shape this model beside the base's: see the adapter's own notes.",
            "The base checkpoint's data, licenses and limits (below) still apply.",
        ],
        base_card=base_card,
    )
