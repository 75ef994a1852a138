"""Request bodies of the OpenAI-compatible API, validated by pydantic, and the OpenAI error shape.

Only what the server can honour is accepted: unknown fields are an error (``extra="forbid"``), so a
request cannot smuggle in a file path or a checkpoint to load. Ranges follow OpenAI's where it has
them; ``max_tokens`` is also capped by the server's own limit and the context window (app.py).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, field_validator

MAX_STOP = 4  # OpenAI's limit on stop sequences
MAX_N = 8  # choices per request
MAX_LOGPROBS = 5  # alternatives per token (OpenAI's legacy completions limit)


class Sampling(BaseModel):
    """Fields shared by completions and chat; each maps onto GenerationConfig (app.generation_config)."""

    model_config = ConfigDict(extra="forbid")

    model: StrictStr
    max_tokens: StrictInt | None = Field(None, ge=1)
    temperature: StrictFloat = Field(1.0, ge=0, le=2)  # 0: greedy; strict: "0.5" is a type error
    top_p: StrictFloat = Field(1.0, gt=0, le=1)
    top_k: StrictInt = Field(0, ge=0)  # an extension (vLLM has it too); 0 = off
    n: StrictInt = Field(1, ge=1, le=MAX_N)
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = Field(None, ge=0)
    stream: StrictBool = False
    user: StrictStr | None = None  # accepted and ignored, as clients send it

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP or not all(stops):
            raise ValueError(f"give at most {MAX_STOP} non-empty stop strings")
        return stops


class CompletionRequest(Sampling):
    prompt: StrictStr
    logprobs: StrictInt | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: StrictBool = False


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: StrictStr
    name: StrictStr | None = None


class ChatRequest(Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=MAX_LOGPROBS)


class ExplainRequest(BaseModel):
    """The playground's next-token panel: explain mode of llmkit.inference.explain for one prompt."""

    model_config = ConfigDict(extra="forbid")

    prompt: StrictStr
    max_tokens: StrictInt = Field(16, ge=1, le=256)
    do_sample: StrictBool = False
    temperature: StrictFloat = Field(1.0, gt=0, le=2)
    top_k: StrictInt = Field(0, ge=0)
    top_p: StrictFloat = Field(1.0, gt=0, le=1)
    seed: StrictInt | None = Field(None, ge=0)
    stop: list[StrictStr] = Field(default_factory=list, max_length=MAX_STOP)
    top: StrictInt = Field(10, ge=1, le=50)


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None):
    """OpenAI's error object: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
