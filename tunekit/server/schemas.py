"""The JSON shapes of the OpenAI API that this server speaks, as pydantic models.

Requests are validated in strict mode (JSON's own types: ``true`` is not a number, ``"1"`` is not
an integer) and unknown fields are ignored, as OpenAI's clients send many this server has no use
for. A validator raises :class:`~pydantic_core.PydanticCustomError` with an OpenAI error code as
its type when the code is not what pydantic would report; :func:`.errors.from_validation` turns
the first error into OpenAI's error body.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_serializer
from pydantic_core import PydanticCustomError

DEFAULT_MAX_TOKENS = 256
MAX_TOKENS_LIMIT = 8192  # a request asking for more is refused rather than hogging the model
DEFAULT_TEMPERATURE = 1.0  # OpenAI's default; 0 is greedy
DEFAULT_TOP_P = 1.0
# The seeds torch.manual_seed takes; a larger one is the client's error, not the server's.
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


# -- requests ------------------------------------------------------------------------------------
class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Request):
    """One content part; only text (this server has no image or audio input)."""

    type: Literal["text"]
    text: str


def _text_only(content: Any) -> Any:
    # Checked before the union, so a bad part is one error naming ``content`` rather than one
    # per union member.
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise PydanticCustomError("invalid_value", "part {part} is not a text part; only text is supported.",
                                          {"part": j})
    elif not isinstance(content, str):
        raise PydanticCustomError("invalid_type", "must be a string or a list of text parts.")
    return content


class Message(_Request):
    """A chat message: ``developer`` is OpenAI's newer name for ``system``."""

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]

    _check_content = field_validator("content", mode="before")(_text_only)

    def as_chat(self) -> dict[str, str]:
        """The ``{role, content}`` dict a chat template takes (text parts joined)."""
        role = "system" if self.role == "developer" else self.role
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": role, "content": content}


class StreamOptions(_Request):
    include_usage: bool | None = None


class ChatCompletionRequest(_Request):
    """A ``POST /v1/chat/completions`` body.

    Fields are declared in the order they are checked, so the first error reported is the one a
    client would fix first. ``max_completion_tokens`` (OpenAI's newer name) wins over
    ``max_tokens`` when both are sent.
    """

    model: str = Field(None, validate_default=True)
    messages: Annotated[list[Message], Field(min_length=1)]
    n: int | None = None
    stop: str | list[str] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)] | None = Field(
        None, validation_alias=AliasChoices("max_completion_tokens", "max_tokens"))
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    seed: Annotated[int, Field(ge=SEED_MIN, le=SEED_MAX)] | None = None

    @field_validator("model", mode="before")
    @classmethod
    def _model_given(cls, value: Any) -> Any:
        if not isinstance(value, str) or not value:
            raise PydanticCustomError("missing_required_parameter", "you must provide a model parameter")
        return value

    @field_validator("n", mode="before")
    @classmethod
    def _one_choice(cls, value: Any) -> Any:
        if value not in (None, 1):
            raise PydanticCustomError("unsupported_value", "Only n=1 is supported.")
        return value

    @field_validator("stop", mode="before")
    @classmethod
    def _no_stop(cls, value: Any) -> Any:
        if value not in (None, [], ""):
            raise PydanticCustomError("unsupported_parameter", "Stop sequences are not supported by this server.")
        return value

    @property
    def max_tokens_given(self) -> bool:
        """Whether the request set ``max_tokens`` (or ``max_completion_tokens``) itself."""
        return self.max_tokens is not None

    @property
    def max_new_tokens(self) -> int:
        return DEFAULT_MAX_TOKENS if self.max_tokens is None else self.max_tokens

    @property
    def sampling_temperature(self) -> float:
        return DEFAULT_TEMPERATURE if self.temperature is None else self.temperature

    @property
    def sampling_top_p(self) -> float:
        return DEFAULT_TOP_P if self.top_p is None else self.top_p

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def chat_messages(self) -> list[dict[str, str]]:
        """The messages as a chat template takes them."""
        return [m.as_chat() for m in self.messages]


# -- replies -------------------------------------------------------------------------------------
FinishReason = Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt: int, completion: int) -> Usage:
        """Usage from the two counts."""
        return cls(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    """A whole reply (``stream: false``)."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _set_only(self, handler) -> dict[str, Any]:
        # A delta carries only what changed: {} on the last chunk, no "role" after the first.
        return {k: v for k, v in handler(self).items() if v is not None}


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed reply. ``usage`` is sent (``null`` until the last
    chunk) only when the request asked for it with ``stream_options.include_usage``."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class Model(BaseModel):
    """An entry of ``/v1/models``: the base, or an adapter with the base as its ``parent``."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    parent: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorDetail
