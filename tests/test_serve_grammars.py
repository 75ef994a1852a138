"""Grammars in `llmkit serve` (issue 34 items 1 and 2): every grammar checked before admission (a schema no finite
value satisfies, a regex that matches nothing: 400s naming the field, never the 500 they were), a grammar that fails
while decoding ends its request with a 400 / an error event and leaves other requests alone, and JSON schemas
closed (no invented keys) with bounded numbers (no endless digits)."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from serve_utils import LiveServer

from llmkit import checkpoint
from llmkit.closed_schema import MAX_MAGNITUDE, bound_numbers, close, never_matches, prepare
from llmkit.inference.constrained import RowGrammars
from llmkit.serve import structured
from llmkit.serve.app import ServeSettings, create_app
from llmkit.serve.schemas import ChatRequest

# the issue's 500: an object that requires a non-empty list of itself (and itself): no finite value
ENDLESS = {
    "type": "object",
    "properties": {"kids": {"type": "array", "minItems": 1, "items": {"$ref": "#"}}, "me": {"$ref": "#"}},
    "required": ["kids", "me"],
}
ASK = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return checkpoint.load(tiny_checkpoint("tiny-gpt-1m", window=256))


@pytest.fixture(scope="module")
def server(model):
    live = LiveServer(create_app(model, ServeSettings(name="tiny", max_batch=4)))
    yield live
    live.close()


def post(server, path: str, body: dict, **kw) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=60, **kw)


# ---- refused before admission -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        ("/v1/completions", {"guided_json": ENDLESS}, "guided_json"),
        ("/v1/chat/completions",
         {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": ENDLESS}}},
         "response_format"),
        ("/v1/chat/completions",
         {"tools": [{"type": "function", "function": {"name": "ok", "parameters": {"type": "object"}}},
                    {"type": "function", "function": {"name": "loop", "parameters": ENDLESS}}],
          "tool_choice": "required"}, "tools[1].function.parameters"),
        ("/v1/chat/completions",  # "auto": the Lark grammar around the call schema
         {"tools": [{"type": "function", "function": {"name": "loop", "parameters": ENDLESS}}]},
         "tools[0].function.parameters"),
        ("/v1/completions", {"guided_regex": "[a&&b]"}, "guided_regex"),  # an empty class: the 500 of the issue
        ("/v1/completions", {"guided_regex": "ab[^\\s\\S]"}, "guided_regex"),  # dead after a prefix
    ],
)  # fmt: skip
def test_grammars_that_match_nothing_are_400s_naming_the_field(server, path, extra, param):
    body = {"prompt": "Hi"} if path == "/v1/completions" else {"messages": ASK}
    response = post(server, path, {**body, "max_tokens": 20, **extra})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and "\n" not in error["message"], error
    assert "matches no" in error["message"] or "never ends" in error["message"], error


def test_never_matches_finds_endless_refs_and_passes_finite_ones():
    assert "'#' never ends" in never_matches(ENDLESS)
    defs = {"$defs": {"n": {"type": "object", "properties": {"k": {"type": "array", "minItems": 1,
            "items": {"$ref": "#/$defs/n"}}}, "required": ["k"]}}, "$ref": "#/$defs/n"}  # fmt: skip
    assert "'#/$defs/n' never ends" in never_matches(defs)
    forbidden = {"type": "object", "properties": {}, "required": ["a"], "additionalProperties": False}
    assert "no value" in never_matches(forbidden)
    # finite trees: an optional child, an empty list, a branch with a way out
    assert never_matches({"type": "object", "properties": {"kid": {"$ref": "#"}}}) is None
    assert never_matches({**ENDLESS, "required": ["kids"], "properties": {"kids": {"type": "array",
                          "items": {"$ref": "#"}}}}) is None  # fmt: skip
    assert (
        never_matches({"anyOf": [{"type": "null"}, {"type": "array", "minItems": 1, "items": {"$ref": "#"}}]}) is None
    )


# ---- a grammar that fails after admission -----------------------------------------------------
@pytest.fixture
def unchecked(monkeypatch):
    """Admit ENDLESS, as if the check before admission could not see its problem: the engine then fails after
    the first token ("Too many items"), the way an engine limit shows up while decoding."""
    monkeypatch.setattr(structured, "never_matches", lambda schema: None)


def test_a_grammar_failing_while_decoding_is_a_400_and_leaves_other_requests_alone(server, unchecked):
    answers = {}

    def plain() -> None:
        answers["plain"] = post(server, "/v1/completions", {"prompt": "The cat", "max_tokens": 30, "temperature": 0})

    others = [threading.Thread(target=plain) for _ in range(1)]
    for t in others:
        t.start()
    failed = post(server, "/v1/completions", {"prompt": "Hi", "max_tokens": 30, "guided_json": ENDLESS})
    for t in others:
        t.join()
    assert failed.status_code == 400, failed.text
    error = failed.json()["error"]
    assert error["code"] == "grammar_failed" and error["param"] == "guided_json", error
    assert "Too many items" in error["message"] and "\n" not in error["message"] and "<state>" not in error["message"]
    assert answers["plain"].status_code == 200 and answers["plain"].json()["choices"][0]["finish_reason"] == "length"


def test_a_grammar_failing_in_a_stream_ends_it_with_an_error_event(server, unchecked):
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": ENDLESS}}
    body = {"messages": ASK, "max_tokens": 30, "stream": True, "response_format": fmt}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "grammar_failed" and error["param"] == "response_format", error
    assert error["type"] == "invalid_request_error"  # the request's grammar, not a failure of ours
    assert post(server, "/v1/completions", {"prompt": "Hi", "max_tokens": 3}).status_code == 200  # still serving


# ---- closed objects, bounded numbers ------------------------------------------------------------
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
           "required": ["city"]}  # fmt: skip


def test_objects_are_closed_unless_they_say_otherwise():
    closed = close({"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {}}}},
                    "$defs": {"d": {"properties": {"x": {}}}}})  # fmt: skip
    assert closed["additionalProperties"] is False and closed["properties"]["a"]["additionalProperties"] is False
    assert closed["$defs"]["d"]["additionalProperties"] is False
    said = {"type": "object", "properties": {"a": {}}, "additionalProperties": {"type": "integer"}}
    assert close(said) == said
    assert close({"type": "object", "properties": {"a": {}}, "additionalProperties": True})["additionalProperties"]
    # keys defined beside properties (allOf, anyOf, $ref...) would be forbidden by closing: left open
    mixed = {"type": "object", "properties": {"a": {}}, "allOf": [{"properties": {"b": {}}}]}
    assert "additionalProperties" not in close(mixed) and "additionalProperties" not in close(mixed)["allOf"][0]
    assert close({"type": "object"}) == {"type": "object"}  # json_object mode: any object


def test_numbers_are_bounded_in_digits():
    properties = {
        "x": {"type": "number"}, "n": {"type": ["integer", "null"]}, "low": {"type": "number", "minimum": 2e20},
        "step": {"type": "number", "multipleOf": 0.25},
    }  # fmt: skip
    out = bound_numbers({"type": "object", "properties": properties})
    x, n, low, step = (out["properties"][k] for k in ("x", "n", "low", "step"))
    assert (x["minimum"], x["maximum"], x["multipleOf"]) == (-MAX_MAGNITUDE, MAX_MAGNITUDE, 1e-6)
    assert (n["minimum"], n["maximum"]) == (-MAX_MAGNITUDE, MAX_MAGNITUDE) and "multipleOf" not in n
    assert low["minimum"] == 2e20 and low["maximum"] > 2e20  # the schema's own bound kept, the range not empty
    assert step["multipleOf"] == 0.25


def accepts(model, field_grammar, text: str) -> bool:
    """Whether the compiled grammar admits ``text`` as a whole reply."""
    rows = RowGrammars(model, [field_grammar], model.generation_config.eos_token_id)
    matcher = rows.start().matchers[0]
    return matcher.consume_tokens(model.tokenizer.encode(text)) and matcher.is_accepting()


@pytest.mark.parametrize(
    ("text", "admitted"),
    [
        ('{"city": "Paris"}', True),
        ('{"city": "Paris", "days": 3}', True),
        ('{"city": "Paris", "properties": {}}', False),  # the invented key of the issue
        ('{"city": "Paris", "days": 1234567890123456789}', False),  # digits until max_tokens
    ],
)
def test_response_format_and_tools_are_closed_and_bounded(model, text, admitted):
    fmt = {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}}
    body = ChatRequest.model_validate({"messages": ASK, "response_format": fmt})
    grammar, field = structured.request_grammar(body)
    assert field == "response_format" and accepts(model, grammar, text) is admitted
    tool = {"type": "function", "function": {"name": "weather", "parameters": WEATHER}}
    setup = structured.tool_setup([tool], "required", False)
    grammar, _ = structured.request_grammar(body.model_copy(update={"response_format": None}), setup)
    assert accepts(model, grammar, f'{{"name": "weather", "arguments": {text}}}') is admitted
    assert setup.tools[0]["function"]["parameters"] == WEATHER  # the prompt shows the tool as given
    assert prepare(WEATHER)["additionalProperties"] is False and "additionalProperties" not in WEATHER
    fraction = {"type": "object", "properties": {"x": {"type": "number"}}}
    grammar, _ = structured.request_grammar(ChatRequest.model_validate({"messages": ASK, "guided_json": fraction}))
    assert accepts(model, grammar, '{"x": 1.25}') and not accepts(model, grammar, '{"x": 1.1234567}')
