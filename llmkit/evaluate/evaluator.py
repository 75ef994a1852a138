"""k-shot evaluation of a task: prompts built for each shot count, answered, scored by the task's metrics.

Order, per shot count k: for each item, pick k demonstrations from the pool (seeded by the task's
seed and the item's index, so k-shot sets are the same from run to run, and with random selection
the 1-shot example opens the 5-shot list) -> build the prompt, dropping demonstrations that do not
fit the context window (tokens counted with the model's tokenizer, room kept for the answer) ->
answer: the label with the highest log-likelihood, or greedy generation (parsed into a label for
classification) -> metrics over all items.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from llmkit.chat.template import ChatTemplate
from llmkit.errors import LlmkitError
from llmkit.evaluate import metrics as M
from llmkit.evaluate.readers import Item, TaskData
from llmkit.evaluate.scoring import check_model, generate_answers, make_request, parse_label, score_requests
from llmkit.evaluate.tasks import Task, answer_reserve, chat_render, item_prompt
from llmkit.prompts import Prompt, PromptTooLong, continuation


@dataclass
class ShotResult:
    """The figures of one shot count; ``predictions`` holds one record per item."""

    shots: int
    n: int
    metrics: dict[str, float]
    counts: dict[str, int]  # correct, unparsed (classification); prompts that lost demonstrations, ...
    mean_prompt_tokens: float
    predictions: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class EvalReport:
    """Every shot count's result for one model on one task."""

    model: str
    task: str
    kind: str
    method: str
    metrics: list[str]
    chance: float | None  # classification: 1 / number of labels
    results: list[ShotResult]
    skipped: list[int] = field(default_factory=list)  # items whose input alone exceeds the window
    window: int | None = None
    chat: bool = False  # prompts rendered through the model's chat template (the task's chat setting)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_task(
    model: nn.Module,
    task: Task,
    data: TaskData,
    shots: Sequence[int],
    method: str | None = None,
    batch_size: int = 8,
    progress: bool = True,
    model_name: str = "",
    template: ChatTemplate | None = None,
) -> EvalReport:
    """Evaluate ``model`` on ``data.items`` at each shot count; ``method`` overrides the task's
    (classification only: "loglikelihood" or "generate"; generation tasks always generate). ``template`` is
    the model's chat template, used as the task's ``chat`` setting says (``chat_render``)."""
    check_model(model)
    method = "generate" if task.kind != "classification" else (method or task.method)
    if method not in ("loglikelihood", "generate"):
        raise LlmkitError(f"unknown method {method!r}", "use loglikelihood or generate")
    render = chat_render(task, template, method)
    data, skipped = _fitting(model, task, data, method, render)
    # a chat reply ends at the template's end-of-turn token, as `llmkit generate` ends it
    end = template.end_of_turn(model.tokenizer) if render is not None else None
    eos = [*model.generation_config.eos_token_id, end] if end is not None else None
    results = []
    for k in shots:
        prompts = build_prompts(model, task, data, k, method, render)
        results.append(_answer_and_score(model, task, data.items, prompts, k, method, batch_size, progress, eos))
    chance = 1 / len(task.labels) if task.kind == "classification" else None
    names = _metric_names(task)
    return EvalReport(
        model_name, task.name, task.kind, method, names, chance, results, skipped, model.config.max_seq_len,
        chat=render is not None,
    )  # fmt: skip


def _fitting(model: nn.Module, task: Task, data: TaskData, method: str, render=None) -> tuple[TaskData, list[int]]:
    """The items whose 0-shot prompt fits the window (then every k-shot prompt fits, with demonstrations
    dropped as needed), and the indices of the others: one over-long input (DialogSum has dialogues of
    ~1,000 GPT-2 tokens) is skipped and reported rather than ending the whole run."""
    tok, cfg = model.tokenizer, model.config
    reserve = answer_reserve(cfg, tok, task, method)
    kept, skipped = [], []
    for item in data.items:
        try:
            item_prompt(task, data.pool, item.index, item.input, 0, tok, cfg.max_seq_len, reserve, render)
            kept.append(item)
        except PromptTooLong:
            skipped.append(item.index)
    if not kept:
        raise LlmkitError(
            f"no item of {task.name} fits the context window of {cfg.max_seq_len} tokens, even 0-shot",
            "use a model with a longer context window, or shorter inputs",
        )
    return TaskData(kept, data.pool), skipped


def build_prompts(model: nn.Module, task: Task, data: TaskData, k: int, method: str, render=None) -> list[Prompt]:
    """One prompt per item with k demonstrations (fewer where the window is too small), through ``render``
    (the chat template) when given."""
    tok, cfg = model.tokenizer, model.config
    reserve = answer_reserve(cfg, tok, task, method)
    window = cfg.max_seq_len
    return [
        item_prompt(task, data.pool, item.index, item.input, k, tok, window, reserve, render) for item in data.items
    ]


