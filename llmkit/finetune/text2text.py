"""Text-to-text fine-tuning data: ``seq2seq`` pairs for encoder-decoders, ``instruct`` conversations for decoders.

seq2seq (teacher forcing, as transformers' T5ForConditionalGeneration with ``labels``): the encoder
reads the input's ids, the labels are the target's ids (ending with EOS), and the decoder reads the
labels shifted right behind ``decoder_start_token_id``; padding takes label -100.

instruct (supervised fine-tuning): each conversation is rendered through the chat template
(llmkit.chat.template: the checkpoint's Jinja template, or the plain "User:/Assistant:" one) and
the loss falls on the assistant turns' tokens only. An assistant turn's text is what rendering the
conversation up to that turn adds after rendering it up to the turn's generation prompt (so a
template's end-of-turn marker, e.g. ChatML's ``<|im_end|>``, belongs to the response); the plain
template has no end marker, so EOS follows the last response. Labels are shifted here (position t
holds token t+1 or -100), so the loop's loss is the masked next-token cross-entropy.

Packing concatenates the encoded examples into ``block_size`` windows (attention is not reset at
example boundaries, as in TRL's default packing); each token keeps its own label, so the masks
stay per example's response.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmkit.chat.template import ChatTemplate
from llmkit.data.tokenizer import Tokenizer
from llmkit.errors import LlmkitError
from llmkit.files import read_jsonl
from llmkit.finetune.data import Encoded, collate, read_labelled, truncating
from llmkit.objectives import IGNORE_INDEX, Batch


# ---- seq2seq ------------------------------------------------------------------------------------
def encode_seq2seq(
    tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]], max_length: int, max_target_length: int
) -> list[Encoded]:
    """(input, target) -> the input's ids and the target's ids (labels), each with EOS at the end."""
    eos = tokenizer.eos_token_id
    out = []
    for source, target in pairs:
        out.append(
            Encoded(_with_eos(tokenizer, source, max_length, eos), _with_eos(tokenizer, target, max_target_length, eos))
        )
    return out


def _with_eos(tokenizer: Tokenizer, text: str, max_length: int, eos: int | None) -> list[int]:
    """ids of ``text`` truncated to ``max_length``, ending with EOS (T5's tokenizer adds it; others do not)."""
    ids = truncating(tokenizer, max_length).encode(text).ids
    if eos is not None and (not ids or ids[-1] != eos):
        ids = ids[: max_length - 1] + [eos]
    return ids


def collate_seq2seq(examples: Sequence[Encoded], pad_id: int, start_id: int) -> Batch:
    """Right-padded inputs with their mask, decoder inputs (labels shifted right behind the start id,
    padded with ``pad_id``) and labels (-100 on padding)."""
    source_len = max(len(e.ids) for e in examples)
    target_len = max(len(e.labels) for e in examples)
    ids = torch.full((len(examples), source_len), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), source_len), dtype=torch.long)
    decoder = torch.full((len(examples), target_len), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), target_len), IGNORE_INDEX, dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        mask[row, : len(e.ids)] = 1
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
        decoder[row, : len(e.labels)] = torch.tensor([start_id] + list(e.labels[:-1]))
    return Batch({"input_ids": ids, "attention_mask": mask, "decoder_input_ids": decoder}, labels)


