"""Tool calls (OpenAI's function calling) as pure functions on plain dicts: no model, no HTTP, no torch.

The request side of the API gives ``tools`` ([{"type": "function", "function": {"name", "description",
"parameters"}}]) and ``tool_choice`` ("auto" | "none" | "required" | {"type": "function", "function":
{"name": ...}}). A turn with tools goes:

1. ``render_messages``: the conversation as the chat template should see it. A template that handles
   tools (its source mentions ``tools``, as Qwen2.5's does) gets them as transformers passes them
   (``tools=``, assistant ``tool_calls`` with the arguments as an object, ``role: "tool"`` messages).
   Any other template, and the plain one, gets the documented default (``DEFAULT_TOOL_PROMPT``): the
   tools described in the system message, earlier calls written as the JSON the model is asked to
   write, and tool results as user messages ("Result of NAME: ...").
2. ``call_constraint``: what decoding must match. A call is one JSON object ``{"name": ..., "arguments":
   {...}}`` whose arguments follow that function's ``parameters`` schema (a list of them with
   ``parallel=True``). "required" and a named function force a call (a JSON schema); "auto" lets the
   reply be a call or text that does not start with "{" (a Lark grammar); "none" constrains nothing.
3. ``parse_tool_calls``: the reply -> (content, tool_calls) in OpenAI's shape, each call with an id and its
   arguments as JSON text. Qwen-style ``<tool_call>...</tool_call>`` tags around the JSON are accepted.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmkit.errors import LlmkitError

# The default rendering for templates without tool support: appended to the system message.
DEFAULT_TOOL_PROMPT = (
    "You can call the functions below. To call one, reply with only a JSON object "
    '{{"name": <function name>, "arguments": <arguments object>}} and nothing else; '
    "otherwise answer normally.\n\nFunctions:\n{functions}"
)
RESULT_PREFIX = "Result of {name}: "  # a tool result, as a user message, for templates without a tool role
# JSON as the constrained decoder writes it (llmkit.inference.constrained.JSON_OPTIONS), for the Lark grammar
_X_GUIDANCE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
_TAGGED = re.compile(r"^\s*<tool_call>\s*(.*?)\s*</tool_call>\s*$", re.S)


@dataclass(frozen=True)
class ToolChoice:
    """``mode`` is "none", "auto", "required" or "named" (then ``name`` is the function)."""

    mode: str
    name: str | None = None


def check_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """``tools`` in OpenAI's shape, checked: each a function with a valid, unique name and an object schema."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise LlmkitError("tools must be a list", 'give [{"type": "function", "function": {"name": ...}}, ...]')
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict):
            raise LlmkitError(f"tools[{i}] is not a function tool", 'give {"type": "function", "function": {...}}')
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise LlmkitError(f"tools[{i}] has no valid name ({name!r})", "use 1-64 letters, digits, _ or -")
        if name in seen:
            raise LlmkitError(f"two tools are named {name!r}", "give each tool its own name")
        seen.add(name)
        params = fn.get("parameters", {"type": "object"})
        if not isinstance(params, dict):
            raise LlmkitError(f"tools[{i}] ({name}): parameters must be a JSON schema object", "give a JSON object")
    return tools


def tool_names(tools: list[dict[str, Any]]) -> list[str]:
    return [t["function"]["name"] for t in tools]


def choose(tools: list[dict[str, Any]], tool_choice: str | dict[str, Any] | None) -> ToolChoice:
    """``tool_choice`` checked against ``tools``; the default is "auto" with tools and "none" without."""
    names = tool_names(tools)
    if tool_choice is None:
        return ToolChoice("auto" if tools else "none")
    if tool_choice in ("none", "auto", "required"):
        if tool_choice == "required" and not tools:
            raise LlmkitError('tool_choice "required" without tools', "give tools, or drop tool_choice")
        return ToolChoice(tool_choice if tools else "none")
    fn = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str):
        hint = 'use "auto", "none", "required" or {"type": "function", "function": {"name": ...}}'
        raise LlmkitError(f"tool_choice {tool_choice!r} is not understood", hint)
    if name not in names:
        known = ", ".join(names) or "none"
        raise LlmkitError(f"tool_choice names an unknown tool {name!r}", f"choose one of the tools given ({known})")
    return ToolChoice("named", name)


def one_call_schema(tools: list[dict[str, Any]], only: str | None = None) -> dict[str, Any]:
    """The JSON schema of one call: ``{"name": const, "arguments": parameters}`` for each tool (or ``only``)."""
    options = []
    for tool in tools:
        fn = tool["function"]
        if only is not None and fn["name"] != only:
            continue
        options.append({
            "type": "object",
            "properties": {"name": {"const": fn["name"]}, "arguments": fn.get("parameters") or {"type": "object"}},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        })  # fmt: skip
    return options[0] if len(options) == 1 else {"anyOf": options}


def call_schema(tools: list[dict[str, Any]], choice: ToolChoice, parallel: bool = False) -> dict[str, Any] | None:
    """What a forced call must match ("required" or "named"), or None when the reply need not be a call."""
    if choice.mode not in ("required", "named"):
        return None
    one = one_call_schema(tools, choice.name if choice.mode == "named" else None)
    return {"type": "array", "items": one, "minItems": 1} if parallel else one


