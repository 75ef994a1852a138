"""``instruct``: supervised fine-tuning of a decoder on conversations (finetune.text2text): JSONL of
chat ``messages`` or prompt/response rows, or ``files``, task files (tasks/*.toml) mixed by
``weights``. Each conversation goes through init_from's chat template, the loss falls on the
assistant turns only, ``pack`` concatenates them into full windows; the dev score is the loss (and
perplexity) of the dev conversations, and the best checkpoint is the lowest loss."""

from __future__ import annotations

import functools

from llmkit.config import ModelConfig
from llmkit.finetune import text2text
from llmkit.finetune.tasks.base import ExampleTask, Setting, keep_lm_head, needs_files, pad_id
from llmkit.train import distributed
from llmkit.train.loop import perplexity
from llmkit.train.step import TrainState


class InstructTask(ExampleTask):
    best_metric = "val_loss"
    best_lower = True

    def prepare(self, setting: Setting) -> ModelConfig:
        task = self.cfg
        model_cfg = keep_lm_head(setting, "instruct", "decoder", "instruct: a decoder (Llama, GPT-2, SmolLM2)")
        pad = pad_id(setting.tokenizer, model_cfg)
        block = setting.block
        if task.files:
            train, dev = text2text.read_task_mix(task.files, task.weights, task.max_train_examples, task.dev_limit,
                                                 setting.train.seed)  # fmt: skip
        else:
            needs_files(task, " (or files)")
            train = text2text.read_conversations(task.train_file, task.text_field, task.label_field)
            dev = text2text.read_conversations(task.dev_file, task.text_field, task.label_field)
        train = train[: task.max_train_examples or None]
        dev = dev[: task.max_dev_examples or None]
        # the tokenizer carries init_from's chat template, so the tuned checkpoint is saved with it
        template = text2text.ChatTemplate.for_model(setting.init_from, setting.tokenizer)
        encoded = text2text.with_response(text2text.encode_instruct(setting.tokenizer, template, train, block), block)
        if task.pack:
            conversations, encoded = len(encoded), text2text.pack(encoded, block)
            self.packed = (conversations, len(encoded))
            tokens = sum(len(e.ids) for e in encoded)
            distributed.print0(f"packed {conversations:,} conversations ({tokens:,} tokens) into {len(encoded):,} "
                               f"windows of up to {block} tokens")  # fmt: skip
        collate = functools.partial(text2text.collate_instruct, pad_id=pad)  # the head at response tokens only
        self.train_examples = self.examples(encoded, pad, setting, collate)
        self.dev_examples = text2text.with_response(
            text2text.encode_instruct(setting.tokenizer, template, dev, block), block
        )
        return model_cfg

    def evaluate(self, state: TrainState) -> dict[str, float]:
        """The dev conversations' loss on their responses, and its perplexity."""
        scores = super().evaluate(state)
        return {**scores, "val_ppl": perplexity(scores["val_loss"])}
