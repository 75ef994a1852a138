"""`llmkit data curate` and `llmkit data stats`: raw text cleaned for pretraining; how a tokenizer splits it.

One module per job (docs/curation.md describes the rules, their sources and the defaults):
config (CurateConfig: every rule switchable, thresholds from TOML), text (normalization, words,
lines, sentences), quality (Gopher quality, C4, mojibake), repetition (Gopher repetition), language
(py3langid), pii (e-mail, phone, IP redaction), harmful (word lists in blocklists/), dedup (exact
digests, MinHash + LSH candidates checked by exact Jaccard, clusters), shards (input files as units
of work), pipeline (the three resumable stages and the worker pool), report (totals, funnel, JSON,
PNG), executors (the same stages on datatrove's local or Slurm executors), stats (tokens per word,
most-split words).
"""
