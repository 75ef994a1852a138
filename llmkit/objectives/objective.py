"""Objectives bound to a run: ``make_objective`` picks one per model family and reads the special
token ids it needs from the tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from llmkit.config import ModelConfig, TrainConfig
from llmkit.data.tokenizer import Tokenizer
from llmkit.errors import LlmkitError
from llmkit.objectives.batch import Batch
from llmkit.objectives.lm import causal_lm, masked_lm
from llmkit.objectives.spans import noise_counts, span_corruption, span_corruption_lengths


# ---- objectives bound to a run --------------------------------------------------------------
class Objective:
    """A pretraining objective with its settings and special ids, built once per run by ``make_objective``.

    ``window_length(block_size)``: raw tokens per row to draw for ``block_size`` input tokens.
    ``objective(tokens (B, window), generator)``: the ``Batch`` for those windows.
    """

    name: ClassVar[str]

    def window_length(self, block_size: int) -> int:
        raise NotImplementedError

    def __call__(self, tokens: torch.Tensor, generator: torch.Generator) -> Batch:
        raise NotImplementedError


@dataclass(frozen=True)
class CausalLM(Objective):
    name: ClassVar[str] = "causal_lm"

    def window_length(self, block_size: int) -> int:
        return block_size + 1  # the last token is only a target

    def __call__(self, tokens: torch.Tensor, generator: torch.Generator | None = None) -> Batch:
        return causal_lm(tokens)


@dataclass(frozen=True)
class MaskedLM(Objective):
    vocab_size: int
    mask_id: int
    special_ids: tuple[int, ...]
    probability: float = 0.15
    name: ClassVar[str] = "masked_lm"

    def window_length(self, block_size: int) -> int:
        return block_size

    def __call__(self, tokens: torch.Tensor, generator: torch.Generator) -> Batch:
        return masked_lm(tokens, **vars(self), generator=generator)  # the fields are masked_lm's keywords


@dataclass(frozen=True)
class SpanCorruption(Objective):
    sentinel_ids: tuple[int, ...]
    eos_id: int
    pad_id: int
    decoder_start_id: int
    noise_density: float = 0.15
    mean_span_length: float = 3.0
    name: ClassVar[str] = "span_corruption"

    def window_length(self, block_size: int) -> int:
        """T5's raw length for ``block_size`` input tokens (eos included); checks there are enough sentinels."""
        tokens_length, _ = span_corruption_lengths(block_size, self.noise_density, self.mean_span_length)
        _, num_spans = noise_counts(tokens_length, self.noise_density, self.mean_span_length)
        if num_spans > len(self.sentinel_ids):
            raise LlmkitError(
                f"block_size={block_size} makes {num_spans} noise spans per row but the tokenizer has only "
                f"{len(self.sentinel_ids)} sentinel tokens",
                "lower --train.block_size or --train.noise_density, or train a tokenizer with more sentinels",
            )
        return tokens_length

    def __call__(self, tokens: torch.Tensor, generator: torch.Generator) -> Batch:
        return span_corruption(tokens, **vars(self), generator=generator)  # the fields are its keywords


# Each objective trains one family; "auto" picks the family's own.
FAMILY_OBJECTIVES = {"decoder": "causal_lm", "encoder": "masked_lm", "encoder_decoder": "span_corruption"}
_TOKENIZER_KINDS = {"causal_lm": "bpe", "masked_lm": "wordpiece", "span_corruption": "unigram"}


def make_objective(model_cfg: ModelConfig, train_cfg: TrainConfig, tokenizer: Tokenizer | None) -> Objective:
    """The objective of a run, bound to its settings and the tokenizer's special ids.

    Order: resolve ``objective="auto"`` from the model family -> check the objective fits the family
    (and, for masked_lm, that the encoder has its MLM head) -> check the tokenizer's ids fit the model's
    vocabulary -> read the special ids the objective needs from the tokenizer -> build it.
    causal_lm needs no tokenizer; masked_lm needs [MASK] (wordpiece), span_corruption needs sentinels,
    eos and pad (unigram).
    """
    family = model_cfg.family
    name = FAMILY_OBJECTIVES[family] if train_cfg.objective == "auto" else train_cfg.objective
    if name != FAMILY_OBJECTIVES[family]:
        owner = next(f for f, objective in FAMILY_OBJECTIVES.items() if objective == name)
        raise LlmkitError(
            f"objective {name} trains {owner} models, but the model's family is {family}",
            f"set --train.objective {FAMILY_OBJECTIVES[family]} (or auto), or choose a model of family {owner}",
        )
    if name == "masked_lm" and model_cfg.encoder_head != "mlm":
        raise LlmkitError(
            f"masked_lm needs the encoder's MLM head, but encoder_head={model_cfg.encoder_head}",
            "set --model.encoder_head mlm",
        )
    if tokenizer is not None and tokenizer.vocab_size > model_cfg.vocab_size:
        raise LlmkitError(
            f"the tokenizer has {tokenizer.vocab_size} ids but the model's vocabulary only {model_cfg.vocab_size}",
            f"set --model.vocab_size {tokenizer.vocab_size} (or more)",
        )
    if name == "causal_lm":
        return CausalLM()
    kind = _TOKENIZER_KINDS[name]
    if tokenizer is None:
        raise LlmkitError(f"{name} needs a tokenizer for its special tokens", _train_hint(kind))
    if name == "masked_lm":
        return _masked_lm_objective(tokenizer, train_cfg)
    return _span_objective(tokenizer, model_cfg, train_cfg)


def _masked_lm_objective(tokenizer: Tokenizer, train_cfg: TrainConfig) -> MaskedLM:
    if tokenizer.mask_token_id is None:
        raise LlmkitError("masked_lm needs a [MASK] token, and the tokenizer has none", _train_hint("wordpiece"))
    # Every role token ([PAD] [UNK] [CLS] [SEP] [MASK], bos/eos) is special: never selected, never drawn
    roles = (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id)
    roles += (tokenizer.mask_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    special = tuple(sorted({i for i in roles if i is not None}))
    return MaskedLM(tokenizer.vocab_size, tokenizer.mask_token_id, special, train_cfg.mlm_probability)


def _span_objective(tokenizer: Tokenizer, model_cfg: ModelConfig, train_cfg: TrainConfig) -> SpanCorruption:
    sentinels = tuple(tokenizer.sentinel_token_ids)
    needs = {
        "sentinel tokens <extra_id_N>": sentinels,
        "an eos token": tokenizer.eos_token_id,
        "a pad token": tokenizer.pad_token_id,
    }
    missing = [what for what, value in needs.items() if value is None or value == ()]
    if missing:
        raise LlmkitError(
            f"span_corruption needs {' and '.join(missing)}; the tokenizer lacks them", _train_hint("unigram")
        )
    start = model_cfg.decoder_start_token_id
    return SpanCorruption(
        sentinel_ids=sentinels,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        decoder_start_id=tokenizer.pad_token_id if start is None else start,
        noise_density=train_cfg.noise_density,
        mean_span_length=train_cfg.mean_span_length,
    )


def _train_hint(kind: str) -> str:
    return f"train a {kind} tokenizer: `llmkit tokenizer train --kind {kind} ...`"
