"""Token-level objectives: causal LM (GPT; Radford et al. 2018) and masked LM (BERT; Devlin et al. 2019)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llmkit.errors import LlmkitError
from llmkit.objectives.batch import IGNORE_INDEX, Batch, as_ids, rand, randint


# ---- causal LM ------------------------------------------------------------------------------
def causal_lm(tokens: torch.Tensor) -> Batch:
    """Next-token prediction: tokens (B, T+1) -> input_ids ``tokens[:, :-1]``, labels ``tokens[:, 1:]``.

    No attention_mask: windows come packed from the token stream without padding, and without a
    mask the model keeps SDPA's fast ``is_causal`` path.
    """
    tokens = as_ids(tokens)
    return Batch({"input_ids": tokens[:, :-1].contiguous()}, tokens[:, 1:].contiguous())


# ---- masked LM ------------------------------------------------------------------------------
def masked_lm(
    tokens: torch.Tensor,
    *,
    vocab_size: int,
    mask_id: int,
    special_ids: Sequence[int],
    probability: float = 0.15,
    generator: torch.Generator,
    pad_id: int | None = None,
) -> Batch:
    """BERT's masked LM (Devlin et al. 2019, sec. 3.1; appendix C.2 for the 80/10/10 split).

    Order of operations, and of the draws from ``generator``:

    1. select: each row selects ``round(probability * n)`` of its n non-special positions (at least 1
       when n >= 1), uniformly without replacement, as BERT's create_pretraining_data.py does: one
       ``torch.rand`` (B, T) draw, and a row's lowest scores win. ``mask_id`` is always special.
    2. act: one ``torch.rand`` (B, T) draw u; a selected position becomes ``mask_id`` when u < 0.8,
       a random token when 0.8 <= u < 0.9, and keeps its token otherwise.
    3. random tokens: one ``torch.randint`` (B, T) draw, uniform over the ids in [0, vocab_size) that
       are not special, used where step 2 chose a random token.
    4. labels: the original id at selected positions, -100 elsewhere.

    ``pad_id`` (for padded rows, not packed windows) adds ``attention_mask = tokens != pad_id``.
    """
    tokens = as_ids(tokens)
    if not 0 < probability < 1:
        raise LlmkitError(f"mlm probability={probability} must be in (0, 1)", "change --train.mlm_probability")
    special_set = {*special_ids, mask_id}
    is_special = torch.isin(tokens, torch.tensor(sorted(special_set), device=tokens.device))

    # 1. select round(p * n) of each row's non-special positions: rand is in [0, 1), so a score of 2
    #    keeps special positions out of the lowest k, and the rank of a score is its place in the row
    scores = rand(tokens.shape, generator, tokens.device).masked_fill(is_special, 2.0)
    n_candidates = (~is_special).sum(dim=1)
    n_select = torch.round(n_candidates.double() * probability).long()
    n_select = torch.where(n_candidates > 0, n_select.clamp(min=1), 0)
    rank = scores.argsort(dim=1).argsort(dim=1)  # (B, T)
    selected = rank < n_select[:, None]

    # 2. BERT appendix C.2: 80% [MASK], 10% a random token, 10% unchanged, so the model cannot rely on
    #    [MASK] (never seen in fine-tuning) marking the positions it must predict
    u = rand(tokens.shape, generator, tokens.device)
    to_mask = selected & (u < 0.8)
    to_random = selected & (u >= 0.8) & (u < 0.9)

    # 3. random tokens, never special (unlike BERT's script, which could draw [CLS] or [MASK])
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    allowed[[i for i in special_set if 0 <= i < vocab_size]] = False
    candidates = allowed.nonzero().squeeze(1).to(tokens.device)
    picks = randint(len(candidates), tokens.shape, generator, tokens.device)

    # 4. corrupt the input; labels keep the originals where a prediction is asked for
    input_ids = torch.where(to_mask, mask_id, tokens)
    input_ids = torch.where(to_random, candidates[picks], input_ids)
    labels = torch.where(selected, tokens, IGNORE_INDEX)
    inputs = {"input_ids": input_ids}
    if pad_id is not None:
        inputs["attention_mask"] = (tokens != pad_id).long()
    return Batch(inputs, labels)
