"""Pretraining objectives: a window of token ids -> a ``Batch`` of model inputs and target labels.

- ``causal_lm`` (GPT; Radford et al. 2018): predict every next token.
- ``masked_lm`` (BERT; Devlin et al. 2019, sec. 3.1): corrupt 15% of the tokens, predict the originals.
- ``span_corruption`` (T5; Raffel et al. 2020, sec. 3.1.4): replace random spans with sentinels in the
  encoder input; the decoder writes each sentinel followed by the span it stands for.

Models return logits only; ``lm_loss`` turns logits and labels into the loss. All randomness comes
from the ``torch.Generator`` the caller passes, so a resumed run redraws identical batches.
``make_objective`` binds one objective to a run's configs and tokenizer.
"""

from llmkit.objectives.batch import IGNORE_INDEX, Batch, lm_loss
from llmkit.objectives.lm import causal_lm, masked_lm
from llmkit.objectives.objective import (
    FAMILY_OBJECTIVES,
    CausalLM,
    MaskedLM,
    Objective,
    SpanCorruption,
    make_objective,
)
from llmkit.objectives.spans import (
    random_spans_noise_mask,
    span_corruption,
    span_corruption_from_mask,
    span_corruption_lengths,
)

__all__ = [
    "FAMILY_OBJECTIVES",
    "IGNORE_INDEX",
    "Batch",
    "CausalLM",
    "MaskedLM",
    "Objective",
    "SpanCorruption",
    "causal_lm",
    "lm_loss",
    "make_objective",
    "masked_lm",
    "random_spans_noise_mask",
    "span_corruption",
    "span_corruption_from_mask",
    "span_corruption_lengths",
]
