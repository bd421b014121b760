"""The JSON shapes of the OpenAI API that this server speaks, as pydantic models.

Requests are validated in strict mode (JSON's own types: ``true`` is not a number, ``"1"`` is not
an integer) and unknown fields are ignored, as OpenAI's clients send many this server has no use
for. A validator raises :class:`~pydantic_core.PydanticCustomError` with an OpenAI error code as
its type when the code is not what pydantic would report; :func:`.errors.from_validation` turns
the first error into OpenAI's error body.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_serializer
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


class FunctionCall(_Request):
    """A call an earlier assistant turn made. ``arguments`` is a JSON string as OpenAI sends it
    (an object is taken too); it is parsed when the messages are normalised."""

    name: str
    arguments: str | dict[str, Any]


class ToolCall(_Request):
    """One entry of an assistant message's ``tool_calls``."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Request):
    """A chat message: ``developer`` is OpenAI's newer name for ``system``; ``tool`` carries a
    tool's result (``tool_call_id`` names the call); ``function`` is the legacy form of it.

    ``content`` is declared last so its check sees the role and calls: only an assistant turn
    that calls tools may leave it out or send null.
    """

    role: Literal["system", "user", "assistant", "developer", "tool", "function"]
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    function_call: FunctionCall | None = None
    content: str | list[TextPart] | None = Field(None, validate_default=True)

    @field_validator("content", mode="before")
    @classmethod
    def _check_content(cls, content: Any, info: ValidationInfo) -> Any:
        if content is None:
            calls = info.data.get("tool_calls") or info.data.get("function_call")
            if info.data.get("role") == "assistant" and calls:
                return None
            raise PydanticCustomError("invalid_type", "must be a string or a list of text parts.")
        return _text_only(content)

    def as_chat(self) -> dict[str, Any]:
        """The message as a chat template takes it: text parts joined, ``developer`` as
        ``system``; tool fields kept in OpenAI's shape for :func:`tunekit.data.tools.normalise_messages`."""
        role = "system" if self.role == "developer" else self.role
        if self.content is None:
            content = ""
        else:
            content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        out: dict[str, Any] = {"role": role, "content": content}
        if self.tool_calls:
            out["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.function_call is not None:
            out["function_call"] = self.function_call.model_dump()
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None and role in ("tool", "function"):
            out["name"] = self.name
        return out

    @property
    def has_tool_fields(self) -> bool:
        """Whether the message takes part in tool calling (a call or a result)."""
        return bool(self.tool_calls or self.function_call or self.role in ("tool", "function"))


# OpenAI's rule for function names.
_FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


class FunctionDefinition(_Request):
    """A function the model may call: its name, what it does, and its JSON-schema parameters."""

    name: Annotated[str, Field(pattern=_FUNCTION_NAME)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Request):
    """An entry of ``tools``; only functions exist."""

    type: Literal["function"]
    function: FunctionDefinition

    def as_schema(self) -> dict[str, Any]:
        """The schema as chat templates take it (``apply_chat_template(tools=...)``)."""
        function: dict[str, Any] = {"name": self.function.name}
        if self.function.description is not None:
            function["description"] = self.function.description
        function["parameters"] = self.function.parameters or {"type": "object", "properties": {}}
        return {"type": "function", "function": function}


class NamedFunction(_Request):
    name: str


class NamedToolChoice(_Request):
    """``{"type": "function", "function": {"name": …}}``: call that function."""

    type: Literal["function"]
    function: NamedFunction


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
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @field_validator("tools", mode="after")
    @classmethod
    def _distinct_names(cls, tools: list[Tool] | None) -> list[Tool] | None:
        names = [t.function.name for t in tools or []]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise PydanticCustomError("invalid_value", "function names must be unique; {names} given more than once.",
                                      {"names": ", ".join(repr(n) for n in twice)})
        return tools

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _choice_shape(cls, choice: Any) -> Any:
        # One error naming tool_choice, rather than one per member of the union.
        if choice is None or choice in ("none", "auto", "required"):
            return choice
        named = isinstance(choice, dict) and choice.get("type") == "function" and isinstance(
            choice.get("function"), dict) and isinstance(choice["function"].get("name"), str)
        if not named:
            raise PydanticCustomError("invalid_value",
                                      "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or "
                                      "{\"type\": \"function\", \"function\": {\"name\": ...}}.")
        return choice

    @field_validator("tool_choice", mode="after")
    @classmethod
    def _choice_among_tools(cls, choice: Any, info: ValidationInfo) -> Any:
        if choice in (None, "none", "auto"):
            return choice
        if "tools" not in info.data:
            return choice  # tools was invalid itself: that error is reported
        names = [t.function.name for t in info.data["tools"] or []]
        if not names:
            raise PydanticCustomError("invalid_value",
                                      "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' "
                                      "are specified.")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise PydanticCustomError("invalid_value",
                                      "Invalid value for 'tool_choice': no function named {name} in 'tools' "
                                      "(they are {names}).",
                                      {"name": repr(choice.function.name), "names": ", ".join(names)})
        return choice

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

    def chat_messages(self) -> list[dict[str, Any]]:
        """The messages as sent, in OpenAI's shape (text parts joined, ``developer`` as
        ``system``); :func:`tunekit.server.generation.conversation` normalises them."""
        return [m.as_chat() for m in self.messages]

    def tool_schemas(self) -> list[dict[str, Any]] | None:
        """The request's ``tools`` as chat templates take them; None when it sent none."""
        return None if self.tools is None else [t.as_schema() for t in self.tools]

    @property
    def has_tool_messages(self) -> bool:
        """Whether any message calls a tool or carries a tool's result."""
        return any(m.has_tool_fields for m in self.messages)

    @property
    def choice(self) -> str:
        """``tool_choice`` as :func:`tunekit.chat.plan_tools` takes it: ``"auto"`` (the default
        when tools are sent), ``"none"``, ``"required"`` or the named function."""
        if isinstance(self.tool_choice, NamedToolChoice):
            return self.tool_choice.function.name
        return self.tool_choice or "auto"

    @property
    def parallel(self) -> bool:
        return self.parallel_tool_calls is not False


# -- replies -------------------------------------------------------------------------------------
FinishReason = Literal["stop", "length", "tool_calls"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt: int, completion: int) -> Usage:
        """Usage from the two counts."""
        return cls(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


class FunctionCallOut(BaseModel):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCallOut(BaseModel):
    """A call the reply makes: ``id`` (``call_…``) is what the tool message answers to."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessage(BaseModel):
    """The reply. With tool calls, ``content`` is null unless the model also wrote text;
    without, ``tool_calls`` is left out."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = None

    @model_serializer(mode="wrap")
    def _calls_when_any(self, handler) -> dict[str, Any]:
        out = handler(self)
        if out.get("tool_calls") is None:
            out.pop("tool_calls", None)
        return out


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


class FunctionDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None

    @model_serializer(mode="wrap")
    def _set_only(self, handler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ToolCallDelta(BaseModel):
    """A piece of a streamed call, as OpenAI sends them: the first carries ``index``, ``id``,
    ``type``, the name and empty arguments; the next ones ``index`` and argument text."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDelta

    @model_serializer(mode="wrap")
    def _set_only(self, handler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None

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
