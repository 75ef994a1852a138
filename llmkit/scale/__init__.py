"""Scaling laws from your own runs (docs/scaling.md).

- ``grid``: the [sweep] table, shapes derived from a base model, each point's steps and schedule.
- ``sweep``: the IsoFLOP grid run as ordinary pretraining runs, resumable, in parallel processes.
- ``results``: results.jsonl, one finished point per line, appended atomically.
- ``fit``: Chinchilla's approach 2 (IsoFLOP parabolas) and approach 3 (parametric law, Huber, L-BFGS,
  bootstrap).
- ``report``: `llmkit scale fit`'s figures as text or JSON; ``plots``: its pictures.

Import the modules themselves: this package's ``__init__`` loads nothing (``fit`` needs no torch).
"""
