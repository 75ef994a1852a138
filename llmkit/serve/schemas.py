"""Request bodies of the OpenAI-compatible API, validated by pydantic, and the OpenAI error shape.

Only what the server can honour is accepted: unknown fields are an error (``extra="forbid"``), so a
request cannot smuggle in a file path or a checkpoint to load, and a field the server would ignore
is never silently dropped. Accepted beyond the basics, because real clients send them: OpenAI's
``max_completion_tokens`` (an alias of ``max_tokens``), ``presence_penalty``, ``frequency_penalty``,
``logit_bias``, ``stream_options``, ``user``; vLLM's ``top_k`` (-1 or 0: off), ``min_p`` and
``repetition_penalty``; a completion ``prompt`` as a string, strings, token ids or lists of them.
The number of stop strings is the server's setting (``ServeSettings.max_stop``), checked in app.py.
Ranges follow OpenAI's where it has them; ``max_tokens`` is also capped by the server's own limit
and the context window (app.py).
Integers are JSON integers or integral numbers (``5.0``, as JavaScript clients send them), never
strings or booleans; seeds fit 64 bits; a temperature is 0 (greedy) or at least
``MIN_TEMPERATURE`` (a tinier one overflowed the scores to NaN).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictFloat,
    StrictStr,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from llmkit.inference.sampling import MIN_TEMPERATURE

MAX_STOP = 64  # the server's default limit on stop strings (OpenAI allows 4, vLLM has none; lm-eval sends 5+)
MAX_N = 8  # choices per request
MAX_LOGPROBS = 5  # alternatives per token (OpenAI's legacy completions limit)
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 64 bits


def _integral(value: object) -> object:
    """5.0 -> 5: JSON has one number type and JavaScript sends whole floats; 5.5, "5" and true stay errors."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be an integer")
    return value


def Int(**bounds):  # noqa: N802 - used as a type
    """An integer (or a float with no fraction) within ``bounds`` (ge/le). The bounds come before the
    converter so they reach the JSON schema as minimum/maximum, which the OpenAPI document needs."""
    return Annotated[int, Field(**bounds), BeforeValidator(_integral)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: StrictBool = False  # a last chunk with the usage and no choices


class JsonSchemaFormat(BaseModel):
    """OpenAI's ``response_format.json_schema``: a named schema (``strict`` is accepted; the output always follows
    the schema here, strict or not)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: StrictStr
    description: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")  # `schema` would shadow BaseModel's method
    strict: StrictBool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's ``response_format``: free text, any JSON object, or JSON following a schema."""

    # the document says what _schema_given checks (the OpenAPI document's constraints are the server's)
    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": [
        {"properties": {"type": {"enum": ["text", "json_object"]}}},
        {"required": ["json_schema"], "properties": {"json_schema": {"type": "object"}}},
    ]})  # fmt: skip

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError('type "json_schema" needs a json_schema object {"name", "schema"}')
        return self


Stop = Annotated[StrictStr, Field(min_length=1)]  # a stop string: never empty
NON_EMPTY = {"type": "string", "minLength": 1}
STOP_SCHEMA = {"anyOf": [NON_EMPTY, {"type": "array", "items": NON_EMPTY}, {"type": "null"}]}