def _answer_and_score(
    model, task: Task, items: list[Item], prompts: list[Prompt], k: int, method: str, batch_size: int, progress: bool,
    eos: list[int] | None = None,
) -> ShotResult:  # fmt: skip
    desc = f"{task.name} {k}-shot"
    predicted, texts, scores = _answer(model, task, prompts, method, batch_size, desc, progress, eos)
    if task.kind == "classification":
        figures, counts = _classification(task, items, predicted)
    elif task.kind == "code":
        figures, counts, outcomes = _code(task, items, prompts, texts)
    else:
        figures, counts = _generation(task, items, texts)
    counts["prompts_with_dropped_examples"] = sum(p.dropped > 0 for p in prompts)
    counts["dropped_examples"] = sum(p.dropped for p in prompts)
    records = _records(task, items, prompts, predicted, texts, scores)
    if task.kind == "code":
        for record, outcome in zip(records, outcomes, strict=True):
            record |= {"status": outcome.status, "detail": outcome.detail}
    mean_tokens = sum(p.tokens for p in prompts) / len(prompts)
    return ShotResult(k, len(items), figures, counts, mean_tokens, records)


def _answer(
    model, task: Task, prompts: list[Prompt], method: str, batch_size: int, desc: str, progress: bool, eos=None
):  # fmt: skip
    """(predicted label keys or None, generated texts or None, per-label scores or None) for the prompts."""
    keys, words = list(task.labels), task.label_words
    if method == "loglikelihood":
        requests = [make_request(model, p.text, continuation(task.prompt, w)) for p in prompts for w in words]
        flat = score_requests(model, requests, batch_size, desc, progress, per_item=len(words))
        scores = [flat[i * len(words) : (i + 1) * len(words)] for i in range(len(prompts))]
        return [keys[max(range(len(words)), key=row.__getitem__)] for row in scores], None, scores
    # code keeps the completion's leading indentation: it continues the function body
    texts = generate_answers(
        model, [p.text for p in prompts], task.max_new_tokens, task.stop, batch_size, desc, progress,
        strip=task.kind != "code", **({"eos_token_id": eos} if eos is not None else {}),
    )  # fmt: skip
    if task.kind != "classification":
        return None, texts, None
    chosen = [parse_label(t, words) for t in texts]
    return [keys[c] if c is not None else None for c in chosen], texts, None


def _records(task: Task, items, prompts, predicted, texts, scores) -> list[dict[str, Any]]:
    """One JSON-ready record per item: what was shown, what came back."""
    records = []
    for i, (item, p) in enumerate(zip(items, prompts, strict=True)):
        record: dict[str, Any] = {"index": item.index, "shots_shown": len(p.examples), "prompt_tokens": p.tokens}
        if task.kind == "classification":
            record |= {"label": item.label, "predicted": predicted[i]}
        else:
            record["references"] = list(item.references)
        if texts is not None:
            record["output"] = texts[i]
        if scores is not None:
            record["scores"] = dict(zip(task.label_words, scores[i], strict=True))
        records.append(record)
    return records


def _classification(task: Task, items: list[Item], predicted: list[str | None]) -> tuple[dict, dict]:
    gold = [item.label for item in items]
    figures = {"accuracy": M.accuracy(gold, predicted), "macro_f1": M.macro_f1(gold, predicted)}
    counts = {"correct": sum(g == p for g, p in zip(gold, predicted, strict=True)), "unparsed": predicted.count(None)}
    return {m: figures[m] for m in task.metrics}, counts


def _generation(task: Task, items: list[Item], texts: list[str]) -> tuple[dict, dict]:
    references = [list(item.references) for item in items]
    figures: dict[str, float] = {}
    for name in task.metrics:
        if name == "rouge":
            figures |= M.rouge(texts, references)
        elif name == "bleu":
            figures["bleu"] = M.bleu(texts, references)
        elif name == "chrf":
            figures["chrf"] = M.chrf(texts, references)
    return figures, {"empty_outputs": sum(not t for t in texts)}


def _code(task: Task, items: list[Item], prompts: list[Prompt], texts: list[str]) -> tuple[dict, dict, list]:
    from llmkit.evaluate.code import pass_at_1, run_completions
    from llmkit.evaluate.execution import Limits

    outcomes = run_completions([p.text for p in prompts], texts, [i.references for i in items], Limits(task.timeout))
    counts = {s: sum(o.status == s for o in outcomes) for s in ("passed", "failed", "timeout")}
    return {"pass_at_1": pass_at_1(outcomes)}, counts, outcomes


def _metric_names(task: Task) -> list[str]:
    """The figures reported, in order: "rouge" stands for its three F-measures."""
    names: list[str] = []
    for m in task.metrics:
        names += ["rouge1", "rouge2", "rougeL"] if m == "rouge" else [m]
    return names
