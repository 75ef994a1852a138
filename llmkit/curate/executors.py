"""The curation's stages on datatrove's executors: its LocalPipelineExecutor here, its SlurmPipelineExecutor on a
cluster (docs/curation.md, "On a cluster"), where one machine is not enough.

The stages are llmkit's own (llmkit.curate.pipeline), wrapped as datatrove pipeline steps: stage 1 runs one
task per shard (task ``rank`` filters shard ``rank``), stage 2 runs one task that deduplicates over every
shard's signatures and assembles the output. So the output is byte for byte that of `llmkit data curate`,
and near dedup is correct across shards (signatures merged in one place, never per task). Every task
reads and writes OUT/work, so on a cluster OUT must be on a file system all nodes share. datatrove is an
optional dependency (``pip install llmkit[cluster]``), imported only on this path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmkit.curate.pipeline import CurateOptions, assemble, clear_leftovers, deduplicate, filter_shard, prepare
from llmkit.errors import LlmkitError

try:
    from datatrove.pipeline.base import PipelineStep
except ImportError:  # the error is raised when an executor is asked for
    PipelineStep = object


class FilterShards(PipelineStep):
    """Stage 1 as a datatrove step: task ``rank`` of ``world_size`` filters shards rank, rank + world_size, ..."""

    name = "llmkit curate: filter shards"
    type = "Filter"

    def __init__(self, options: CurateOptions) -> None:
        super().__init__()
        self.options = options

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        shards, work = prepare(self.options)
        for shard in shards[rank::world_size]:
            filter_shard(shard, self.options.config, self.options.read, work)
        yield from ()


class DeduplicateAndAssemble(PipelineStep):
    """Stage 2 as a datatrove step (one task): dedup over all shards, then the kept/removed files and the report."""

    name = "llmkit curate: dedup + assemble"
    type = "Dedup"

    def __init__(self, options: CurateOptions) -> None:
        super().__init__()
        self.options = options

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from llmkit.curate.report import build_report, write_report

        shards, work = prepare(self.options)
        dups = deduplicate(work, shards, self.options.config)
        stats = assemble(Path(self.options.out), shards, dups)
        write_report(Path(self.options.out), build_report(stats, self.options, dups, seconds=0.0))
        yield from ()


def executors(options: CurateOptions, kind: str = "local", **slurm: Any):
    """The two chained datatrove executors (stage 2 ``depends`` on stage 1): ``kind`` "local" runs
    ``options.workers`` processes here; "slurm" submits array jobs, ``slurm`` passing SlurmPipelineExecutor's
    own arguments (partition, time, cpus_per_task, mem_per_cpu_gb, sbatch_args, ...)."""
    try:
        from datatrove.executor import LocalPipelineExecutor, SlurmPipelineExecutor
    except ImportError as err:
        raise LlmkitError("datatrove is not installed", "pip install 'llmkit[cluster]' (datatrove==0.10.1)") from err
    shards, work = prepare(options)  # checks the sources and writes the manifest before any task starts
    clear_leftovers(work, shards)
    logs = work / "datatrove"
    if kind == "local":
        first = LocalPipelineExecutor(
            [FilterShards(options)],
            tasks=len(shards),
            workers=max(1, options.workers),
            logging_dir=str(logs / "filter"),
        )
        second = LocalPipelineExecutor(
            [DeduplicateAndAssemble(options)], tasks=1, workers=1, logging_dir=str(logs / "dedup"), depends=first
        )
        return first, second
    if kind == "slurm":
        first = SlurmPipelineExecutor(
            [FilterShards(options)],
            tasks=len(shards),
            logging_dir=str(logs / "filter"),
            job_name="curate-filter",
            **slurm,
        )
        second = SlurmPipelineExecutor(
            [DeduplicateAndAssemble(options)],
            tasks=1,
            logging_dir=str(logs / "dedup"),
            job_name="curate-dedup",
            depends=first,
            **slurm,
        )
        return first, second
    raise LlmkitError(f"unknown executor {kind!r}", "choose local or slurm")


def curate_with_datatrove(options: CurateOptions) -> dict:
    """Run both stages on datatrove's LocalPipelineExecutor and return the report (read back from OUT)."""
    import json
    import time

    started = time.perf_counter()
    _, second = executors(options, "local")
    second.run()  # runs its dependency first
    path = Path(options.out) / "report.json"
    report = json.loads(path.read_text())
    report["seconds"] = round(time.perf_counter() - started, 3)
    report["mb_per_s"] = round(report["bytes"] / 1e6 / report["seconds"], 3) if report["seconds"] else None
    report["workers"] = options.workers
    return report
