"""Augmenting models with your documents: sentence embeddings (embed), chunking (chunk), the sqlite-vec
index with dense, BM25 and hybrid search (store, documents), and retrieval-augmented prompts (ask)."""