@torch.no_grad()
def greedy_seq2seq(model, examples: Sequence[Encoded], pad_id: int, start_id: int, eos_id: int | None,
                   max_new_tokens: int, autocast) -> list[list[int]]:  # fmt: skip
    """Greedy decoding of each example's input: the generated ids, without the start id and EOS.

    The encoder runs once; the decoder re-reads its prefix each step (no cache: dev sets are small)."""
    batch = collate_seq2seq(examples, pad_id, start_id)
    device = next(model.parameters()).device
    ids, mask = batch.inputs["input_ids"].to(device), batch.inputs["attention_mask"].to(device)
    with autocast:
        memory, _ = model.encode(ids, mask)
    tokens = torch.full((len(examples), 1), start_id, dtype=torch.long, device=device)
    done = torch.zeros(len(examples), dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        with autocast:
            logits = model.decode(tokens, memory, mask)[0][:, -1]
        step = logits.float().argmax(-1)
        step = torch.where(done, torch.full_like(step, pad_id), step)
        tokens = torch.cat([tokens, step[:, None]], dim=1)
        if eos_id is not None:
            done |= step == eos_id
        if bool(done.all()):
            break
    out = []
    for row in tokens[:, 1:].tolist():
        out.append(row[: row.index(eos_id)] if eos_id is not None and eos_id in row else row)
    return out


# ---- instruct: reading ------------------------------------------------------------------------------
Conversation = list[dict[str, Any]]


def read_conversations(path: str | os.PathLike, prompt_field: str, response_field: str) -> list[Conversation]:
    """Conversations of a JSONL file of chat ``messages`` (OpenAI's shape) or of prompt/response rows
    (``prompt_field`` / ``response_field``, which may also be the columns of a TSV file)."""
    path = Path(path)
    if ".jsonl" not in path.suffixes:
        return [_pair(p, r) for p, r in read_labelled(path, prompt_field, response_field)]
    if not path.is_file():
        raise LlmkitError(f"{path}: file not found", "check [task] train_file / dev_file")
    out = []
    for number, record in read_jsonl(path, "one JSON object per line"):
        where = f"{path}:{number}"
        if "messages" in record:
            out.append(_messages(record["messages"], where))
        else:
            out.append(_pair(*_fields(record, prompt_field, response_field, where)))
    if not out:
        raise LlmkitError(f"{path}: no examples", "one conversation (JSON object) per line")
    return out


def _fields(record: dict, prompt_field: str, response_field: str, where: str) -> tuple[str, str]:
    for name in (prompt_field, response_field):
        if not isinstance(record.get(name), str):
            raise LlmkitError(
                f"{where}: no 'messages' and no text field '{name}' (fields: {', '.join(map(str, record))})",
                "give each line chat 'messages', or set --task.text_field / label_field to the prompt and response",
            )
    return record[prompt_field], record[response_field]


def _pair(prompt: str, response: str) -> Conversation:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def _messages(messages: Any, where: str) -> Conversation:
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
    ):
        raise LlmkitError(f"{where}: 'messages' must be a list of {{role, content}} objects", "fix the line")
    if not any(m["role"] == "assistant" for m in messages):
        raise LlmkitError(f"{where}: the conversation has no assistant turn", "nothing to learn: add the reply")
    return messages


def read_task_mix(
    files: Sequence[str], weights: Sequence[float], total: int, dev_limit: int, seed: int
) -> tuple[list[Conversation], list[Conversation]]:
    """FLAN-style mix of task files (tasks/*.toml): each example becomes one user turn (the task's
    instruction and its prompt template around the input, ending with the answer cue) and the
    assistant's answer (the label word, or the first reference).

    Everything comes from each task's demonstration pool ([examples], or the split-off pool): a
    seeded shuffle of it gives ``dev_limit`` dev examples and the training rest, so the items
    `llmkit eval` scores (SST-2 dev, DialogSum test) are neither trained on nor used to pick the best
    checkpoint. Each file gets ``weights[i] / sum(weights)`` of ``total`` training examples (``total``
    0: the summed training parts), cycled when its part is smaller."""
    from llmkit.evaluate.readers import load_data
    from llmkit.evaluate.tasks import load_task

    rng = random.Random(seed)
    parts, dev = [], []
    for name in files:
        task = load_task(name)
        fmt = task.prompt
        head = fmt.instruction + fmt.example_separator if fmt.instruction else ""
        pool = load_data(task).pool
        if len(pool) <= dev_limit:
            raise LlmkitError(
                f"{name}: {len(pool)} training examples cannot give {dev_limit} dev examples and leave any to train on",
                "lower --task.dev_limit",
            )
        order = list(range(len(pool)))
        rng.shuffle(order)
        rows = [
            _pair(head + fmt.template.format(input=pool[i].input) + fmt.cue_separator + fmt.answer_cue, pool[i].answer)
            for i in order
        ]
        dev += rows[:dev_limit]
        parts.append(rows[dev_limit:])
    weights = list(weights) or [float(len(p)) for p in parts]
    total = total or sum(len(p) for p in parts)
    train: list[Conversation] = []
    for part, weight in zip(parts, weights, strict=True):
        count = round(total * weight / sum(weights))
        train += [part[i % len(part)] for i in range(count)]
    rng.shuffle(train)  # files interleaved (the loop shuffles again per epoch)
    return train, dev