def call_constraint(tools: list[dict[str, Any]], choice: ToolChoice, parallel: bool = False) -> dict[str, Any]:
    """Keyword arguments for ``llmkit.generate``: ``{"json_schema": ...}`` for a forced call, ``{"grammar": LARK}``
    for "auto" (a call, or text not starting with "{"), ``{}`` for "none"."""
    forced = call_schema(tools, choice, parallel)
    if forced is not None:
        return {"json_schema": forced}
    if choice.mode == "none":
        return {}
    call = one_call_schema(tools)
    call = {"type": "array", "items": call, "minItems": 1} if parallel else call
    schema = json.dumps({**call, "x-guidance": _X_GUIDANCE})
    # text: anything whose first character is not "{" (so a reply that starts a call must finish one)
    return {"grammar": f"start: call | text\ncall: %json {schema}\ntext: /[^{{][\\s\\S]*/\n"}


def parse_tool_calls(
    text: str, tools: list[dict[str, Any]], new_id: Callable[[], str] | None = None
) -> tuple[str | None, list[dict[str, Any]]]:
    """A reply -> (content, tool_calls). The reply is a call when it is (after ``<tool_call>`` tags and
    whitespace are stripped) a JSON object ``{"name", "arguments"}`` naming a given tool, or a list of them;
    anything else is content. Each call is OpenAI's ``{"id", "type": "function", "function": {"name",
    "arguments": JSON text}}``; ids come from ``new_id`` (default: "call_" + 24 hex digits)."""
    new_id = new_id or (lambda: "call_" + uuid.uuid4().hex[:24])
    body = text.strip()
    tagged = _TAGGED.match(body)
    body = tagged.group(1) if tagged else body
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        return text, []
    calls = value if isinstance(value, list) and value else [value]
    names = set(tool_names(tools))
    if not all(isinstance(c, dict) and c.get("name") in names and isinstance(c.get("arguments"), dict) for c in calls):
        return text, []
    return None, [
        {"id": new_id(), "type": "function",
         "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
        for c in calls
    ]  # fmt: skip


def supports_tools(template_source: str | None) -> bool:
    """Whether a Jinja chat template renders ``tools`` itself (as llama.cpp decides: it mentions them)."""
    return template_source is not None and "tools" in template_source


def render_messages(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]], template_source: str | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(messages, tools) as the chat template should receive them.

    Tool-aware templates: assistant ``tool_calls`` arguments become objects (transformers' convention; the
    API sends JSON text), the rest passes through. Other templates: tools go into the system message as
    ``DEFAULT_TOOL_PROMPT``, calls become their JSON as the assistant's content, and ``role: "tool"``
    results become user messages "Result of NAME: ..." (templates without a tool role often allow only
    user and assistant turns); no ``tools`` is passed.
    """
    if supports_tools(template_source):
        return [_with_object_arguments(m) for m in messages], (tools or None)
    names = _call_names(messages)
    out = [_as_plain_turn(m, names) for m in messages]
    if tools:
        prompt = tools_prompt(tools)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{prompt}"}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out, None


def tools_prompt(tools: list[dict[str, Any]]) -> str:
    """``DEFAULT_TOOL_PROMPT`` with one line per function: its name, description and parameters schema."""
    lines = []
    for tool in tools:
        fn = tool["function"]
        described = {"name": fn["name"], "description": fn.get("description", ""),
                     "parameters": fn.get("parameters", {"type": "object"})}  # fmt: skip
        lines.append(json.dumps(described, ensure_ascii=False))
    return DEFAULT_TOOL_PROMPT.format(functions="\n".join(lines))


def _arguments(call: dict[str, Any]) -> tuple[str, Any]:
    fn = call.get("function", call)
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            raise LlmkitError(
                f"tool call {fn.get('name')!r}: arguments are not JSON", "send the arguments as JSON text"
            ) from None
    return fn.get("name"), args


def _with_object_arguments(message: dict[str, Any]) -> dict[str, Any]:
    if not message.get("tool_calls"):
        return message
    calls = []
    for call in message["tool_calls"]:
        name, args = _arguments(call)
        calls.append({**call, "function": {**call.get("function", {}), "name": name, "arguments": args}})
    return {**message, "tool_calls": calls, "content": message.get("content") or ""}


def _call_names(messages: list[dict[str, Any]]) -> dict[str, str]:
    """tool_call_id -> function name, from the assistant turns, to name each tool result."""
    names = {}
    for m in messages:
        for call in m.get("tool_calls") or []:
            names[call.get("id")] = _arguments(call)[0]
    return names


def _as_plain_turn(message: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    role, content = message.get("role"), message.get("content") or ""
    if role == "assistant" and message.get("tool_calls"):
        calls = [dict(zip(("name", "arguments"), _arguments(c), strict=True)) for c in message["tool_calls"]]
        written = "\n".join(json.dumps(c, ensure_ascii=False) for c in calls)
        return {"role": "assistant", "content": f"{content}\n{written}".strip()}
    if role == "tool":
        name = message.get("name") or names.get(message.get("tool_call_id"), "the tool")
        return {"role": "user", "content": RESULT_PREFIX.format(name=name) + content}
    return {"role": role, "content": content}
