"""Data: built-in corpora, tokenizers, and (elsewhere) curation and token datasets."""
