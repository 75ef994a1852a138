"""`llmkit finetune`: adapt an existing checkpoint to a task with the pretraining loop (train.loop.Run).

Order: join the processes (torchrun) -> load ``init_from`` and its tokenizer -> read and check the
task's files (labels) -> the model config with the task's head -> build it (seeded), copy every
weight the base has (the new head keeps its fresh init) -> the method (full, freeze, LoRA) -> the
shared loop: dev metrics at the start, every ``eval_interval`` steps and at the end, the best one
kept in ``OUT/best``, the resumable run in ``OUT/last``.

Evaluation runs the whole dev set (up to ``max_dev_examples``) on every process, so the scores
are the same everywhere without gathering predictions.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmkit import checkpoint, files, model_card
from llmkit.config import ModelConfig, TrainConfig
from llmkit.data.datasets import TokenDataset
from llmkit.errors import LlmkitError
from llmkit.finetune import data as fdata
from llmkit.finetune import text2text
from llmkit.finetune.config import FinetuneConfig, MethodConfig, TaskConfig
from llmkit.finetune.tasks import BEST_METRIC, LOWER_IS_BETTER, head_config, score_classify, score_tokens
from llmkit.lora import LoraConfig, apply_lora, merge_lora, save_adapter
from llmkit.model_card import ModelCard
from llmkit.models import build_model
from llmkit.models.stack import Stack
from llmkit.objectives import IGNORE_INDEX, Batch, lm_loss, make_objective
from llmkit.quantize import QuantSpec, quantize_model
from llmkit.train import distributed
from llmkit.train.distributed import Dist
from llmkit.train.loop import Run, evaluate, perplexity
from llmkit.train.step import train_batches

LAST, BEST, ADAPTER = "last", "best", "adapter"
HEAD_PREFIXES = ("classifier.", "score.")  # the task heads' parameters: new, so always trained
GROUP_BATCHES = 50  # group_by_length: global batches per length-sorted run (transformers' mega_batch_mult)


def finetune(cfg: FinetuneConfig, *, resume: bool = False, verify: bool = True) -> dict[str, Any]:
    """Fine-tune ``cfg.model.init_from`` on ``cfg.task``; returns the run's summary (with the dev
    scores under ``eval`` and the best score under ``best``)."""
    env = distributed.init(cfg.train.device)
    try:
        return FinetuneRun(cfg, env, resume, verify).train()
    finally:
        distributed.cleanup()


class FinetuneRun(Run):
    """A fine-tuning run: the shared loop with a task's data, head and metrics."""

    kind = "finetune"

    def __init__(self, cfg: FinetuneConfig, env: Dist, resume: bool, verify: bool = True) -> None:
        self.fcfg, self.env = cfg, env
        self.root = Path(cfg.train.out_dir)
        self.best_dir = self.root / BEST
        self.best_metric = cfg.task.metric if cfg.task.kind == "seq2seq" else BEST_METRIC[cfg.task.kind]
        self.best_lower = cfg.task.kind in LOWER_IS_BETTER
        self.base = _load_base(cfg.model.init_from)
        self.tokenizer = self.base.tokenizer
        train_cfg = dataclasses.replace(cfg.train, out_dir=str(self.root / LAST))
        if not resume and self.best_dir.exists():
            raise LlmkitError(
                f"out_dir {self.root} already holds a run ({self.best_dir} exists)",
                "pass --resume to continue it, or choose another --train.out_dir",
            )
        model_cfg = self._prepare_task(train_cfg)
        super().__init__(model_cfg, train_cfg, env, resume, verify)

    # ---- the task's data and head ----
    def _prepare_task(self, train_cfg: TrainConfig) -> ModelConfig:
        task, base_cfg = self.fcfg.task, self.base.config
        if task.kind == "continue":
            if not task.data:
                raise LlmkitError("task 'continue' needs token shards", "set [task] data to a tokenized directory")
            self.data = TokenDataset(task.data)
            self.data.check_tokenizer(self.tokenizer)  # ids from another tokenizer would train nonsense
            model_cfg = head_config(base_cfg, "continue", [], self.fcfg.model.dropout)
            self.objective = make_objective(model_cfg, train_cfg, self.tokenizer)
            return model_cfg
        if task.kind in ("seq2seq", "instruct"):
            return self._prepare_text(train_cfg)
        if not task.train_file or not task.dev_file:
            raise LlmkitError(f"task '{task.kind}' needs train_file and dev_file", "set them in [task]")
        if task.kind == "classify":
            train = fdata.read_labelled(task.train_file, task.text_field, task.label_field, task.columns)
            dev = fdata.read_labelled(task.dev_file, task.text_field, task.label_field, task.columns)
            train_labels, dev_labels = [label for _, label in train], [label for _, label in dev]
            encode = fdata.encode_classify
        else:
            train, dev = fdata.read_conll(task.train_file), fdata.read_conll(task.dev_file)
            train_labels = [t for _, tags in train for t in tags]
            dev_labels = [t for _, tags in dev for t in tags]
            encode = fdata.encode_tokens
        train = train[: task.max_train_examples or None]
        dev = dev[: task.max_dev_examples or None]
        labels = task.labels or sorted(set(train_labels))
        fdata.check_labels(train_labels, labels, task.train_file)
        fdata.check_labels(dev_labels, labels, task.dev_file)
        model_cfg = head_config(base_cfg, task.kind, labels, self.fcfg.model.dropout)
        pad = _pad_id(self.tokenizer, model_cfg)
        if model_cfg.family == "decoder" and model_cfg.pad_token_id is None:
            model_cfg = model_cfg.replace(pad_token_id=pad)  # transformers finds the last token by it
        block = min(train_cfg.block_size, model_cfg.max_seq_len)
        self.train_examples = fdata.Examples(encode(self.tokenizer, train, labels, block), pad,
                                             group_size=self._group_size(train_cfg))  # fmt: skip
        self.dev_examples = encode(self.tokenizer, dev, labels, block)
        self.dev_gold = [label for _, label in dev] if task.kind == "classify" else [tags for _, tags in dev]
        self.labels = labels
        return model_cfg

    def _prepare_text(self, train_cfg: TrainConfig) -> ModelConfig:
        """seq2seq and instruct: the model keeps its LM head; examples are token sequences (text2text)."""
        task = self.fcfg.task
        model_cfg = head_config(self.base.config, task.kind, [], self.fcfg.model.dropout)
        pad = _pad_id(self.tokenizer, model_cfg)
        block = min(train_cfg.block_size, model_cfg.max_seq_len)
        self.labels = []
        if task.kind == "instruct" and task.files:
            train, dev = text2text.read_task_mix(task.files, task.weights, task.max_train_examples, task.dev_limit,
                                                 train_cfg.seed)  # fmt: skip
        elif not task.train_file or not task.dev_file:
            raise LlmkitError(f"task '{task.kind}' needs train_file and dev_file (or files)", "set them in [task]")
        elif task.kind == "instruct":
            train = text2text.read_conversations(task.train_file, task.text_field, task.label_field)
            dev = text2text.read_conversations(task.dev_file, task.text_field, task.label_field)
        else:
            train = fdata.read_labelled(task.train_file, task.text_field, task.label_field, task.columns)
            dev = fdata.read_labelled(task.dev_file, task.text_field, task.label_field, task.columns)
        train = train[: task.max_train_examples or None]
        dev = dev[: task.max_dev_examples or None]
        if task.kind == "instruct":
            # the tokenizer carries init_from's chat template, so the tuned checkpoint is saved with it
            template = text2text.ChatTemplate.for_model(self.fcfg.model.init_from, self.tokenizer)
            encoded = text2text.with_response(text2text.encode_instruct(self.tokenizer, template, train, block), block)
            if task.pack:
                conversations, encoded = len(encoded), text2text.pack(encoded, block)
                self.packed = (conversations, len(encoded))
                tokens = sum(len(e.ids) for e in encoded)
                distributed.print0(f"packed {conversations:,} conversations ({tokens:,} tokens) into {len(encoded):,} "
                                   f"windows of up to {block} tokens")  # fmt: skip
            collate = functools.partial(text2text.collate_instruct, pad_id=pad)  # the head at response tokens only
            self.train_examples = fdata.Examples(encoded, pad, collate, self._group_size(train_cfg))
            self.dev_examples = text2text.with_response(text2text.encode_instruct(self.tokenizer, template, dev, block),
                                                        block)  # fmt: skip
            return model_cfg
        start = model_cfg.decoder_start_token_id if model_cfg.decoder_start_token_id is not None else pad
        collate = functools.partial(text2text.collate_seq2seq, pad_id=pad, start_id=start)
        self.train_examples = fdata.Examples(text2text.encode_seq2seq(self.tokenizer, train, block, block), pad,
                                             collate, self._group_size(train_cfg))  # fmt: skip
        self.dev_examples = text2text.encode_seq2seq(self.tokenizer, dev, block, block)
        self.dev_gold = [target for _, target in dev]
        return model_cfg

    def _group_size(self, train_cfg: TrainConfig) -> int:
        """Rows per length-sorted run with [task] group_by_length (else 0): 50 global batches, as the Trainer."""
        if not self.fcfg.task.group_by_length:
            return 0
        return GROUP_BATCHES * train_cfg.batch_size * train_cfg.grad_accum * self.env.world_size

    # ---- hooks of the loop ----
    def setup(self) -> None:
        checkpoint.check_sizes(self.model_cfg, f"{self.fcfg.model.init_from}")

    def initial_model(self) -> nn.Module:
        torch.manual_seed(self.cfg.seed)  # the new head's init: the same on every process
        model = build_model(self.model_cfg, init=True)
        base = checkpoint.unique_state_dict(self.base)
        ours = model.state_dict()
        copied = {name: t for name, t in base.items() if name in ours and ours[name].shape == t.shape}
        model.load_state_dict(copied, strict=False)
        self.new_weights = sorted(set(ours) - set(copied))
        del self.base  # its weights now live in the model
        return self._apply_method(model)

    def adapt(self, model: nn.Module) -> nn.Module:
        """The method on a model whose saved weights are loaded next (resume): quantized buffers empty."""
        return self._apply_method(model, empty=True)

    def _apply_method(self, model: nn.Module, empty: bool = False) -> nn.Module:
        method = self.fcfg.method
        if method.name == "freeze":
            freeze(model, self.model_cfg, method.train_layers)
        elif method.name in ("lora", "qlora"):
            self.lora_cfg = lora_config(method, self.model_cfg, self.fcfg.task.kind)
            if method.name == "qlora":
                quantize_blocks(model, method.bits, empty)
            apply_lora(model, self.lora_cfg)
        return model

    def _save_best(self) -> None:
        """Full and freeze: the model as it is. LoRA: the adapter in peft's format in OUT/adapter and,
        over a float base, the merged plain checkpoint in OUT/best; QLoRA's quantized base cannot take
        the update (it would be quantized again), so its best scores go to OUT/best.json beside the adapter."""
        if self.fcfg.method.name not in ("lora", "qlora"):
            return super()._save_best()
        if self.env.is_main:
            save_adapter(self.state.raw, self.lora_cfg, self.root / ADAPTER, str(self.fcfg.model.init_from))
            scores = {"step": self.state.step, **self.last_eval}
            if self.fcfg.method.name == "lora":
                merged = merge_lora(copy.deepcopy(self.state.raw))
                checkpoint.save(merged, self.best_dir, tokenizer=self.tokenizer, card=self.card(),
                                extra_files={"best.json": scores})  # fmt: skip
            else:
                files.atomic_write(self.root / "best.json", json.dumps(scores, indent=2))
        distributed.barrier()

    def batches(self, step: int) -> list[Batch]:
        cfg, env = self.cfg, self.env
        if self.fcfg.task.kind == "continue":
            return train_batches(self.data, self.objective, cfg, env, step)
        return [
            self.train_examples.batch(step * cfg.grad_accum + micro, cfg.batch_size, seed=cfg.seed,
                                      rank=env.rank, world_size=env.world_size).to(env.device)
            for micro in range(cfg.grad_accum)
        ]  # fmt: skip

    def step_tokens(self, batches: list[Batch]) -> int | torch.Tensor:
        """Real (not padding) input tokens of the step, this process's times the processes: a tensor
        on the device, brought to the host with the losses at the next log (no sync per step)."""
        if self.fcfg.task.kind == "continue":
            return super().step_tokens(batches)
        counts = [b.inputs["attention_mask"].sum() if "attention_mask" in b.inputs else b.inputs["input_ids"].numel()
                  for b in batches]  # fmt: skip
        return sum(counts) * self.env.world_size

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if self.fcfg.task.kind == "continue":
            loss = evaluate(self.state, self.data, self.objective)
            return {"val_loss": loss, "val_ppl": perplexity(loss)}
        model, state = self.state.raw, self.state
        model.eval()
        loss_sum, count, predictions = 0.0, 0, []
        size = self.fcfg.task.eval_batch_size
        for start in range(0, len(self.dev_examples), size):
            batch = self.train_examples.collate(self.dev_examples[start : start + size])
            batch = batch.to(self.env.device)
            with state.autocast:
                logits = model(**batch.inputs).logits
            n = int((batch.labels != IGNORE_INDEX).sum())
            loss_sum += float(lm_loss(logits, batch.labels)) * n
            count += n
            if self.fcfg.task.kind in ("seq2seq", "instruct"):
                continue
            predicted = logits.argmax(-1).cpu()
            labels = batch.labels.cpu()
            if self.fcfg.task.kind == "classify":
                predictions += [self.labels[i] for i in predicted.tolist()]
            else:
                for row in range(len(labels)):
                    predictions.append([self.labels[i] for i in predicted[row][labels[row] != IGNORE_INDEX].tolist()])
        scores = {"val_loss": loss_sum / max(count, 1)}
        if self.fcfg.task.kind == "seq2seq":
            scores.update(self._generate_scores(model))  # in eval mode: no dropout in the outputs scored
        model.train()
        if self.fcfg.task.kind == "instruct":
            return {**scores, "val_ppl": perplexity(scores["val_loss"])}
        if self.fcfg.task.kind == "seq2seq":
            return scores
        if self.fcfg.task.kind == "classify":
            return {**scores, **score_classify(self.dev_gold, predictions)}
        # words cut off by truncation get no prediction: they count as O (missed entities)
        padded = [p + ["O"] * (len(g) - len(p)) for g, p in zip(self.dev_gold, predictions, strict=True)]
        return {**scores, **score_tokens(self.dev_gold, padded)}

    def _generate_scores(self, model: nn.Module) -> dict[str, float]:
        """seq2seq: greedy outputs for the first ``dev_limit`` dev examples, scored against their targets."""
        from llmkit.evaluate.metrics import bleu, chrf, rouge

        task, pad = self.fcfg.task, self.train_examples.pad_id
        start = self.model_cfg.decoder_start_token_id
        start = pad if start is None else start
        examples = self.dev_examples[: task.dev_limit]
        outputs: list[str] = []
        for first in range(0, len(examples), task.eval_batch_size):
            rows = text2text.greedy_seq2seq(
                model,
                examples[first : first + task.eval_batch_size],
                pad,
                start,
                self.tokenizer.eos_token_id,
                task.max_new_tokens,
                self.state.autocast,
            )
            outputs += [self.tokenizer.decode(ids).strip() for ids in rows]
        references = [[gold] for gold in self.dev_gold[: len(examples)]]
        if task.metric == "rougeL":
            return rouge(outputs, references)
        return {"bleu": bleu(outputs, references), "chrf": chrf(outputs, references)}

    def check_resumable(self, saved: dict[str, Any]) -> None:
        super().check_resumable(saved)
        old = dict(saved.get("finetune", {}))
        new = self.save_extra()["finetune"]
        # a setting added since the run was saved counts as its default there
        defaults = {"task": dataclasses.asdict(TaskConfig()), "method": dataclasses.asdict(MethodConfig())}
        for table in ("task", "method"):
            if isinstance(old.get(table), dict):
                old[table] = {k: defaults[table][k] for k in new[table] if k in defaults[table]} | old[table]
            if old.get(table) != new[table]:
                key = next((k for k in new[table] if (old.get(table) or {}).get(k) != new[table][k]), "?")
                raise LlmkitError(
                    f"cannot resume: [{table}] {key}={new[table].get(key)!r} differs from the saved run's "
                    f"{(old.get(table) or {}).get(key)!r}",
                    "resume with the same task and method, or start a new run in another out_dir",
                )

    def save_extra(self) -> dict[str, Any]:
        settings = self.fcfg.to_dict()
        return {"finetune": {"task": settings["task"], "method": settings["method"], "model": settings["model"]}}

    def card(self) -> ModelCard:
        f = self.fcfg
        base_card = model_card.read(f.model.init_from)
        return ModelCard(
            how_made=f"Fine-tuned by `llmkit finetune` (task {f.task.kind}, method {f.method.name}) "
            f"from the checkpoint `{f.model.init_from}`.",
            name=Path(f.model.init_from).name + f"-{f.task.kind}",
            base_model=str(f.model.init_from),
            training={
                "task": f.task.kind,
                "method": f.method.name,
                "train_file": f.task.train_file or f.task.data or ", ".join(f.task.files),
                "steps": self.state.step,
                "batch_size": self.rows,
                "lr": self.cfg.lr,
            },  # fmt: skip
            metrics={k: round(v, 4) for k, v in self.last_eval.items()},
            base_card=base_card,
        )


