"""The normalised shape every source is read into: :class:`Example` rows of :class:`Message`."""

from __future__ import annotations

from typing import Any, TypedDict

ROLES = ("system", "user", "assistant", "tool")


class Function(TypedDict):
    """What a tool call calls.

    Attributes:
        name: the function's name, one of the row's ``tools`` when it has any.
        arguments: the arguments, always a parsed JSON object (OpenAI sends JSON text).
    """

    name: str
    arguments: dict[str, Any]


class ToolCall(TypedDict):
    """One call in an assistant message's ``tool_calls``.

    Attributes:
        id: the call's id as the row gave it, or ``"call_0"``, ``"call_1"``… when it gave none.
        type: always ``"function"``.
        function: the function called and its arguments.
    """

    id: str
    type: str
    function: Function


class _Turn(TypedDict):
    role: str
    content: str
    weight: int


class Message(_Turn, total=False):
    """One turn of a normalised conversation.

    Attributes:
        role: ``"system"``, ``"user"``, ``"assistant"`` or ``"tool"``.
        content: the turn's text (``""`` for an assistant turn that only calls tools).
        weight: 1 on the assistant turns the model learns from, 0 everywhere else.
        tool_calls: an assistant's calls, when it makes any (see ``tunekit.data.tools``).
        tool_call_id: a ``"tool"`` turn's answer to: the ``id`` of an earlier call.
        name: a ``"tool"`` turn's function, copied from the call it answers.
    """

    tool_calls: list[ToolCall]
    tool_call_id: str
    name: str


class Example(TypedDict, total=False):
    """A normalised row: exactly one of ``messages`` or ``text``, plus where it came from.

    Attributes:
        messages: the conversation, for chat formats.
        text: plain text, every token trained.
        row: the row's 1-based line (jsonl) or row number in its source.
        file: the file it came from, when the source was a folder of several files.
        tools: the OpenAI tool schemas offered to the assistant
            (``{"type": "function", "function": {"name", "description", "parameters"}}``, as
            ``apply_chat_template(tools=...)`` takes them); absent when the row has none.
        parallel_tool_calls: the row's ``parallel_tool_calls`` flag (OpenAI format), absent
            when it has none. Kept for the record and the server; ``False`` with a turn that
            makes several calls is a bad row.
    """

    # Preference data (prompt/chosen/rejected, KTO's label) will be one more shape of this
    # type, produced by one more entry in FORMATS.
    messages: list[Message]
    text: str
    row: int
    file: str
    tools: list[dict]
    parallel_tool_calls: bool


class PreferenceExample(TypedDict, total=False):
    """A DPO pair (``tunekit.data.preferences``): one prompt, two replies, the first preferred.

    Attributes:
        prompt: the conversation the replies answer, every message weight 0, ending with the
            user (or tool) turn; the turns both replies shared in the row are split off into it.
        chosen: the preferred reply: assistant messages (weight 1), with any tool turns
            between them (weight 0).
        rejected: the worse reply, in the same shape; never identical to ``chosen``.
        tools, row, file: as in :class:`Example`.
    """

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    tools: list[dict]
    row: int
    file: str


class KTOExample(TypedDict, total=False):
    """A KTO row (``tunekit.data.preferences``): one reply, judged desirable or not.

    Attributes:
        prompt: as in :class:`PreferenceExample`.
        completion: the reply, in the shape of ``PreferenceExample.chosen``.
        label: True when the reply is desirable, False when it is not.
        tools, row, file: as in :class:`Example`.
    """

    prompt: list[Message]
    completion: list[Message]
    label: bool
    tools: list[dict]
    row: int
    file: str
