"""Schemathesis over the served OpenAPI document: every operation, generated valid and invalid bodies, with all
of schemathesis' checks, the conformance ones included (issue 34 item 6): no 5xx (the probe of issue 16 found
500s for schema-valid seeds, temperatures and NaNs), every status, media type and header the server answers
is declared (405s carry Allow), bodies that break the schema are refused.

Two checks are sharpened. A schema-valid body may still be refused with a 400 for what no schema can say (the
context window counted in tokens, a grammar the engine cannot compile, an earlier call's arguments that are
not JSON), so instead of schemathesis' positive_data_acceptance (any 400 fails), ``validation_agrees`` fails
a 400 only when the route's own validation (its pydantic model) refuses a body the document allows. And the
negative generator mutates one member of a union: a chat message's ``role`` changed from "user" to
"assistant" is a valid assistant turn, which the server rightly answers 200; schemathesis' negative_data_rejection
called that AcceptedNegativeData (the flake of ``test_fuzz_server[negative]``). ``refuses_what_is_invalid``
demands a refusal only for a body the whole document refuses (checked with jsonschema_rs).

Bounded: a few dozen examples per operation against a tiny model with a small max_tokens, about a minute.
"""

from __future__ import annotations

import collections
import json

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402 - hypothesis comes with schemathesis
from pydantic import ValidationError  # noqa: E402
from schemathesis.checks import negative_data_rejection, positive_data_acceptance  # noqa: E402
from serve_utils import LiveServer  # noqa: E402

from llmkit import checkpoint  # noqa: E402
from llmkit.serve.app import ServeSettings, create_app  # noqa: E402
from llmkit.serve.openapi import request_bodies  # noqa: E402

EXAMPLES = 50  # per operation and mode: about 30 s in all on two busy cores


@pytest.fixture(scope="module")
def live(tiny_checkpoint):
    model = checkpoint.load(tiny_checkpoint("tiny-gpt-1m", window=64))
    settings = ServeSettings(name="tiny", max_batch=4, max_tokens=16, max_body=64 * 1024, host="127.0.0.1")
    live = LiveServer(create_app(model, settings))
    yield live
    live.close()


@pytest.fixture(scope="module")
def api_schema(live):
    return schemathesis.openapi.from_url(f"{live.url}/openapi.json")


def agreement_check(app):
    """``validation_agrees`` for ``app``'s routes (module docstring)."""
    bodies = request_bodies(app)

    def validation_agrees(ctx, response, case) -> None:
        schema = bodies.get(case.operation.path)
        if response.status_code != 400 or schema is None or not isinstance(case.body, dict):
            return
        try:
            schema.model_validate_json(json.dumps(case.body))
        except ValidationError as err:
            raise AssertionError(f"the document allows a body its validation refuses: {err}") from None

    return validation_agrees


def refusal_check(app, doc: dict):
    """``refuses_what_is_invalid`` for ``app``'s routes against the document ``doc`` (module docstring)."""
    import jsonschema_rs

    validators = {
        path: jsonschema_rs.validator_for({"$ref": f"#/components/schemas/{model.__name__}", **doc})
        for path, model in request_bodies(app).items()
    }

    def refuses_what_is_invalid(ctx, response, case) -> None:
        validator = validators.get(case.operation.path)
        if response.status_code >= 400 or validator is None:
            return
        try:
            body = json.loads(json.dumps(case.body))  # as sent
        except (TypeError, ValueError):
            return
        if not validator.is_valid(body):
            raise AssertionError(f"a body the document refuses was answered {response.status_code}")

    return refuses_what_is_invalid


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=lambda m: m.value)
def test_the_server_does_what_its_document_says(api_schema, live, mode):
    """Driven through hypothesis directly: schemathesis' pytest plugin does not load under pytest 9."""
    import httpx

    agrees = agreement_check(live.app)
    refuses = refusal_check(live.app, httpx.get(f"{live.url}/openapi.json").json())
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/chat/completions", "/v1/explain"}
    if mode is schemathesis.GenerationMode.NEGATIVE:  # routes without a body have nothing to break
        operations = [op for op in operations if op.method.upper() == "POST"]
    calls = []
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case) -> None:
            response = case.call(timeout=30)
            calls.append((case.operation.path, response.status_code))
            if mode is schemathesis.GenerationMode.POSITIVE:
                case.validate_response(response, excluded_checks=[positive_data_acceptance], additional_checks=[agrees])
            else:  # the default set, negative data rejection sharpened (module docstring)
                excluded = [positive_data_acceptance, negative_data_rejection]
                case.validate_response(response, excluded_checks=excluded, additional_checks=[refuses])

        run()
    statuses = [status for _, status in calls]
    print(mode.value, sorted(collections.Counter(calls).items()))  # shown with -s
    assert all(status < 500 for status in statuses)
    if mode is schemathesis.GenerationMode.POSITIVE:  # valid bodies do get generated (some 200s on each POST)
        for path in ("/v1/completions", "/v1/chat/completions", "/v1/explain"):
            assert any(p == path and status == 200 for p, status in calls), path


def test_the_document_and_the_server_agree_on_a_null_model(live):
    """The negative fuzz's flake (AcceptedNegativeData): the document said a generation body's model is one of the
    names, the server (as vLLM) takes null for the one model served, so a null the fuzzer sent as invalid was
    answered 200. Now the document allows null too."""
    import httpx
    import jsonschema_rs

    doc = httpx.get(f"{live.url}/openapi.json").json()
    for name in ("CompletionRequest", "ChatRequest"):
        validator = jsonschema_rs.validator_for({"$ref": f"#/components/schemas/{name}", **doc})
        body = {"model": None, "prompt": "x"} if name == "CompletionRequest" else {"model": None, "messages": [
            {"role": "user", "content": "x"}]}  # fmt: skip
        assert validator.is_valid(body), name
        assert not validator.is_valid({**body, "model": "other"})
    answer = httpx.post(f"{live.url}/v1/completions", json={"model": None, "prompt": "x", "max_tokens": 1})
    assert answer.status_code == 200


def test_the_document_declares_statuses_limits_and_allow(live):
    import httpx

    doc = httpx.get(f"{live.url}/openapi.json").json()
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert {"200", "400", "401", "403", "404", "413", "429", "500"} <= set(chat["responses"])
    assert "Retry-After" in chat["responses"]["429"]["headers"] and "422" not in chat["responses"]
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert "text/plain" in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    props = doc["components"]["schemas"]["CompletionRequest"]["properties"]
    assert {"type": "integer", "minimum": 0, "maximum": 16} in props["max_tokens"]["anyOf"]  # --max-tokens 16
    ids = next(b for b in props["prompt"]["anyOf"] if b.get("items", {}).get("type") == "integer")
    assert ids["items"]["maximum"] == 299  # the tiny vocabulary of 300
    wrong = httpx.put(f"{live.url}/v1/completions", json={})
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"


def test_a_keyed_server_declares_bearer_authentication(tiny_checkpoint):
    from fastapi.testclient import TestClient

    model = checkpoint.load(tiny_checkpoint("tiny-gpt-1m", window=64))
    doc = TestClient(create_app(model, ServeSettings(name="tiny", api_key="k"))).get("/openapi.json").json()
    assert doc["components"]["securitySchemes"] == {"apiKey": {"type": "http", "scheme": "bearer"}}
    assert doc["paths"]["/v1/completions"]["post"]["security"] == [{"apiKey": []}]
    assert doc["paths"]["/metrics"]["get"]["security"] == [{"apiKey": []}]
    assert "security" not in doc["paths"]["/health"]["get"]