def lora_config(method, cfg: ModelConfig, kind: str) -> LoraConfig:
    """The run's LoraConfig: the new head trains in full next to the adapter (peft's
    ``modules_to_save``, as its sequence- and token-classification task types do)."""
    head = [] if kind in ("continue", "seq2seq", "instruct") else ["score" if cfg.family == "decoder" else "classifier"]
    return LoraConfig(rank=method.rank, alpha=method.alpha, dropout=method.dropout,
                      target_modules=list(method.target_modules), modules_to_save=head)  # fmt: skip


def quantize_blocks(model: nn.Module, bits: int, empty: bool = False) -> None:
    """QLoRA-style frozen base: the linear layers of the transformer blocks in int8 or int4 (group 64);
    embeddings, norms and the task head stay in float (the head trains)."""
    if bits not in (4, 8):
        raise LlmkitError(f"qlora bits={bits} is not supported", "set [method] bits to 4 or 8")
    spec = QuantSpec(f"int{bits}")
    for module in model.modules():
        if isinstance(module, Stack):
            quantize_model(module, spec, empty=empty)


def freeze(model: nn.Module, cfg: ModelConfig, train_layers: int) -> None:
    """Train only the task head and the last ``train_layers`` blocks (with the final norm when
    they include the last one); everything else keeps its weights."""
    if train_layers > cfg.n_layer:
        raise LlmkitError(
            f"train_layers={train_layers} is more than the model's {cfg.n_layer} blocks",
            f"use at most {cfg.n_layer}, or method full",
        )
    trained = [f"stack.layers.{i}." for i in range(cfg.n_layer - train_layers, cfg.n_layer)]
    if train_layers:
        trained.append("stack.final_norm.")
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(HEAD_PREFIXES) or name.startswith(tuple(trained)))


def _load_base(directory: str) -> nn.Module:
    if not Path(directory).is_dir():
        raise LlmkitError(f"init_from {directory}: no such directory", "point [model] init_from at a checkpoint")
    model = checkpoint.load(directory, dtype=torch.float32)  # master weights in fp32; autocast does bf16
    if model.tokenizer is None:
        raise LlmkitError(
            f"init_from {directory} has no tokenizer", "save the checkpoint with its tokenizer (convert does)"
        )
    return model


def _pad_id(tokenizer, cfg: ModelConfig) -> int:
    """The id that pads batches: the tokenizer's pad, else the model's, else eos, else 0 (masked anyway)."""
    for candidate in (tokenizer.pad_token_id, cfg.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0
