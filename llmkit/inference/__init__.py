"""Generation: decode text from decoder-only and encoder-decoder models, fill masks with encoders.

Inference as small pure steps (nanochat, gpt-fast): ``logits_to_probs`` -> ``sample``; the KV cache
is an object the engine owns per call; ``stream`` is the engine and ``generate`` = its pieces joined.

    generate(model, "Once upon a time", max_new_tokens=32)      -> [Completion(text=..., ...)]
    for piece in stream(model, ["a", "b"], do_sample=True, seed=0): print(piece.index, piece.text)
    explain(model, "The cat ate the", do_sample=True, top_k=5)  -> per-position candidate tables
    fill_mask(bert, "Paris is the [MASK] of France.")            -> top candidates per mask

Modules: sampling (processors, warpers, draws), inputs (prompts -> padded ids), runners (one step
per family over the KV cache), engine (stream/generate), beam (beam search), text (incremental
UTF-8-safe text and stop strings), explain, fill_mask.
"""

from llmkit.inference.engine import Completion, Piece, Stream, generate, stream
from llmkit.inference.explain import Explanation, explain
from llmkit.inference.fill_mask import fill_mask
from llmkit.inference.sampling import logits_to_probs, sample

__all__ = [
    "Completion",
    "Explanation",
    "Piece",
    "Stream",
    "explain",
    "fill_mask",
    "generate",
    "logits_to_probs",
    "sample",
    "stream",
]
