"""Request bodies of the OpenAI-compatible API, validated by pydantic, and the OpenAI error shape.

Only what the server can honour is accepted: unknown fields are an error (``extra="forbid"``), so a
request cannot smuggle in a file path or a checkpoint to load. Ranges follow OpenAI's where it has
them; ``max_tokens`` is also capped by the server's own limit and the context window (app.py).
Integers are JSON integers or integral numbers (``5.0``, as JavaScript clients send them), never
strings or booleans; seeds fit 64 bits; a temperature is 0 (greedy) or at least
``MIN_TEMPERATURE`` (a tinier one overflowed the scores to NaN).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictFloat, StrictStr, field_validator

from llmkit.inference.sampling import MIN_TEMPERATURE

MAX_STOP = 4  # OpenAI's limit on stop sequences
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


class Sampling(BaseModel):
    """Fields shared by completions and chat; each maps onto GenerationConfig (app.generation_config)."""

    model_config = ConfigDict(extra="forbid")

    model: StrictStr
    max_tokens: Int(ge=1) | None = None
    temperature: StrictFloat = Field(1.0, ge=0, le=2)  # 0: greedy; strict: "0.5" is a type error
    top_p: StrictFloat = Field(1.0, gt=0, le=1)
    top_k: Int(ge=0) = 0  # an extension (vLLM has it too); 0 = off
    n: Int(ge=1, le=MAX_N) = 1
    stop: StrictStr | list[StrictStr] | None = None
    seed: Int(ge=0, le=MAX_SEED) | None = None
    stream: StrictBool = False
    user: StrictStr | None = None  # accepted and ignored, as clients send it

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP or not all(stops):
            raise ValueError(f"give at most {MAX_STOP} non-empty stop strings")
        return stops

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, value: float) -> float:
        if 0 < value < MIN_TEMPERATURE:
            raise ValueError(f"must be 0 (greedy) or at least {MIN_TEMPERATURE:g}")
        return value


class CompletionRequest(Sampling):
    prompt: StrictStr
    logprobs: Int(ge=0, le=MAX_LOGPROBS) | None = None
    echo: StrictBool = False


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: StrictStr
    name: StrictStr | None = None


class ChatRequest(Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    logprobs: StrictBool = False
    top_logprobs: Int(ge=0, le=MAX_LOGPROBS) | None = None


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
    stop: list[StrictStr] = Field(default_factory=list, max_length=MAX_STOP)
    top: Int(ge=1, le=50) = 10


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None):
    """OpenAI's error object: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
