"""Structured output and tool calls in `llmkit serve`: the batcher's per-row constraints, ``response_format``,
vLLM's ``guided_regex``, and ``tools`` through the official openai client against a live server on a
random-weight model (so every output below is the grammar's doing)."""

from __future__ import annotations

import json
import re
import time

import jsonschema_rs
import pytest
from serve_utils import LiveServer

from llmkit import checkpoint
from llmkit.chat.template import ChatTemplate
from llmkit.inference import generate
from llmkit.inference.batcher import Batcher, Request
from llmkit.inference.constrained import Grammar, RowGrammars
from llmkit.serve.app import ServeSettings, create_app

NAME = "tiny"
ENUMS = {
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "size": {"type": "string", "enum": ["S", "M", "L"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
    },
    "required": ["color", "size", "count"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
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
            "properties": {"a": {"type": "integer", "maximum": 999}, "b": {"type": "integer", "maximum": 999}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, ADD]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return checkpoint.load(tiny_checkpoint("tiny-gpt-1m", window=1024))


@pytest.fixture(scope="module")
def server(model):
    live = LiveServer(create_app(model, ServeSettings(name=NAME, max_batch=4)))
    yield live
    live.close()


@pytest.fixture(scope="module")
def api(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def arguments_schema(name: str) -> dict:
    return next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == name)


# ---- the batcher ------------------------------------------------------------------------------
def test_batched_rows_with_and_without_constraints_decode_as_generate_does(model):
    """Constrained and free rows share steps; each equals ``generate`` of its prompt alone (greedy)."""
    eos = model.generation_config.eos_token_id
    schema_rows = RowGrammars(model, [Grammar.json_schema(ENUMS)], eos)
    regex_rows = RowGrammars(model, [Grammar.regex(r"(ab|cd){2,4}-[0-9]{2}")], eos)
    jobs = [("The cat", schema_rows), ("A banana", None), ("def f(x):", regex_rows), ("The dog", schema_rows)]
    batcher = Batcher(model, max_batch=4).start()
    texts, reasons, done = [""] * len(jobs), [None] * len(jobs), []
    try:
        cfg = model.generation_config.replace(max_new_tokens=60, do_sample=False)
        for i, (prompt, grammars) in enumerate(jobs):

            def on_token(ev, i=i) -> None:
                texts[i] += ev.text
                if ev.finish_reason:
                    reasons[i] = ev.finish_reason
                    done.append(i)

            constraint = grammars.start() if grammars is not None else None
            batcher.submit(Request(model.tokenizer.encode(prompt), cfg, on_token, constraint=constraint))
        deadline = time.monotonic() + 60
        while len(done) < len(jobs):
            assert time.monotonic() < deadline, "the batch did not finish"
            time.sleep(0.02)
    finally:
        batcher.close()
    assert max(batcher.step_sizes) > 1  # rows really shared steps
    kinds = [{"json_schema": ENUMS}, {}, {"regex": r"(ab|cd){2,4}-[0-9]{2}"}, {"json_schema": ENUMS}]
    for (prompt, _), kw, text in zip(jobs, kinds, texts, strict=True):
        assert text == generate(model, prompt, max_new_tokens=60, **kw)[0].text
    jsonschema_rs.validator_for(ENUMS).validate(json.loads(texts[0]))
    jsonschema_rs.validator_for(ENUMS).validate(json.loads(texts[3]))
    assert re.fullmatch(r"(ab|cd){2,4}-[0-9]{2}", texts[2])
    assert reasons[0] == reasons[2] == reasons[3] == "stop"  # the grammar ended them, not the length


# ---- response_format --------------------------------------------------------------------------
def test_response_format_json_schema_validates_streamed_and_not(api, model):
    fmt = {"type": "json_schema", "json_schema": {"name": "item", "schema": ENUMS, "strict": True}}
    validator = jsonschema_rs.validator_for(ENUMS)
    for seed in range(3):
        out = api.chat.completions.create(
            model=NAME, messages=ASK, response_format=fmt, max_tokens=80, temperature=1.0, seed=seed
        )
        text = out.choices[0].message.content
        validator.validate(json.loads(text))
        assert out.choices[0].finish_reason == "stop"
        chunks = api.chat.completions.create(
            model=NAME, messages=ASK, response_format=fmt, max_tokens=80, temperature=1.0, seed=seed, stream=True
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == text  # the same seed draws the same tokens
    prompt = ChatTemplate().render(ASK)
    greedy = api.chat.completions.create(model=NAME, messages=ASK, response_format=fmt, max_tokens=80, temperature=0)
    assert greedy.choices[0].message.content == generate(model, prompt, max_new_tokens=80, json_schema=ENUMS)[0].text


def test_json_object_mode_and_guided_regex_on_completions(api):
    out = api.chat.completions.create(
        model=NAME, messages=ASK, response_format={"type": "json_object"}, max_tokens=120, temperature=0
    )
    if out.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(out.choices[0].message.content), dict)
    else:  # cut by max_tokens: still a prefix of an object
        assert out.choices[0].message.content.startswith("{")
    done = api.completions.create(
        model=NAME,
        prompt="Code:",
        max_tokens=30,
        temperature=0.8,
        seed=1,
        extra_body={"guided_regex": r"[A-F]{3}-\d\d"},
    )
    assert re.fullmatch(r"[A-F]{3}-\d\d", done.choices[0].text)
    fmt = {"type": "json_schema", "json_schema": {"name": "item", "schema": ENUMS}}
    done = api.completions.create(model=NAME, prompt="Item:", max_tokens=80, temperature=0,
                                 extra_body={"response_format": fmt})  # fmt: skip
    jsonschema_rs.validator_for(ENUMS).validate(json.loads(done.choices[0].text))


# ---- tools ------------------------------------------------------------------------------------
def test_tool_call_round_trip_not_streamed(api):
    first = api.chat.completions.create(
        model=NAME, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=120, temperature=0.7, seed=3
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name in ("get_weather", "add")
    jsonschema_rs.validator_for(arguments_schema(call.function.name)).validate(json.loads(call.function.arguments))
    history = [*ASK, choice.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'}]  # fmt: skip
    answer = api.chat.completions.create(
        model=NAME, messages=history, tools=TOOLS, tool_choice="none", max_tokens=12, temperature=0
    )
    assert answer.choices[0].message.tool_calls is None
    assert answer.choices[0].message.content and answer.choices[0].finish_reason in ("stop", "length")

    named = api.chat.completions.create(
        model=NAME, messages=history, tools=TOOLS, max_tokens=60, temperature=0,
        tool_choice={"type": "function", "function": {"name": "add"}},
    )  # fmt: skip
    (call,) = named.choices[0].message.tool_calls
    assert call.function.name == "add"
    jsonschema_rs.validator_for(ADD["function"]["parameters"]).validate(json.loads(call.function.arguments))


def test_tool_call_streamed_as_openai_streams_it(api):
    kw = dict(model=NAME, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=120, temperature=0.7, seed=5)
    whole = api.chat.completions.create(**kw).choices[0].message.tool_calls[0]
    deltas, reasons = [], []
    for chunk in api.chat.completions.create(**kw, stream=True):
        for choice in chunk.choices:
            deltas.extend(choice.delta.tool_calls or [])
            reasons.append(choice.finish_reason)
    head, *rest = deltas
    assert head.index == 0 and head.id.startswith("call_") and head.type == "function"
    assert head.function.name == whole.function.name and head.function.arguments == ""
    assert all(d.index == 0 and d.id is None for d in rest)
    assert "".join(d.function.arguments for d in rest) == whole.function.arguments
    assert reasons[-1] == "tool_calls"


def test_auto_tool_choice_is_a_call_or_text_never_a_broken_call(api):
    for seed in range(4):
        choice = api.chat.completions.create(
            model=NAME, messages=ASK, tools=TOOLS, max_tokens=120, temperature=1.0, seed=seed
        ).choices[0]
        if choice.finish_reason == "tool_calls":
            call = choice.message.tool_calls[0]
            jsonschema_rs.validator_for(arguments_schema(call.function.name)).validate(
                json.loads(call.function.arguments)
            )
        else:
            assert not choice.message.tool_calls and not choice.message.content.startswith("{")


# ---- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}},
         "JSON schema cannot be compiled"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "launch"}}},
         "unknown tool 'launch'"),
        ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "given together"),
        ({"extra_body": {"guided_regex": "(unclosed"}}, "regex cannot be compiled"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "should match pattern"),
    ],
)  # fmt: skip
def test_bad_constraints_are_one_line_400s(api, extra, message):
    import openai

    with pytest.raises(openai.BadRequestError) as err:
        api.chat.completions.create(model=NAME, messages=ASK, max_tokens=5, **extra)
    text = err.value.body["message"]
    assert err.value.status_code == 400 and message in text and "\n" not in text


def test_an_earlier_call_whose_arguments_are_not_json_is_a_400(server):
    import httpx

    bad = [*ASK, {"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "add", "arguments": ""}}]}]
    for path, body in (("/tokenize", {"messages": bad}), ("/v1/chat/completions", {"model": NAME, "messages": bad})):
        response = httpx.post(f"{server.url}{path}", json=body, timeout=30)
        assert response.status_code == 400 and "arguments are not JSON" in response.json()["error"]["message"]