# ---- instruct: encoding -----------------------------------------------------------------------------
@dataclass
class Rendered:
    """A conversation as text, with the character spans of the assistant turns (the loss's)."""

    text: str
    spans: list[tuple[int, int]]


def render_conversation(template: ChatTemplate, messages: Conversation) -> Rendered:
    """The full conversation's text and each assistant turn's span in it (see the module docstring)."""
    text = template.render(messages, add_generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = template.render(messages[:i], add_generation_prompt=True)
        through = template.render(messages[: i + 1], add_generation_prompt=False)
        # the plain template's prompt ends "Assistant:", so " reply" (space included) is the response, as
        # generation from that prompt produces it
        if not (through.startswith(before) and text.startswith(through)):
            raise LlmkitError(
                "the chat template does not render a conversation as its turns in order",
                "use a template whose output for the first turns is a prefix of the whole (most are)",
            )
        spans.append((len(before), len(through)))
    return Rendered(text, spans)


def encode_instruct(
    tokenizer: Tokenizer, template: ChatTemplate, conversations: Sequence[Conversation], max_length: int
) -> list[Encoded]:
    """Each conversation -> input ids (its tokens but the last) and next-token labels, -100 where the
    next token is not part of an assistant turn; truncated to ``max_length`` inputs."""
    eos = tokenizer.eos_token_id
    out = []
    for messages in conversations:
        rendered = render_conversation(template, messages)
        encoding = tokenizer.backend.encode(rendered.text, add_special_tokens=False)
        ids = list(encoding.ids)
        in_response = [any(a <= start < b for a, b in rendered.spans) for start, _ in encoding.offsets]
        if template.source is None and eos is not None:
            ids.append(eos)  # the plain template has no end-of-turn marker: EOS teaches the model to stop
            in_response.append(True)
        ids, in_response = ids[: max_length + 1], in_response[: max_length + 1]
        labels = [t if keep else IGNORE_INDEX for t, keep in zip(ids[1:], in_response[1:], strict=True)]
        out.append(Encoded(ids[:-1], labels))
    return out


def with_response(examples: list[Encoded], block_size: int) -> list[Encoded]:
    """The examples that keep a response token after truncation (the others teach nothing and would
    make an all-ignored batch); an error when none does."""
    kept = [e for e in examples if any(label != IGNORE_INDEX for label in e.labels)]
    if not kept:
        raise LlmkitError(
            f"no example has a response token within block_size={block_size} tokens",
            "raise --train.block_size (up to the model's context), or shorten the prompts",
        )
    if len(kept) < len(examples):
        print(f"finetune: {len(examples) - len(kept)} of {len(examples)} examples dropped: no response token "
              f"within block_size={block_size}")  # fmt: skip
    return kept


def collate_instruct(examples: Sequence[Encoded], pad_id: int) -> Batch:
    """Right-padded ids and mask as ``collate``, plus ``logits_at`` (B, T), the positions whose label
    is not -100, and those labels alone (N,): the LM head and the cross-entropy run only where the loss
    reads. Responses are a fraction of an instruction set's tokens, and the head is a large share of a
    small model's step (SmolLM2-135M: a 576 x 49,152 matrix, 21% of its matmul weights, and a 49,152-way
    softmax per position)."""
    batch = collate(examples, pad_id)
    read = batch.labels != IGNORE_INDEX
    return Batch({**batch.inputs, "logits_at": read}, batch.labels[read])


def pack(examples: Sequence[Encoded], block_size: int) -> list[Encoded]:
    """Concatenate the examples (in order) and cut ``block_size`` windows; the last partial one is
    kept. Each token keeps its label; at a boundary the label after an example's last input token is
    its own last target, so no token predicts across two examples."""
    ids: list[int] = []
    labels: list[int] = []
    for e in examples:
        ids += e.ids
        labels += list(e.labels)
    return [Encoded(ids[i : i + block_size], labels[i : i + block_size]) for i in range(0, len(ids), block_size)]
