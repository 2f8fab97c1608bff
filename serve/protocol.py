"""The OpenAI-compatible wire format: request and response bodies as pydantic models.

Requests forbid unknown fields (as OpenAI does: "Unrecognized request argument"), and fields
OpenAI has but lowbit does not implement yet are refused by name rather than ignored, so a client
never gets a silently different answer.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

# Fields OpenAI has that lowbit does not implement yet → the values that mean "not used". A
# request may send those (clients often send defaults); any other value is refused by name.
COMMON_NOT_SUPPORTED = {
    "tools": (None, []), "tool_choice": (None, "none", "auto"), "functions": (None, []),
    "function_call": (None, "none", "auto"), "parallel_tool_calls": (None, False, True),
    "response_format": (None, {"type": "text"}), "logprobs": (None, False), "top_logprobs": (None, 0),
    "logit_bias": (None, {}), "presence_penalty": (None, 0), "frequency_penalty": (None, 0),
    "modalities": (None, ["text"]), "audio": (None,), "prediction": (None,),
    "reasoning_effort": (None,), "web_search_options": (None,), "service_tier": (None, "auto"),
    "store": (None, False), "metadata": (None,),
}
COMPLETION_NOT_SUPPORTED = {"best_of": (None, 1), "echo": (None, False), "suffix": (None, ""),
                            "logprobs": (None, 0)}


def _refuse(data: Any, not_supported: dict[str, tuple]) -> Any:
    """Drop not-yet-supported fields set to "not used"; refuse any other value, by name."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for name in not_supported.keys() & data.keys():
        value = data.pop(name)
        if value not in not_supported[name]:
            raise PydanticCustomError("not_supported", "{field} is not supported yet", {"field": name})
    return data


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False


class _GenerationFields(_Strict):
    """Fields shared by chat and text completions."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: list[str] = Field(default_factory=list, max_length=4)
    seed: int | None = None
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stops(cls, v: Any) -> Any:
        """OpenAI takes one stop string, a list of up to 4, or null."""
        return [v] if isinstance(v, str) else [] if v is None else v

    @model_validator(mode="after")
    def _stream_options(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options needs stream: true")
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatCompletionRequest(_GenerationFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _not_supported(cls, data: Any) -> Any:
        return _refuse(data, COMMON_NOT_SUPPORTED)

    @property
    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_GenerationFields):
    prompt: str | list[int] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _not_supported(cls, data: Any) -> Any:
        return _refuse(data, {**COMMON_NOT_SUPPORTED, **COMPLETION_NOT_SUPPORTED})

    @property
    def token_budget(self) -> int | None:
        return self.max_tokens


# -- responses ---------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class UsageExtra(BaseModel):
    """lowbit's timings (MLC puts its own under ``usage.extra`` too)."""

    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    ttft_s: float
    queue_s: float


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    extra: UsageExtra


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class _Envelope(BaseModel):
    """What every completion object (whole or streamed chunk) carries."""

    id: str
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str


class ChatCompletion(_Envelope):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(_Envelope):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: None = None


class Completion(_Envelope):
    """A whole text completion, and (``object`` and all) each streamed chunk of one."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "lowbit"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
