"""`llmkit finetune` with a clock around its phases: bench/finetune_process.py's llmkit process.

    python bench/finetune_process_llmkit.py REPORT.json finetune --config FILE [flags of llmkit finetune]

It runs ``llmkit.cli.program`` (``main`` in older trees) on the arguments after REPORT.json, as the
`llmkit` command does, with
timed wrappers (bench/process_clock.py) around the phases of the run: the CLI, the imports, the
config, init_from's load, the data, the model's build, the optimizer, the steps (each one's wall
time), evaluation, saving, the summary. The wrappers go on when the handler starts (after the thread
policy is applied, where the command itself first imports torch) and cost microseconds a call.
REPORT.json gets the seconds of each phase, every step's seconds, llmkit's own training-loop seconds
and the dev accuracy.
"""

import time

T0 = time.time()  # first: the parent measures interpreter start up to here

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from process_clock import Clock  # noqa: E402

clock = Clock(T0)


def instrument(summary: dict) -> None:
    """Time each phase of a fine-tuning run; ``summary`` receives the run's summary."""
    with clock.span("imports: torch, llmkit's fine-tuning"):
        import tqdm  # noqa: F401  (the loop's progress bar: imported by Run.train otherwise)

        import llmkit.finetune as ft
        from llmkit.finetune import run as frun
        from llmkit.train import distributed, loop

    clock.wrap(ft, "load_finetune_config", "config: read and check the TOML")
    clock.wrap(distributed, "init", "device, process group")
    clock.wrap(frun.tasks, "create", "task: import its kind's module")
    clock.wrap(frun, "_load_base", "model: load init_from (SHA-256 check)")
    clock.wrap(frun.FinetuneRun, "setup", "data: read, check, tokenize")
    clock.wrap(frun.FinetuneRun, "initial_model", "model: build, init, copy the weights")
    clock.wrap(loop.Run, "_open_out_dir", "out dir: check, clear")
    clock.wrap(loop, "make_state", "optimizer and step state")
    clock.wrap(loop, "measure_peak_flops", "peak FLOP/s probe (MFU)")
    clock.wrap(loop, "StepFlops", "FLOP counter hooks")
    clock.wrap(frun.FinetuneRun, "batches", "batches: draw, collate")
    clock.wrap(frun.FinetuneRun, "step_tokens", "batches: draw, collate")
    clock.wrap(loop, "train_step", "steps", record=True)
    clock.wrap(loop.Run, "_log", "logging (losses to the host)")
    clock.wrap(frun.FinetuneRun, "evaluate", "evaluation (dev set)", record=True)
    clock.wrap(frun.FinetuneRun, "save_best", "save OUT/best")
    clock.wrap(loop, "save_checkpoint", "save OUT/last (weights, optimizer)")
    clock.wrap(loop, "plot_loss", "loss plot")
    clock.wrap(frun.FinetuneRun, "card", "model card")
    summarize = loop.Run._summary

    def keep(self, start):
        summary.update(summarize(self, start))
        return summary

    loop.Run._summary = keep
    clock.wrap(loop.Run, "_summary", "summary line")


def main() -> None:
    report, argv = sys.argv[1], sys.argv[2:]
    with clock.span("imports: the CLI"):
        import llmkit.cli as cli
        from llmkit.cli import finetune as command
    handler, summary = command.run, {}

    def timed_handler(args):
        instrument(summary)
        handler(args)

    command.run = timed_handler  # before main() builds the parser, which keeps the handler
    sys.argv = ["llmkit", *argv]
    program = getattr(cli, "program", cli.main)  # what the `llmkit` command runs (older trees: main)
    with clock.span("CLI: parser, thread policy"):
        code = program()
    if code:
        sys.exit(code)
    clock.write(report, loop=summary["seconds"], accuracy=summary["eval"]["accuracy"],
                step_seconds=clock.calls["steps"])  # fmt: skip


if __name__ == "__main__":
    main()
