"""The transformers Trainer side of bench/finetune_process.py: a plain fine-tuning script, as a user
would write it, with a clock around its phases.

    python bench/finetune_process_trainer.py REPORT.json SPEC.json OUT_DIR

SPEC.json (written by bench/finetune_process.py) names the TSV files, the checkpoint and the settings.
The same work as the llmkit run: read and tokenize the files, load the checkpoint with a new
2-label head (BertForSequenceClassification), the dev set scored before training (eval_on_start) and
after the last step, a checkpoint with the optimizer at the end (checkpoint-N, as llmkit's OUT/last)
and the model saved (save_model to OUT/best). The settings are bench/finetune_common.py's
(``train_args``: the Trainer's group_by_length sampler, fused AdamW defaults, cosine, clip 1.0).
REPORT.json gets each phase's seconds, every step's seconds (on_step_begin -> on_step_end), the
training-loop seconds (train() less its evaluation and checkpoint) and the dev accuracy.
"""

import time

T0 = time.time()  # first: the parent measures interpreter start up to here

import csv  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from process_clock import Clock  # noqa: E402

clock = Clock(T0)
STEPS, EVAL, SAVE, LOOP = "steps", "evaluation (dev set)", "save checkpoint-N (weights, optimizer)", "train(): the rest"


def read(path: str) -> tuple[list[str], list[int]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence"] for r in rows], [int(r["label"]) for r in rows]


def main() -> None:
    report, spec_path, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    spec = json.loads(Path(spec_path).read_text())
    with clock.span("imports: torch, transformers"):
        import numpy as np
        import torch
        from finetune_common import train_args
        from transformers import (
            AutoTokenizer,
            BertForSequenceClassification,
            DataCollatorWithPadding,
            Trainer,
            TrainerCallback,
        )
    torch.set_num_threads(spec["threads"])

    with clock.span("data: read, tokenize"):
        tokenizer = AutoTokenizer.from_pretrained(spec["minilm"])

        def features(path: str) -> list[dict]:
            texts, labels = read(path)
            enc = tokenizer(texts, truncation=True, max_length=spec["max_length"])
            return [{"input_ids": i, "attention_mask": m, "labels": y}
                    for i, m, y in zip(enc["input_ids"], enc["attention_mask"], labels, strict=True)]  # fmt: skip

        train, dev = features(spec["train"]), features(spec["dev"])

    with clock.span("model: load, new head"):
        torch.manual_seed(spec["seed"])
        model = BertForSequenceClassification.from_pretrained(spec["minilm"], num_labels=2)

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            clock.add(STEPS, time.perf_counter() - self.start)

    def accuracy(prediction) -> dict[str, float]:
        return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

    with clock.span("Trainer: settings, build"):
        steps = spec["steps"]
        settings = train_args(steps, spec["batch"], spec["lr"], spec["warmup"], spec["seed"], "fp32", out)
        settings = dataclasses.replace(
            settings, eval_strategy="steps", eval_steps=steps, eval_on_start=True, save_strategy="steps",
            save_steps=steps, per_device_eval_batch_size=64,
        )  # fmt: skip
        trainer = Trainer(model=model, args=settings, train_dataset=train, eval_dataset=dev,
                          data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=accuracy,
                          callbacks=[StepClock()])  # fmt: skip
    clock.wrap(trainer, "evaluate", EVAL, record=True)
    clock.wrap(trainer, "_save_checkpoint", SAVE)
    with clock.span(LOOP):
        trainer.train()
    with clock.span("save the model (OUT/best)"):
        trainer.save_model(str(out / "best"))
    loop = clock.phases[LOOP] + clock.phases[STEPS]  # as llmkit's: without evaluation and saving
    scores = [e for e in trainer.state.log_history if "eval_accuracy" in e]
    clock.write(report, loop=loop, accuracy=scores[-1]["eval_accuracy"], step_seconds=clock.calls[STEPS])


if __name__ == "__main__":
    main()