class Sampling(BaseModel):
    """Fields shared by completions and chat; each maps onto GenerationConfig (app.generation_config)."""

    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = None  # optional, as in vLLM: a request without it goes to the one model served
    max_tokens: Int(ge=1) | None = None
    max_completion_tokens: Int(ge=1) | None = None  # OpenAI's newer name for max_tokens (LangChain sends it)
    # 0: greedy; strict: "0.5" is a type error; (0, MIN_TEMPERATURE) refused (_temperature), as the schema says
    temperature: StrictFloat = Field(
        1.0, ge=0, le=2, json_schema_extra={"anyOf": [{"const": 0}, {"minimum": MIN_TEMPERATURE}]}
    )
    top_p: StrictFloat = Field(1.0, gt=0, le=1)
    top_k: Int(ge=-1) = 0  # vLLM's extension; 0 or -1 (vLLM's old default) = off
    min_p: StrictFloat = Field(0.0, ge=0, le=1)  # vLLM's extension; 0 = off
    # vLLM's extension (CTRL's); 1 = off. At least 0.01: scores divided by a tinier one overflow to inf
    repetition_penalty: StrictFloat = Field(1.0, ge=0.01, le=10)
    presence_penalty: StrictFloat = Field(0.0, ge=-2, le=2)  # OpenAI's additive penalties; 0 = off
    frequency_penalty: StrictFloat = Field(0.0, ge=-2, le=2)
    logit_bias: Annotated[  # {"token id": bias in [-100, 100]}
        dict[StrictStr, Annotated[StrictFloat, Field(ge=-100, le=100)]] | None,
        Field(json_schema_extra={"propertyNames": {"pattern": "^[0-9]+$"}}),
    ] = None
    n: Int(ge=1, le=MAX_N) = 1
    stop: Annotated[StrictStr | list[StrictStr] | None, WithJsonSchema(STOP_SCHEMA)] = None  # _stop checks it
    seed: Int(ge=0, le=MAX_SEED) | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: StrictStr | None = None  # accepted and ignored, as clients send it
    response_format: ResponseFormat | None = None  # constrained decoding (llmkit.inference.constrained)
    guided_regex: StrictStr | None = None  # vLLM's extension: the output matches this regular expression
    guided_json: dict[str, Any] | None = None  # vLLM's extension: the output follows this JSON schema
    ignore_eos: StrictBool = False  # vLLM's extension: EOS does not end the output (load tests: max_tokens each)

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if not all(stops):
            raise ValueError("stop strings must be non-empty")
        return stops

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, value: dict[str, float] | None) -> dict[int, float]:
        out = {}
        for key, bias in (value or {}).items():
            if not key.isdigit():
                raise ValueError(f"keys are token ids; {key!r} is not one")
            if not -100 <= bias <= 100:
                raise ValueError(f"bias {bias} of token {key} is outside [-100, 100]")
            out[int(key)] = bias
        return out

    @property
    def wanted_tokens(self) -> int | None:
        """``max_tokens``, or ``max_completion_tokens`` (its newer name) when only that is given; app.py
        refuses two different values."""
        return self.max_tokens if self.max_tokens is not None else self.max_completion_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, value: float) -> float:
        if 0 < value < MIN_TEMPERATURE:
            raise ValueError(f"must be 0 (greedy) or at least {MIN_TEMPERATURE:g}")
        return value


NonEmpty = Field(min_length=1)
TokenIds = Annotated[list[Int(ge=0)], NonEmpty]  # 5.0 is 5, as for every integer
PROMPT_SHAPES = "a string, a list of strings, a list of token ids or a list of lists of token ids"


def _token_ids(value: object) -> list[int] | None:
    """``value`` as token ids (integral floats such as 5.0 are integers, as the schema's "integer" allows), or None."""
    if not isinstance(value, list) or not value:
        return None
    ids = []
    for t in value:
        if isinstance(t, float) and t.is_integer():
            t = int(t)
        if type(t) is not int or t < 0:
            return None
        ids.append(t)
    return ids


def _prompt(value: object) -> str | list:
    """One check with one message for the four shapes (a union would report each shape's own error)."""
    if isinstance(value, str):
        return value
    ids = _token_ids(value)
    if ids is not None:
        return ids
    if isinstance(value, list) and value:
        if all(isinstance(p, str) for p in value):
            return value
        lists = [_token_ids(p) for p in value]
        if all(ids is not None for ids in lists):
            return lists
    raise ValueError(f"must be {PROMPT_SHAPES}, none of them empty")


PromptShapes = StrictStr | Annotated[list[StrictStr], NonEmpty] | TokenIds | Annotated[list[TokenIds], NonEmpty]
PromptInput = Annotated[PromptShapes, PlainValidator(_prompt, json_schema_input_type=PromptShapes)]


