"""Tool calls (llmkit/tools.py) and their rendering (llmkit/chat/template.py): schemas from tools and
tool_choice, replies parsed into OpenAI tool_calls, the next turn rendered by a tool-aware template and
by the default rendering, and constrained decoding producing calls a parser accepts."""

from __future__ import annotations

import json
import re

import jsonschema_rs
import pytest

from llmkit import tools as T
from llmkit.chat.template import ChatTemplate
from llmkit.errors import LlmkitError

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 8}, "unit": {"enum": ["C", "F"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, ADD]
# a tool-aware template in the style of Qwen2.5's (tools listed in the system turn, calls in tags, results as user)
QWEN_LIKE = (
    "{%- if tools %}<|im_start|>system\nTools:{% for t in tools %}\n{{ t | tojson }}{% endfor %}<|im_end|>\n{% endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' and m.tool_calls %}<|im_start|>assistant"
    "{% for c in m.tool_calls %}\n<tool_call>\n"
    "{{ {'name': c.function.name, 'arguments': c.function.arguments} | tojson }}"
    "\n</tool_call>{% endfor %}<|im_end|>\n"
    "{%- elif m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}"
    "{%- endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PLAIN_CHATML = (  # SmolLM2's kind: no tools anywhere
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def ids():
    n = iter(range(100))
    return lambda: f"call_{next(n)}"


@pytest.mark.parametrize("choice, mode, name", [
    (None, "auto", None), ("auto", "auto", None), ("none", "none", None), ("required", "required", None),
    ({"type": "function", "function": {"name": "add"}}, "named", "add"),
])  # fmt: skip
def test_tool_choice(choice, mode, name):
    assert T.choose(T.check_tools(TOOLS), choice) == T.ToolChoice(mode, name)


def test_no_tools_means_none_and_required_needs_tools():
    assert T.choose([], None).mode == "none" and T.choose([], "auto").mode == "none"
    with pytest.raises(LlmkitError, match="without tools"):
        T.choose([], "required")


@pytest.mark.parametrize("tools, choice, message", [
    (TOOLS, {"type": "function", "function": {"name": "delete_all"}}, "unknown tool 'delete_all'"),
    (TOOLS, "sometimes", "is not understood"),
    ([{"type": "function", "function": {"name": "bad name"}}], None, "no valid name"),
    ([WEATHER, WEATHER], None, "two tools are named 'get_weather'"),
    ([{"type": "retrieval"}], None, "not a function tool"),
    ([{"type": "function", "function": {"name": "f", "parameters": []}}], None, "parameters must be"),
])  # fmt: skip
def test_bad_tools_and_choices_are_one_line_errors(tools, choice, message):
    with pytest.raises(LlmkitError) as err:
        T.choose(T.check_tools(tools), choice)
    assert message in str(err.value) and "\n" not in str(err.value)
    if "unknown tool" in message:
        assert "get_weather, add" in str(err.value)  # the hint names the tools there are


def test_call_schemas_accept_calls_of_the_chosen_tools_only():
    required = jsonschema_rs.validator_for(T.call_schema(TOOLS, T.ToolChoice("required")))
    named = jsonschema_rs.validator_for(T.call_schema(TOOLS, T.ToolChoice("named", "add")))
    parallel = jsonschema_rs.validator_for(T.call_schema(TOOLS, T.ToolChoice("required"), parallel=True))
    weather = {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}
    add = {"name": "add", "arguments": {"a": 1, "b": 2}}
    assert required.is_valid(weather) and required.is_valid(add)
    assert not required.is_valid({"name": "add", "arguments": {"a": "1", "b": 2}})
    assert not required.is_valid({"name": "nope", "arguments": {}})
    assert named.is_valid(add) and not named.is_valid(weather)
    assert parallel.is_valid([weather, add]) and not parallel.is_valid([])
    assert T.call_schema(TOOLS, T.ToolChoice("auto")) is None
    assert T.call_constraint(TOOLS, T.ToolChoice("none")) == {}
    assert "json_schema" in T.call_constraint(TOOLS, T.ToolChoice("required"))
    assert T.call_constraint(TOOLS, T.ToolChoice("auto"))["grammar"].startswith("start: call | text")


def test_parse_tool_calls_into_openai_objects():
    content, calls = T.parse_tool_calls('{"name": "add", "arguments": {"a": 1, "b": 2}}', TOOLS, ids())
    assert content is None
    assert calls == [{"id": "call_0", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]
    tagged = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}\n</tool_call>'
    assert T.parse_tool_calls(tagged, TOOLS, ids())[1][0]["function"]["name"] == "get_weather"
    two = json.dumps([{"name": "add", "arguments": {"a": 1, "b": 2}}, {"name": "add", "arguments": {"a": 3, "b": 4}}])
    assert [c["id"] for c in T.parse_tool_calls(two, TOOLS, ids())[1]] == ["call_0", "call_1"]
    for text in ("The answer is 3.", '{"name": "unknown", "arguments": {}}', '{"name": "add"}', "{broken"):
        assert T.parse_tool_calls(text, TOOLS) == (text, [])
    _, [call] = T.parse_tool_calls('{"name": "add", "arguments": {}}', TOOLS)
    assert re.fullmatch(r"call_[0-9a-f]{24}", call["id"])


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_9", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "unit": "C"}'}}]},
    {"role": "tool", "tool_call_id": "call_9", "content": '{"temp": 4}'},
]  # fmt: skip


def test_tool_aware_template_gets_tools_calls_and_results():
    prompt = ChatTemplate(QWEN_LIKE).render(CONVERSATION, tools=TOOLS)
    assert json.dumps(WEATHER) in prompt  # the tools, through transformers-style tojson (no HTML escaping)
    # the API's arguments (JSON text) reach the template as an object, as transformers expects
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}\n</tool_call>' in prompt
    assert '<tool_response>\n{"temp": 4}\n</tool_response>' in prompt and prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("source", [PLAIN_CHATML, None])
