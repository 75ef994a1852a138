"""See inside a model: tokens, embedding space, attention maps, next-token distributions.

Each module computes its data with small pure functions (spans, similarity matrices, maps,
distributions) and draws it apart, on a bare matplotlib Figure (``style.py``):

    tokens.py        token_spans(tokenizer, text) -> ids and byte spans; token_stats -> counts
    embeddings.py    input_vectors / contextual_vectors -> cosine_matrix, pca_2d; draw_embeddings
    attention.py     attention_maps(model, ids, kind) -> per-layer (H, T, S); draw_attention
    distribution.py  temperature_panels(scores, temperatures) -> bars per T; draw_distribution
    style.py         Okabe-Ito palette, viridis heatmaps, Agg figures, atomic PNG writes

The commands are ``llmkit tokenize``, ``llmkit embeddings``, ``llmkit attention`` and
``llmkit generate --explain --plot``; docs/visualize.md walks through them.
"""