class CompletionRequest(Sampling):
    # one prompt, several (each its own choices), token ids (lm-eval's default) or several of those
    prompt: PromptInput
    max_tokens: Int(ge=0) | None = None  # 0 with echo: score the prompt, generate nothing
    max_completion_tokens: Int(ge=0) | None = None
    logprobs: Int(ge=0, le=MAX_LOGPROBS) | None = None
    echo: StrictBool = False

    def prompts(self) -> list[str | list[int]]:
        """Each prompt of the request: a string or a list of token ids."""
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]
        return list(p)


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr
    arguments: StrictStr  # JSON text, as the API returns it


class ToolCall(BaseModel):
    """An earlier assistant turn's call, as the API returned it (sent back in the next turn)."""

    model_config = ConfigDict(extra="forbid")

    id: StrictStr
    type: Literal["function"] = "function"
    function: FunctionCall


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: StrictStr


class _Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _joined(self):
        if isinstance(self.content, list):  # text parts (OpenAI's newer shape) -> one string
            self.content = "".join(part.text for part in self.content)
        return self


class Message(_Turn):
    """A system or user turn (the name the OpenAPI document has kept since issue 15)."""

    role: Literal["system", "user"]
    content: StrictStr | list[TextPart]
    name: StrictStr | None = None


class AssistantTurn(_Turn):
    """An assistant turn: text, or the ``tool_calls`` the API returned (then content may be null)."""

    # the document says what _something checks
    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": [
        {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}},
        {"required": ["tool_calls"], "properties": {"tool_calls": {"type": "array", "minItems": 1}}},
    ]})  # fmt: skip

    role: Literal["assistant"]
    content: StrictStr | list[TextPart] | None = None
    name: StrictStr | None = None
    tool_calls: list[ToolCall] | None = None

    @model_validator(mode="after")
    def _something(self):
        if self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs content or tool_calls")
        return self


class ToolTurn(_Turn):
    """A tool's result, answering the call ``tool_call_id``."""

    role: Literal["tool"]
    content: StrictStr | list[TextPart]
    tool_call_id: StrictStr
    name: StrictStr | None = None


# one shape per role, so the OpenAPI document says which fields each role needs
ChatMessage = Annotated[Message | AssistantTurn | ToolTurn, Field(discriminator="role")]


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema; checked when compiled (a 400 if it cannot be)
    strict: StrictBool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: NamedFunction


class ChatRequest(Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    logprobs: StrictBool = False
    top_logprobs: Int(ge=0, le=MAX_LOGPROBS) | None = None
    # OpenAI's function calling, checked by llmkit.tools (shapes, names, the choice against the tools)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None  # true: the reply may be a list of calls


class ExplainRequest(BaseModel):
    """The playground's next-token panel: explain mode of llmkit.inference.explain for one prompt."""

    model_config = ConfigDict(extra="forbid")

    prompt: StrictStr
    max_tokens: Int(ge=1, le=256) = 16
    do_sample: StrictBool = False
    temperature: StrictFloat = Field(1.0, ge=MIN_TEMPERATURE, le=2)
    top_k: Int(ge=0) = 0
    top_p: StrictFloat = Field(1.0, gt=0, le=1)
    seed: Int(ge=0, le=MAX_SEED) | None = None
    stop: list[Stop] = Field(default_factory=list, max_length=4)
    top: Int(ge=1, le=50) = 10


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None):
    """OpenAI's error object: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class TokenizeRequest(BaseModel):
    """vLLM's ``POST /tokenize``: a prompt, or chat messages rendered with the model's template."""

    # exactly one of prompt and messages (_one_input), as the document says
    model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": [
        {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
        {"required": ["messages"], "properties": {"messages": {"type": "array"}}},
    ]})  # fmt: skip

    model: StrictStr | None = None
    prompt: StrictStr | None = None
    messages: Annotated[list[ChatMessage], NonEmpty] | None = None
    add_special_tokens: StrictBool = True
    add_generation_prompt: StrictBool = True
    return_token_strs: StrictBool = False

    @model_validator(mode="after")
    def _one_input(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either prompt or messages")
        return self


class DetokenizeRequest(BaseModel):
    """vLLM's ``POST /detokenize``: token ids back to text."""

    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = None
    tokens: list[Int(ge=0)]
