"""Beam search with length penalty, step for step the algorithm of transformers' ``_beam_search``.

Per step: log-softmax -> processors (repetition penalty, EOS below min_new_tokens) -> add each
beam's running score -> the top K = max(2, 1 + #eos) * num_beams continuations over all beams ->
the best num_beams that did not just finish keep running -> those that finished among the first
num_beams enter the finished set with score sum(log p) / length**length_penalty -> the cache
follows the running beams. Search ends when no running beam can beat the finished ones
(``early_stopping``: True, False = transformers' heuristic, or "never"), or at max_new_tokens.
"""

from __future__ import annotations

import torch

from llmkit.config import GenerationConfig
from llmkit.inference.sampling import apply_repetition_penalty, suppress

NEG = -1.0e9  # transformers' "never choose this" score


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, N, ...) rows ``index`` (B, M) along dim 1."""
    while index.dim() < x.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(x, index, dim=1)


def beam_search(
    runner, batch: int, config: GenerationConfig, eos: list[int], fill: int, seen: torch.Tensor | None
) -> list[tuple[list[int], float]]:
    """Token ids and score of the best ``num_return_sequences`` beams of each of ``batch`` prompts.

    ``runner`` holds batch * num_beams rows (each prompt repeated); ``seen`` (rows, V) marks the
    tokens the repetition penalty applies to, or is None when it is off.
    """
    nb, max_new, lp, early = config.num_beams, config.max_new_tokens, config.length_penalty, config.early_stopping
    logits = runner.prefill()
    device, V = logits.device, logits.shape[-1]
    K = max(2, 1 + len(eos)) * nb
    eos_t = torch.tensor(eos, dtype=torch.long, device=device)
    first_nb = (torch.arange(K, device=device) < nb)[None]  # (1, K)
    running = torch.full((batch, nb, max_new), fill, dtype=torch.long, device=device)
    running_scores = torch.zeros(batch, nb, device=device)
    running_scores[:, 1:] = NEG  # all beams start equal: let only the first one expand
    done_seqs, done_scores = running.clone(), torch.full((batch, nb), NEG, device=device)
    done_len = torch.zeros(batch, nb, dtype=torch.long, device=device)
    is_done = torch.zeros(batch, nb, dtype=torch.bool, device=device)
    improvable = torch.ones(batch, 1, dtype=torch.bool, device=device)
    offsets = (torch.arange(batch, device=device) * nb)[:, None]
    for t in range(max_new):
        # scores of every continuation of every beam
        log_probs = torch.log_softmax(logits, dim=-1)
        if seen is not None:
            log_probs = apply_repetition_penalty(log_probs, seen, config.repetition_penalty)
        if t < config.min_new_tokens and eos:
            log_probs = suppress(log_probs, eos_t)
        total = (log_probs.view(batch, nb, V) + running_scores[..., None]).view(batch, nb * V)
        top_scores, top_index = torch.topk(total, K)  # (B, K)
        source, token = top_index // V, top_index % V
        candidates = _gather(running, source)  # (B, K, max_new)
        candidates[:, :, t] = token
        hits = torch.isin(token, eos_t) | (t + 1 >= max_new)  # (B, K) finished by EOS or length

        # the best num_beams that go on
        live_scores = top_scores + hits.float() * NEG
        keep = torch.topk(live_scores, nb).indices  # (B, nb)
        running, running_scores = _gather(candidates, keep), _gather(live_scores, keep)
        rows = (_gather(source, keep) + offsets).view(-1)  # flat cache row each running beam extends

        # finished beams among the first num_beams compete for the final num_beams places
        new_scores = top_scores / ((t + 1) ** lp)
        new_scores = new_scores + (is_done.all(-1, keepdim=True) & (early is True)).float() * NEG
        new_scores = new_scores + (~improvable).float() * NEG + (~(hits & first_nb)).float() * NEG
        merged_scores = torch.cat([done_scores, new_scores], dim=1)
        best = torch.topk(merged_scores, nb).indices
        done_scores = _gather(merged_scores, best)
        done_seqs = _gather(torch.cat([done_seqs, candidates], dim=1), best)
        done_len = _gather(torch.cat([done_len, torch.full_like(token, t + 1)], dim=1), best)
        is_done = _gather(torch.cat([is_done, hits & first_nb], dim=1), best)

        # can a running beam still beat the worst finished one?
        length = max_new if early == "never" and lp > 0 else t + 1
        best_running = running_scores[:, :1] / (length**lp)
        worst_done = torch.where(is_done, done_scores.min(dim=1, keepdim=True).values, NEG)
        improvable = improvable & (best_running > worst_done).any(dim=-1, keepdim=True)
        stop = not improvable.any() or (early is True and bool(is_done.all())) or bool(hits.all())
        if stop or t + 1 == max_new:
            break
        runner.reorder(rows)
        if seen is not None:
            seen = seen[rows].scatter_(1, running[:, :, t].reshape(-1, 1), True)
        logits = runner.step(running[:, :, t].reshape(-1))
    n = config.num_return_sequences
    seqs, lens, scores = done_seqs[:, :n].tolist(), done_len[:, :n].tolist(), done_scores[:, :n].tolist()
    return [(s[:k], sc) for b in range(batch) for s, k, sc in zip(seqs[b], lens[b], scores[b], strict=True)]
