"""How a model answers: the log-likelihood of each candidate continuation, or greedy generation.

Log-likelihood scoring is lm-evaluation-harness's multiple choice: the score of a continuation is
the sum of log p(token | prompt, earlier continuation tokens) over its tokens, and the prediction is
the candidate with the highest score. Decoder-only models read prompt + continuation and are scored
at the continuation's positions; encoder-decoder models (T5) read the prompt in the encoder and the
candidate is the decoder's target, scored as teacher-forced decoding from the start token.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from llmkit.errors import LlmkitError
from llmkit.inference.inputs import pad
from llmkit.inference.loading import require_lm_head


@dataclass(frozen=True)
class Request:
    """One (context, continuation) pair in token ids; for encoder-decoder models the context is the
    encoder input and the continuation the decoder target."""

    context: list[int]
    continuation: list[int]


def check_model(model: nn.Module) -> None:
    """Only models that predict text can be evaluated in context."""
    require_lm_head(model, "eval with a task")
    if model.config.family == "encoder":
        raise LlmkitError(
            "encoder-only models neither score continuations nor generate",
            "evaluate a decoder-only or encoder-decoder model",
        )
    if getattr(model, "tokenizer", None) is None:
        raise LlmkitError("this model has no tokenizer", "save one beside it (tokenizer.json) to evaluate text tasks")


def make_request(model: nn.Module, context: str, continuation: str) -> Request:
    """Tokenize a pair the way the model will see it.

    Decoder-only (lm-evaluation-harness's ``_encode_pair``): trailing spaces of the context move to
    the continuation; the whole text is encoded once and the continuation is what follows the
    context's own tokens, so a merge across the boundary cannot make up tokens the model never reads
    (when the context's tokens are not a prefix of the whole, the continuation is encoded alone).
    Encoder-decoder: the encoder reads the context with the tokenizer's special tokens (T5 appends
    ``</s>``), the decoder target is the stripped continuation with them (so "positive </s>").
    """
    tok = model.tokenizer
    if model.config.family == "encoder_decoder":
        return Request(tok.encode(context), tok.encode(continuation.strip()))
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    ctx = tok.encode(context)
    whole = tok.encode(context + continuation)
    cont = whole[len(ctx) :] if whole[: len(ctx)] == ctx else tok.encode(continuation, add_special_tokens=False)
    if not ctx:  # the first continuation token needs something to be predicted from
        start = model.config.bos_token_id if model.config.bos_token_id is not None else model.config.eos_token_id
        if start is None:
            raise LlmkitError("an empty prompt cannot be scored by a model without bos/eos", "give the prompt text")
        ctx = [start]
    return Request(ctx, cont)


@torch.no_grad()
def score_requests(
    model: nn.Module,
    requests: Sequence[Request],
    batch_size: int = 8,
    desc: str = "scoring",
    progress: bool = True,
    per_item: int = 1,
) -> list[float]:
    """Sum of continuation log-probabilities for each request, in the order given.

    Order: sort by length, longest first (lm-evaluation-harness does the same: similar lengths share
    a batch, and an out-of-memory error shows in the first batch) -> right-pad each batch -> one
    forward pass -> log-softmax in fp32 at the continuation positions only -> sum. The progress bar
    counts items: ``per_item`` consecutive requests (one per label) make one, done when all are scored.
    """
    order = sorted(range(len(requests)), key=lambda i: -(len(requests[i].context) + len(requests[i].continuation)))
    scores = [0.0] * len(requests)
    device = next(model.parameters()).device
    step = _score_decoder if model.config.family == "decoder" else _score_encoder_decoder
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    left = [per_item] * -(-len(requests) // per_item)  # requests still to score, per item
    with tqdm(total=len(left), desc=desc, unit="item", disable=not progress, leave=False) as bar:
        for batch in batches:
            for i, score in zip(batch, step(model, [requests[i] for i in batch], device), strict=True):
                scores[i] = score
                left[i // per_item] -= 1
                bar.update(left[i // per_item] == 0)
    return scores


def _score_decoder(model: nn.Module, requests: list[Request], device: torch.device) -> list[float]:
    window = model.config.max_seq_len
    rows, starts = [], []
    for r in requests:
        row = (r.context + r.continuation)[:-1]  # the last token is predicted, never read
        # the builder fits prompts to the window; a boundary merge can still add a token: keep the
        # continuation whole and drop the context's first tokens, as lm-evaluation-harness does
        cut = max(0, len(row) - window)
        rows.append(row[cut:])
        starts.append(len(r.context) - 1 - cut)
    ids, _ = pad(rows, model.config.pad_token_id or 0, left=False)
    # right padding under a causal mask: real positions never attend to the pads after them, so no
    # attention mask is needed and SDPA keeps its causal fast path
    logits = model(ids.to(device)).logits
    return [
        _continuation_logprob(logits[b, starts[b] : starts[b] + len(r.continuation)], r.continuation)
        for b, r in enumerate(requests)
    ]


def _score_encoder_decoder(model: nn.Module, requests: list[Request], device: torch.device) -> list[float]:
    start = model.config.decoder_start_token_id
    pad_id = model.config.pad_token_id or 0
    ids, mask = pad([r.context for r in requests], pad_id, left=False)
    decoder_ids, _ = pad([[start, *r.continuation[:-1]] for r in requests], pad_id, left=False)
    logits = model(ids.to(device), attention_mask=mask.to(device), decoder_input_ids=decoder_ids.to(device)).logits
    return [_continuation_logprob(logits[b, : len(r.continuation)], r.continuation) for b, r in enumerate(requests)]


def _continuation_logprob(logits: torch.Tensor, continuation: list[int]) -> float:
    """Sum of log p(continuation) from the logits (n, V) that predict its n tokens, in fp32."""
    logprobs = F.log_softmax(logits.float(), dim=-1)
    targets = torch.tensor(continuation, device=logits.device)[:, None]
    return float(logprobs.gather(-1, targets).sum())


def generate_answers(
    model: nn.Module,
    prompts: Sequence[str],
    max_new_tokens: int,
    stop: Sequence[str],
    batch_size: int = 8,
    desc: str = "generating",
    progress: bool = True,
    strip: bool = True,
    eos_token_id: list[int] | None = None,
) -> list[str]:
    """Greedy completions of ``prompts``, cut at the first ``stop`` string, stripped (``strip``) or
    right-stripped (code, whose first line's indentation matters).

    Greedy whatever the checkpoint's generation_config says (sampling would make the score a draw);
    EOS ids still come from it (or from ``eos_token_id``: a chat prompt's end-of-turn token added). Stripped
    answers follow a rule of llmkit's own (lm-evaluation-harness cuts the raw text): a stop string never
    matches inside the answer's leading whitespace (SmolLM2 opens a DialogSum summary with "\n", which the
    task's stop string "\n" would otherwise cut empty). Code keeps its leading text as generated, so there
    a stop string at the very start still stops.
    """
    from llmkit.inference import generate

    settings = dict(max_new_tokens=max_new_tokens, stop_strings=list(stop), do_sample=False, num_beams=1,
                    num_return_sequences=1, repetition_penalty=1.0, min_new_tokens=0, truncate=False)  # fmt: skip
    if eos_token_id is not None:
        settings["eos_token_id"] = list(eos_token_id)
    answers: list[str] = []
    batches = [list(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)]
    with tqdm(total=len(prompts), desc=desc, unit="item", disable=not progress, leave=False) as bar:
        for batch in batches:
            completions = generate(model, batch, skip_leading_whitespace=strip, **settings)
            answers += [c.text.strip() if strip else c.text.rstrip() for c in completions]
            bar.update(len(batch))
    return answers


def parse_label(text: str, label_words: Sequence[str]) -> int | None:
    """Index of the label word that occurs first in ``text`` as a whole word (case-insensitive; on a tie
    the longer word), or None when none occurs."""
    best: tuple[int, int] | None = None  # (position, -length)
    found = None
    for i, word in enumerate(label_words):
        match = re.search(rf"(?<!\w){re.escape(word.strip())}(?!\w)", text, flags=re.IGNORECASE)
        if match and (best is None or (match.start(), -len(word)) < best):
            best, found = (match.start(), -len(word)), i
    return found