def test_default_rendering_for_templates_without_tools(source):
    template = ChatTemplate(source)
    prompt = template.render(CONVERSATION, tools=TOOLS)
    system = "Be brief.\n\n" + T.tools_prompt(TOOLS)
    call = '{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}'
    if source is None:
        assert prompt == (f"System: {system}\nUser: Weather in Oslo?\nAssistant: {call}\n"
                          'User: Result of get_weather: {"temp": 4}\nAssistant:')  # fmt: skip
    else:
        assert f"<|im_start|>system\n{system}<|im_end|>" in prompt
        assert f"<|im_start|>assistant\n{call}<|im_end|>" in prompt
        assert '<|im_start|>user\nResult of get_weather: {"temp": 4}<|im_end|>' in prompt
    # without a system message the tools become one; without tools nothing is added
    assert template.render(CONVERSATION[1:2], tools=[ADD]).count("Functions:\n") == 1
    assert "Functions" not in template.render(CONVERSATION[1:2])


def test_constrained_decoding_produces_calls_the_parser_accepts(tiny_checkpoint):
    from llmkit import checkpoint
    from llmkit.inference import generate

    model = checkpoint.load(tiny_checkpoint("tiny-gpt-1m", window=256))
    prompt = ChatTemplate(None).render(CONVERSATION[1:2], tools=TOOLS)[-80:]  # its end: the window is 256
    for choice in ("required", {"type": "function", "function": {"name": "add"}}):
        chosen = T.choose(TOOLS, choice)
        kw = T.call_constraint(TOOLS, chosen)
        out = generate(model, [prompt] * 6, max_new_tokens=120, do_sample=True, seed=2, **kw)
        for c in out:
            content, calls = T.parse_tool_calls(c.text, TOOLS)
            assert content is None and len(calls) == 1, c.text
            assert chosen.mode != "named" or calls[0]["function"]["name"] == "add"
    # auto: a call when the reply starts with "{", else free text; either way the parser's verdict is clear
    out = generate(model, [prompt] * 6, max_new_tokens=60, do_sample=True, seed=4,
                   **T.call_constraint(TOOLS, T.ToolChoice("auto")))  # fmt: skip
    for c in out:
        content, calls = T.parse_tool_calls(c.text, TOOLS)
        assert (calls and content is None) or (not c.text.lstrip().startswith("{") and content == c.text)
