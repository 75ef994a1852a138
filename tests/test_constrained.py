"""Constrained decoding (llmkit/inference/constrained.py): every sample parses and validates, the batched
engine picks what a one-row, cache-free reference loop picks, and bad grammars are one-line errors.

The model is the suite's random-weight tiny decoder with its byte-level BPE (conftest.py), so nothing but
the grammar makes its output JSON. Strings and arrays in the schemas are bounded (maxLength, maxItems):
a random model has no reason to close a string, and a row cut by max_new_tokens would not parse.
"""

from __future__ import annotations

import json

import jsonschema_rs
import numpy as np
import pytest
import torch

from llmkit import checkpoint
from llmkit.errors import LlmkitError
from llmkit.inference import generate, stream
from llmkit.inference.constrained import JSON_OPTIONS, Grammar, ll_tokenizer

NESTED = {
    "type": "object",
    "properties": {
        "user": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 6},
                "address": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string", "maxLength": 5},
                        "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                    },
                    "required": ["city", "zip"],
                    "additionalProperties": False,
                },
            },
            "required": ["name", "address"],
            "additionalProperties": False,
        }
    },
    "required": ["user"],
    "additionalProperties": False,
}
ENUMS = {
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "size": {"type": "string", "enum": ["S", "M", "L", "XL"]},
        "fragile": {"type": "boolean"},
        "note": {"enum": [None, 1, "n/a"]},
    },
    "required": ["color", "size", "fragile", "note"],
    "additionalProperties": False,
}
ARRAYS = {
    "type": "object",
    "properties": {
        "counts": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99}, "minItems": 1,
                   "maxItems": 4},
        "pairs": {"type": "array", "maxItems": 2,
                  "items": {"type": "array", "prefixItems": [{"type": "boolean"}, {"enum": ["x", "y"]}],
                            "items": False, "minItems": 2}},
    },
    "required": ["counts", "pairs"],
    "additionalProperties": False,
}  # fmt: skip
NUMBERS = {
    "type": "object",
    "properties": {
        "x": {"type": "number", "minimum": -10, "maximum": 10},
        "n": {"type": "integer", "minimum": 100, "maximum": 999},
        "p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "big": {"type": "integer", "minimum": -(2**40)},
    },
    "required": ["x", "n", "p", "big"],
    "additionalProperties": False,
}
TOOL_CALL = {  # one call of one of two functions, with each function's own arguments
    "anyOf": [
        {
            "type": "object",
            "properties": {
                "name": {"const": "get_weather"},
                "arguments": {
                    "type": "object",
                    "properties": {"city": {"type": "string", "maxLength": 8}, "unit": {"enum": ["C", "F"]}},
                    "required": ["city", "unit"],
                    "additionalProperties": False,
                },
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {
                "name": {"const": "add"},
                "arguments": {
                    "type": "object",
                    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                    "required": ["a", "b"],
                    "additionalProperties": False,
                },
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        },
    ]
}
SCHEMAS = {"nested": NESTED, "enums": ENUMS, "arrays": ARRAYS, "numbers": NUMBERS, "tool_call": TOOL_CALL}
PROMPTS = ["The cat", "Emoji: 😀 and", "def f(x):", "A"]


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return checkpoint.load(tiny_checkpoint("tiny-gpt-1m", window=256))


@pytest.mark.parametrize("name", SCHEMAS)
def test_forty_samples_per_schema_all_parse_and_validate(model, name):
    """5 schemas x 40 samples = the 200 of the issue: 2 seeds x 4 prompts x 5 sequences each, sampled."""
    schema = SCHEMAS[name]
    validator = jsonschema_rs.validator_for(schema)
    texts = []
    for seed in (0, 1):
        out = generate(model, PROMPTS, json_schema=schema, max_new_tokens=180, do_sample=True, seed=seed,
                       num_return_sequences=5)  # fmt: skip
        assert {c.finish_reason for c in out} == {"stop"}, [(c.finish_reason, c.text) for c in out]
        texts += [c.text for c in out]
    assert len(texts) == 40
    for text in texts:
        validator.validate(json.loads(text))
    assert len(set(texts)) > 20, texts  # sampling varies the values: the grammar is not forcing one answer
    if name == "tool_call":
        assert {json.loads(t)["name"] for t in texts} == {"get_weather", "add"}


def reference(model, prompt: str, grammar: Grammar, new: int) -> list[int]:
    """One row, no KV cache, no engine: full forward -> mask from llguidance's byte bitmask -> argmax -> consume."""
    from llguidance import LLMatcher

    eos = model.generation_config.eos_token_id
    vocab = model.config.vocab_size
    matcher = LLMatcher(ll_tokenizer(model.tokenizer, vocab, eos), grammar.compiled(), log_level=0)
    ids, out = model.tokenizer.encode(prompt), []
    for _ in range(new):
        with torch.no_grad():
            logits = model(torch.tensor([ids + out])).logits[0, -1].float()
        bits = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")[:vocab]
        logits[torch.from_numpy(bits == 0)] = float("-inf")
        token = int(logits.argmax())
        out.append(token)
        assert matcher.consume_token(token)
        if token in eos or matcher.is_stopped():
            break
    return out


@pytest.mark.parametrize("grammar", [Grammar.json_schema(NESTED), Grammar.regex(r"(ab|cd)+[0-9]{2,3}-(yes|no)")])
def test_batched_greedy_picks_what_the_reference_loop_picks(model, grammar):
    # left padding, a shared KV cache and rows ending at different steps must not change any row's choice
    out = generate(model, PROMPTS, grammar=grammar, max_new_tokens=120)
    for prompt, completion in zip(PROMPTS, out, strict=True):
        assert completion.token_ids == reference(model, prompt, grammar, 120), prompt
        assert completion.finish_reason in ("stop", "eos")
    if grammar.kind == "regex":
        import re

        assert all(re.fullmatch(r"(ab|cd)+[0-9]{2,3}-(yes|no)", c.text) for c in out), [c.text for c in out]


def test_json_is_compact_and_the_stream_is_the_text(model):
    schema = {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer"}, "maxItems": 3}},
              "required": ["a"], "additionalProperties": False}  # fmt: skip
    s = stream(model, "x", json_schema=json.dumps(schema), max_new_tokens=80, do_sample=True, seed=3)
    pieces = list(s)
    text = "".join(p.text for p in pieces)
    assert pieces[-1].finish_reason == "stop"
    assert text == json.dumps(json.loads(text))  # the separators of json.dumps, no other whitespace
    assert JSON_OPTIONS["whitespace_flexible"] is False


def test_grammar_per_prompt_and_free_rows_decode_as_without_one(model):
    free = generate(model, ["The cat", "A"], max_new_tokens=12)
    out = generate(model, ["The cat", "A"], grammar=[Grammar.regex("[0-9]{4}"), None], max_new_tokens=12)
    assert len(out[0].text) == 4 and out[0].text.isdigit() and out[0].finish_reason == "stop"
    assert out[1].token_ids == free[1].token_ids and out[1].text == free[1].text


def test_sampling_with_a_seed_repeats_and_max_new_tokens_can_cut_it_short(model):
    kw = {"json_schema": ENUMS, "do_sample": True, "seed": 11, "top_k": 20, "temperature": 0.8}
    first = generate(model, "The cat", max_new_tokens=100, **kw)[0]
    assert first.token_ids == generate(model, "The cat", max_new_tokens=100, **kw)[0].token_ids
    cut = generate(model, "The cat", max_new_tokens=3, **kw)[0]
    assert cut.finish_reason == "length" and cut.token_ids == first.token_ids[:3]


@pytest.mark.parametrize("kw, message", [
    ({"json_schema": {"type": "strin"}}, "JSON schema cannot be compiled: Invalid type: strin"),
    ({"json_schema": {"$ref": "#/definitions/missing"}}, "JSON schema cannot be compiled"),
    ({"json_schema": "{not json"}, "JSON schema is not JSON"),
    ({"json_schema": [1, 2]}, "a JSON schema is an object, not list"),
    ({"regex": "a("}, "regex cannot be compiled"),
    ({"grammar": "start: foo\n"}, "Lark grammar cannot be compiled"),
    ({"json_schema": {}, "regex": "a"}, "json_schema and regex given together"),
    ({"regex": "a", "num_beams": 2}, "not beam search"),
    ({"grammar": [Grammar.regex("a")]}, "1 grammars for 2 prompts"),
])  # fmt: skip
def test_bad_grammars_are_one_line_errors(model, kw, message):
    with pytest.raises(LlmkitError) as err:
        prompts = ["a", "b"] if isinstance(kw.get("grammar"), list) else "a"
        stream(model, prompts, max_new_tokens=5, **kw)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_cli_json_schema_regex_and_errors(tiny_checkpoint, tmp_path, capsys):
    from llmkit.cli import main

    model_dir = str(tiny_checkpoint("tiny-gpt-1m", window=256))
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(ENUMS))
    for given in (str(schema_file), json.dumps(ENUMS)):
        assert main(["generate", model_dir, "The cat", "--json-schema", given, "--max-new-tokens", "80"]) == 0
        jsonschema_rs.validate(ENUMS, json.loads(capsys.readouterr().out))
    assert main(["generate", model_dir, "The cat", "--regex", "[a-c]{3}!", "--stream"]) == 0
    out = capsys.readouterr().out
    assert len(out) == 5 and out[3:] == "!\n" and set(out[:3]) <= set("abc")
    grammar = tmp_path / "yes.lark"
    grammar.write_text('start: "yes" | "no"\n')
    assert main(["generate", model_dir, "The cat", "--grammar", str(grammar), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["completion"] in ("yes", "no")
    for args, message in [
        (["--json-schema", '{"type": "strin"}'], "cannot be compiled"),
        (["--json-schema", str(tmp_path / "missing.json")], "file not found"),
        (["--regex", "a", "--json-schema", "{}"], "alternatives"),
        (["--regex", "a", "--explain"], "--explain shows the model's own choices"),
    ]:
        assert main(["generate", model_dir, "The cat", *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
