"""The OpenAI-compatible wire format: request and response bodies as pydantic models.

Requests forbid unknown fields (as OpenAI does: "Unrecognized request argument"), and fields
OpenAI has but lowbit does not implement yet are refused by name rather than ignored, so a client
never gets a silently different answer.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

# Fields OpenAI has that lowbit does not implement → the values that mean "not used". A request
# may send those (clients often send defaults); any other value is refused by name.
COMMON_NOT_SUPPORTED = {
    "functions": (None, []), "function_call": (None, "none", "auto"),
    "modalities": (None, ["text"]), "audio": (None,), "prediction": (None,),
    "reasoning_effort": (None,), "web_search_options": (None,), "service_tier": (None, "auto"),
    "store": (None, False), "metadata": (None,),
}
COMPLETION_NOT_SUPPORTED = {"best_of": (None, 1), "suffix": (None, "")}
NAME = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function and schema names


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


def _null_means_default(cls: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """Clients send ``null`` for fields they leave unset: the field's default then."""
    return cls.model_fields[info.field_name].default if value is None else value


class StreamOptions(_Strict):
    include_usage: bool = False


class JsonSchemaFormat(_Strict):
    name: str = Field(pattern=NAME)
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None  # the output always follows the schema, strict or not


class ResponseFormat(_Strict):
    """``text``, ``json_object`` (any JSON object) or ``json_schema`` (JSON valid under a schema)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self):
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is given exactly when type is 'json_schema'")
        return self


class _GenerationFields(_Strict):
    """Fields shared by chat and text completions."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None  # token id (as a string) → bias in [-100, 100]
    response_format: ResponseFormat | None = None
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

    _nulls = field_validator("presence_penalty", "frequency_penalty", "n", "stream", mode="before")(
        classmethod(_null_means_default))

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (v or {}).items():
            if not key.isdigit():
                raise ValueError(f"keys are token ids, got {key!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"biases are in [-100, 100], got {bias} for token {key}")
        return v

    @model_validator(mode="after")
    def _stream_options(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options needs stream: true")
        return self

    @property
    def bias(self) -> tuple[tuple[int, float], ...]:
        return tuple((int(k), float(b)) for k, b in (self.logit_bias or {}).items())

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str
    arguments: str  # JSON text


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool's answer to that call
    refusal: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class FunctionDef(_Strict):
    name: str = Field(pattern=NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class FunctionName(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: FunctionName


class ChatCompletionRequest(_GenerationFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True

    _chat_nulls = field_validator("logprobs", "parallel_tool_calls", mode="before")(
        classmethod(_null_means_default))

    @model_validator(mode="before")
    @classmethod
    def _not_supported(cls, data: Any) -> Any:
        return _refuse(data, COMMON_NOT_SUPPORTED)

    @model_validator(mode="after")
    def _consistent(self):
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise ValueError("tools: function names must be distinct")
        if self.tool_choice not in (None, "none", "auto") and not names:
            raise ValueError("tool_choice needs tools")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            raise ValueError(f"tool_choice names {self.tool_choice.function.name!r}, which is not in tools")
        return self

    @property
    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def top_count(self) -> int | None:
        """Logprobs to report: None (off) or the number of top alternatives."""
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def uses_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"


class CompletionRequest(_GenerationFields):
    prompt: str | list[int] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=0)  # 0: with echo, only score the prompt
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False

    _echo_null = field_validator("echo", mode="before")(classmethod(_null_means_default))

    @model_validator(mode="before")
    @classmethod
    def _not_supported(cls, data: Any) -> Any:
        return _refuse(data, {**COMMON_NOT_SUPPORTED, **COMPLETION_NOT_SUPPORTED})

    @model_validator(mode="after")
    def _zero_needs_echo(self):
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens 0 needs echo: true (scoring the prompt)")
        return self

    @property
    def token_budget(self) -> int | None:
        return self.max_tokens

    @property
    def top_count(self) -> int | None:
        return self.logprobs


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


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None


class _Envelope(BaseModel):
    """What every completion object (whole or streamed chunk) carries."""

    id: str
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str


class ChatCompletion(_Envelope):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class ToolCallDelta(ToolCall):
    index: int


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(_Envelope):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(BaseModel):
    """The legacy completions shape: parallel lists, offsets into the choice's text."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None


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
