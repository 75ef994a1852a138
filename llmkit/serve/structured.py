"""What a request's output must match (``response_format``, vLLM's ``guided_*``, ``tools``) and tool-call replies.

A request names at most one constraint: ``response_format`` ({"type": "json_object"} -> any JSON object,
{"type": "json_schema", ...} -> that schema), ``guided_json`` / ``guided_regex`` (vLLM's), or, in chat,
``tools`` with a ``tool_choice`` other than "none" (llmkit.tools.call_constraint: a forced call's schema, or
for "auto" a grammar admitting a call or text that does not start with "{"). The grammar is compiled once per
request (``compile_request``), before any decoding, so a schema the engine cannot compile is a 400; each
choice then gets fresh matchers (``RowGrammars.start()``) for the batcher.

Replies with tools: the text is parsed by ``llmkit.tools.parse_tool_calls``; a call becomes OpenAI's
``tool_calls`` with ``finish_reason: "tool_calls"``. Streamed, a reply that opens with "{" or "[" (only a call
can, under the constraint) is held until it ends and then sent as OpenAI streams calls: per call one delta
with its index, id, type and function name (arguments ""), then one with its arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmkit import tools as toolkit
from llmkit.errors import LlmkitError
from llmkit.inference.constrained import Grammar, RowGrammars, choose_grammar

JSON_OBJECT = {"type": "object"}  # response_format json_object: any object, as OpenAI's JSON mode


@dataclass
class ToolSetup:
    """A chat request's checked tools and choice (``tools`` empty and mode "none" without them)."""

    tools: list[dict[str, Any]]
    choice: toolkit.ToolChoice
    parallel: bool = False

    @property
    def active(self) -> bool:
        """Whether replies may be calls (and are parsed as such)."""
        return bool(self.tools) and self.choice.mode != "none"


def tool_setup(tools: list[dict[str, Any]] | None, tool_choice: Any, parallel: bool | None) -> ToolSetup:
    """``tools`` and ``tool_choice`` checked (llmkit.tools); an unknown tool is a one-line LlmkitError."""
    checked = toolkit.check_tools(tools)
    return ToolSetup(checked, toolkit.choose(checked, tool_choice), bool(parallel))


def request_grammar(body, setup: ToolSetup | None = None) -> tuple[Grammar | None, str]:
    """The request's one grammar (or None) and the field that gave it (for the error's ``param``)."""
    given: list[tuple[str, Grammar]] = []
    fmt = getattr(body, "response_format", None)
    if fmt is not None and fmt.type == "json_object":
        given.append(("response_format", Grammar.json_schema(JSON_OBJECT)))
    elif fmt is not None and fmt.type == "json_schema":
        schema = fmt.json_schema.schema_
        given.append(("response_format", Grammar.json_schema(schema if schema is not None else JSON_OBJECT)))
    if getattr(body, "guided_json", None) is not None:
        given.append(("guided_json", Grammar.json_schema(body.guided_json)))
    if getattr(body, "guided_regex", None) is not None:
        given.append(("guided_regex", Grammar.regex(body.guided_regex)))
    if setup is not None and setup.active:
        kwargs = toolkit.call_constraint(setup.tools, setup.choice, setup.parallel)
        given.append(("tool_choice", choose_grammar(**kwargs)))
    if len(given) > 1:
        names = " and ".join(name for name, _ in given)
        raise LlmkitError(f"{names} given together", "constrain the output with one of them (or tool_choice none)")
    return (given[0][1], given[0][0]) if given else (None, "")


def compile_grammar(model, grammar: Grammar, eos: list[int]) -> RowGrammars:
    """The grammar checked and compiled for ``model``'s tokenizer (slow for big schemas: run it off the loop)."""
    return RowGrammars(model, [grammar], list(eos))


def tool_reply(text: str, setup: ToolSetup, reason: str) -> tuple[str | None, list[dict[str, Any]], str]:
    """(content, tool_calls, finish_reason) of a finished reply: a complete call becomes ``tool_calls`` with
    finish_reason "tool_calls"; a reply cut by max_tokens stays text with "length"."""
    if not setup.active or reason == "length":
        return text, [], reason
    content, calls = toolkit.parse_tool_calls(text, setup.tools)
    return (content, calls, "tool_calls") if calls else (text, [], reason)


def opens_call(text: str) -> bool:
    """Whether a reply's first text opens a call: under the "auto" grammar only a call starts with "{"."""
    return text[:1] in ("{", "[")


def call_deltas(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``delta`` objects of streamed calls, as OpenAI sends them: index, id, type and name first (arguments
    ""), then the arguments."""
    deltas = []
    for k, call in enumerate(calls):
        head = {"index": k, "id": call["id"], "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""}}  # fmt: skip
        deltas.append({"tool_calls": [head]})
        deltas.append({"tool_calls": [{"index": k, "function": {"arguments": call["function"]["arguments"]}}]})
    return deltas
