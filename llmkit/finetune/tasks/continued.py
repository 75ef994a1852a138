"""``continue``: continued pretraining (domain adaptation) on a token directory written by
`llmkit data tokenize` with init_from's own tokenizer. The model keeps its LM head and its family's
objective (causal LM, masked LM, span corruption), batches and evaluation are pretraining's, and the
best checkpoint is the lowest dev loss."""

from __future__ import annotations

import torch

from llmkit.config import ModelConfig, TrainConfig
from llmkit.data.datasets import TokenDataset
from llmkit.errors import LlmkitError
from llmkit.finetune.tasks.base import Setting, Task, with_dropout
from llmkit.objectives import Batch, make_objective
from llmkit.train.distributed import Dist
from llmkit.train.loop import evaluate, perplexity
from llmkit.train.step import TrainState, train_batches


class ContinueTask(Task):
    best_metric = "val_loss"
    best_lower = True

    def prepare(self, setting: Setting) -> ModelConfig:
        if not self.cfg.data:
            raise LlmkitError("task 'continue' needs token shards", "set [task] data to a tokenized directory")
        self.data = TokenDataset(self.cfg.data)
        self.data.check_tokenizer(setting.tokenizer)  # ids from another tokenizer would train nonsense
        base = setting.base
        if base.has_classifier or (base.family == "encoder" and base.encoder_head == "none"):
            raise LlmkitError(
                "continued pretraining needs a language-model head, and init_from has none",
                "start from a checkpoint with its LM head (a decoder, an encoder with an MLM head, or a T5)",
            )
        model_cfg = with_dropout(base, setting.dropout)
        self.objective = make_objective(model_cfg, setting.train, setting.tokenizer)
        return model_cfg

    def batches(self, step: int, cfg: TrainConfig, env: Dist) -> list[Batch]:
        return train_batches(self.data, self.objective, cfg, env, step)

    def step_tokens(self, batches: list[Batch], cfg: TrainConfig, env: Dist) -> int | torch.Tensor:
        """Every row is a full block_size window, as in pretraining."""
        return cfg.batch_size * cfg.grad_accum * env.world_size * cfg.block_size

    def evaluate(self, state: TrainState) -> dict[str, float]:
        loss = evaluate(state, self.data, self.objective)
        return {"val_loss": loss, "val_ppl": perplexity(loss)}
