"""The normalised shape every source is read into: :class:`Example` rows of :class:`Message`."""

from __future__ import annotations

from typing import TypedDict

ROLES = ("system", "user", "assistant")


class Message(TypedDict):
    """One turn of a normalised conversation.

    Attributes:
        role: ``"system"``, ``"user"`` or ``"assistant"``.
        content: the turn's text.
        weight: 1 on the assistant turns the model learns from, 0 everywhere else.
    """

    # Tool calling adds optional keys here (an assistant's ``tool_calls``, a ``"tool"`` turn's
    # ``tool_call_id``), next to ``Example.tools``; the rest of the shape stays.
    role: str
    content: str
    weight: int


class Example(TypedDict, total=False):
    """A normalised row: exactly one of ``messages`` or ``text``, plus where it came from.

    Attributes:
        messages: the conversation, for chat formats.
        text: plain text, every token trained.
        row: the row's 1-based line (jsonl) or row number in its source.
        file: the file it came from, when the source was a folder of several files.
        tools: OpenAI function schemas offered to the assistant. No reader fills it yet; it is
            where chat rows with ``tools`` will put them, for the template to render.
    """

    # Preference data (prompt/chosen/rejected, KTO's label) will be one more shape of this
    # type, produced by one more entry in FORMATS.
    messages: list[Message]
    text: str
    row: int
    file: str
    tools: list[dict]

