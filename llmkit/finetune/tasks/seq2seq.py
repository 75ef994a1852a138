"""``seq2seq``: text to text with an encoder-decoder (T5) and its LM head, by teacher forcing
(finetune.text2text). TSV or JSONL pairs, ``text_field`` the input and ``label_field`` the target;
the dev score is [task] ``metric`` (rougeL, or bleu and chrf) of greedy outputs for the first
``dev_limit`` dev examples, and the best checkpoint is the highest."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from llmkit.config import ModelConfig
from llmkit.finetune import data as fdata
from llmkit.finetune import text2text
from llmkit.finetune.tasks.base import ExampleTask, Setting, keep_lm_head, needs_files, pad_id
from llmkit.train.step import TrainState

if TYPE_CHECKING:
    from llmkit.finetune.config import TaskConfig


class Seq2SeqTask(ExampleTask):
    best_lower = False

    def __init__(self, cfg: TaskConfig) -> None:
        super().__init__(cfg)
        self.best_metric = cfg.metric  # the [task] metric of greedy outputs

    def prepare(self, setting: Setting) -> ModelConfig:
        task = self.cfg
        model_cfg = keep_lm_head(setting, "seq2seq", "encoder_decoder", "seq2seq: a T5-family checkpoint")
        needs_files(task)
        train = fdata.read_labelled(task.train_file, task.text_field, task.label_field, task.columns)
        dev = fdata.read_labelled(task.dev_file, task.text_field, task.label_field, task.columns)
        train = train[: task.max_train_examples or None]
        dev = dev[: task.max_dev_examples or None]
        pad = pad_id(setting.tokenizer, model_cfg)
        start = model_cfg.decoder_start_token_id if model_cfg.decoder_start_token_id is not None else pad
        collate = functools.partial(text2text.collate_seq2seq, pad_id=pad, start_id=start)
        block = setting.block
        self.train_examples = self.examples(text2text.encode_seq2seq(setting.tokenizer, train, block, block), pad,
                                            setting, collate)  # fmt: skip
        self.dev_examples = text2text.encode_seq2seq(setting.tokenizer, dev, block, block)
        self.dev_gold = [target for _, target in dev]
        self.tokenizer, self.start_id = setting.tokenizer, start
        return model_cfg

    def score(self, predictions: list, state: TrainState) -> dict[str, float]:
        """Greedy outputs for the first ``dev_limit`` dev examples, scored against their targets."""
        from llmkit.evaluate.metrics import bleu, chrf, rouge

        task, pad = self.cfg, self.train_examples.pad_id
        examples = self.dev_examples[: task.dev_limit]
        outputs: list[str] = []
        for first in range(0, len(examples), task.eval_batch_size):
            rows = text2text.greedy_seq2seq(
                state.raw,
                examples[first : first + task.eval_batch_size],
                pad,
                self.start_id,
                self.tokenizer.eos_token_id,
                task.max_new_tokens,
                state.autocast,
            )
            outputs += [self.tokenizer.decode(ids).strip() for ids in rows]
        references = [[gold] for gold in self.dev_gold[: len(examples)]]
        if task.metric == "rougeL":
            return rouge(outputs, references)
        return {"bleu": bleu(outputs, references), "chrf": chrf(outputs, references)}
