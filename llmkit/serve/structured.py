"""What a request's output must match (``response_format``, vLLM's ``guided_*``, ``tools``) and tool-call replies.

A request names at most one constraint: ``response_format`` ({"type": "json_object"} -> any JSON object,
{"type": "json_schema", ...} -> that schema), ``guided_json`` / ``guided_regex`` (vLLM's), or, in chat,
``tools`` with a ``tool_choice`` other than "none" (llmkit.tools.call_constraint: a forced call's schema, or
for "auto" a grammar admitting a call or text that does not start with "{").

Every JSON schema (the response format's, ``guided_json``, each tool's ``parameters``) is closed and its numbers
bounded first (llmkit.closed_schema: objects admit only their listed keys unless they say otherwise, numbers at
most 15 digits and 6 decimals), so a weak model cannot wander off into invented keys or endless digits. Before
admission each grammar is checked: one the engine cannot compile, a schema no finite value satisfies, or one
whose very first step allows nothing (a regex that can never match) is a 400 naming the field. The grammar is
compiled once per request, before any decoding; each choice then gets fresh matchers (``RowGrammars.start()``).
A grammar that still fails while decoding (an engine limit) ends that choice alone: ``grammar_failure`` tells
the server it was the grammar, not the model, and the client gets a 400 or, streamed, an error event.

Replies with tools: the text is parsed by ``llmkit.tools.parse_tool_calls``; a call becomes OpenAI's
``tool_calls`` with ``finish_reason: "tool_calls"``. Streamed, a reply that opens with "{" or "[" (only a call
can, under the constraint) is held until it ends and then sent as OpenAI streams calls: per call one delta
with its index, id, type and function name (arguments ""), then one with its arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmkit import tools as toolkit
from llmkit.closed_schema import never_matches, prepare
from llmkit.errors import LlmkitError
from llmkit.inference.constrained import Grammar, RowGrammars, choose_grammar

JSON_OBJECT = {"type": "object"}  # response_format json_object: any object, as OpenAI's JSON mode


@dataclass
class ToolSetup:
    """A chat request's checked tools and choice (``tools`` empty and mode "none" without them)."""

    tools: list[dict[str, Any]]  # as the client gave them (the prompt shows these)
    choice: toolkit.ToolChoice
    parallel: bool = False
    constrained: list[dict[str, Any]] | None = None  # the same with closed, bounded parameters (the grammar's)

    @property
    def active(self) -> bool:
        """Whether replies may be calls (and are parsed as such)."""
        return bool(self.tools) and self.choice.mode != "none"


def tool_setup(tools: list[dict[str, Any]] | None, tool_choice: Any, parallel: bool | None) -> ToolSetup:
    """``tools`` and ``tool_choice`` checked (llmkit.tools); an unknown tool is a one-line LlmkitError."""
    checked = toolkit.check_tools(tools)
    constrained = []
    for i, tool in enumerate(checked):
        params = tool["function"].get("parameters") or {"type": "object"}
        why = never_matches(params)
        if why is not None:
            raise GrammarRefused(f"tools[{i}].function.parameters ({tool['function']['name']}): {why}",
                                 f"tools[{i}].function.parameters")  # fmt: skip
        constrained.append({**tool, "function": {**tool["function"], "parameters": prepare(params)}})
    return ToolSetup(checked, toolkit.choose(checked, tool_choice), bool(parallel), constrained)


class GrammarRefused(LlmkitError):
    """A grammar refused before admission; ``param`` is the request field that gave it."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message, "give a schema that some finite value satisfies")
        self.param = param


def _schema(schema: Any, field: str) -> Grammar:
    """A request's JSON schema, checked to match some value, closed and bounded (module docstring)."""
    why = never_matches(schema)
    if why is not None:
        raise GrammarRefused(f"{field}: the JSON schema matches nothing: {why}", field)
    return Grammar.json_schema(prepare(schema))


def request_grammar(body, setup: ToolSetup | None = None) -> tuple[Grammar | None, str]:
    """The request's one grammar (or None) and the field that gave it (for the error's ``param``)."""
    given: list[tuple[str, Grammar]] = []
    fmt = getattr(body, "response_format", None)
    if fmt is not None and fmt.type == "json_object":
        given.append(("response_format", Grammar.json_schema(JSON_OBJECT)))
    elif fmt is not None and fmt.type == "json_schema":
        schema = fmt.json_schema.schema_
        given.append(("response_format", _schema(schema if schema is not None else JSON_OBJECT, "response_format")))
    if getattr(body, "guided_json", None) is not None:
        given.append(("guided_json", _schema(body.guided_json, "guided_json")))
    if getattr(body, "guided_regex", None) is not None:
        given.append(("guided_regex", Grammar.regex(body.guided_regex)))
    if setup is not None and setup.active:
        kwargs = toolkit.call_constraint(setup.constrained or setup.tools, setup.choice, setup.parallel)
        given.append(("tool_choice", choose_grammar(**kwargs)))
    if len(given) > 1:
        names = " and ".join(name for name, _ in given)
        raise LlmkitError(f"{names} given together", "constrain the output with one of them (or tool_choice none)")
    return (given[0][1], given[0][0]) if given else (None, "")


@dataclass
class RequestGrammar:
    """A request's compiled grammar and the field that gave it (the ``param`` of its errors)."""

    rows: RowGrammars
    field: str

    def start(self):
        """Fresh matchers for one choice (llmkit.inference.constrained.Constraint)."""
        return self.rows.start()


def compile_grammar(model, grammar: Grammar, eos: list[int]) -> RowGrammars:
    """The grammar checked and compiled for ``model``'s tokenizer, and its first step tried: a grammar that allows
    no first token (a regex that can never match: the engine says NoExtensionBias) is refused here, not after
    admission (slow for big schemas: run it off the loop)."""
    grammars = RowGrammars(model, [grammar], list(eos))
    matcher = grammars.start().matchers[0]
    matcher.compute_bitmask()
    if matcher.is_error():
        raise LlmkitError(
            f"the {grammar.label} matches no text (no first token is allowed: {_first_line(matcher.get_error())})",
            f"give a {grammar.label} that some text satisfies",
        )
    return grammars


def grammar_failure(constraint) -> str | None:
    """Why ``constraint`` (a request's llmkit.inference.constrained.Constraint) stopped, when its grammar failed
    while decoding (an engine limit, e.g. "Too many items"); None when it did not (a failure of the model's)."""
    for matcher in getattr(constraint, "matchers", None) or []:
        if matcher is not None and matcher.is_error():
            return _first_line(matcher.get_error())
    return None


def _first_line(message: str) -> str:
    """The engine's message up to its state dump (which spans many lines)."""
    return str(message).split("<state>")[0].strip().rstrip(";").replace("\n", " ").splitlines()[0]


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
