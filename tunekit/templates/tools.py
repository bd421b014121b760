"""Tool-call formats: which one a chat template uses, reading calls out of a reply, and the text
that starts a call.

Each model family writes tool calls its own way, and a tuned model must be read back in the
format it was trained on:

========== ====================================================================================
style      what the model writes
========== ====================================================================================
hermes     ``<tool_call>\\n{"name": …, "arguments": {…}}\\n</tool_call>`` (one block per call);
           Qwen2.5/Qwen3, SmolLM3, Hermes, and tunekit's chatml and qwen-2 templates
llama-3.1  ``{"name": …, "parameters": {…}}`` as the whole reply (one call; results come back in
           an ``ipython`` turn); Llama 3.1/3.2 and tunekit's llama-3 template
mistral    ``[TOOL_CALLS] [{"name": …, "arguments": {…}, "id": …}, …]``; Mistral v0.3+ and
           tunekit's mistral template
template   the template renders tools, in a format none of the above matches: :func:`parse_reply`
           tries each of them
========== ====================================================================================

Replies are model output: :func:`parse_reply` never raises on them, and text that does not parse
as a call stays content.
"""

from __future__ import annotations

import json
import re
from typing import Any

HERMES = "hermes"
LLAMA = "llama-3.1"
MISTRAL = "mistral"
TEMPLATE = "template"

STYLES = (HERMES, LLAMA, MISTRAL, TEMPLATE)
"""Every tool style :func:`tool_style` can return (besides None: no tool support)."""

# A shipped template names its style in its header comment ("tools:  hermes (…)").
_HEADER_RE = re.compile(r"^\s*tools:\s*([\w.-]+)", re.MULTILINE)
# A template that reads the tools or the messages' calls renders tools in some way.
_RENDERS_TOOLS_RE = re.compile(r"\btools\b|\btool_calls\b")

_HERMES_BLOCK_RE = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_MISTRAL_MARK = "[TOOL_CALLS]"
_PYTHON_TAG = "<|python_tag|>"
_JSON = json.JSONDecoder()


def _source_of(tpl_or_source: Any) -> str:
    source = getattr(tpl_or_source, "source", tpl_or_source)
    return source if isinstance(source, str) else ""


def tool_style(tpl_or_source: Any) -> str | None:
    """Which tool-call format a chat template uses.

    Args:
        tpl_or_source: a :class:`~tunekit.templates.ChatTemplate` or a template's Jinja text.

    Returns:
        ``"hermes"``, ``"llama-3.1"`` or ``"mistral"`` when the template writes that format (a
        shipped template says so in its header; a model's own template is recognised by its
        text: ``<tool_call>``, ``[TOOL_CALLS]``, an ``ipython`` role with ``"parameters"``);
        ``"template"`` when it renders tools in another format; None when it has no tool support.

    Example:
        >>> tool_style(get_template("chatml"))  # doctest: +SKIP
        'hermes'
    """
    source = _source_of(tpl_or_source)
    header = source.split("#}", 1)[0] if source.lstrip().startswith("{#") else ""
    match = _HEADER_RE.search(header)
    if match:
        named = match.group(1).lower()
        return named if named in STYLES else None
    if not _RENDERS_TOOLS_RE.search(source):
        return None
    if "<tool_call>" in source:
        return HERMES
    if _MISTRAL_MARK in source:
        return MISTRAL
    if "ipython" in source and '"parameters"' in source:
        return LLAMA
    return TEMPLATE


def _as_call(value: Any) -> dict | None:
    """``{"name", "arguments"}`` from a decoded JSON call, or None when it is not one."""
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("function"), dict):  # {"type": "function", "function": {…}}
        value = value["function"]
    name = value.get("name")
    if not isinstance(name, str) or not name.strip():
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if arguments is None:
        arguments = {}
    if isinstance(arguments, str):
        # Some models write the arguments as a JSON string, as OpenAI's API sends them.
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return {"name": name.strip(), "arguments": arguments}


def _json_values(text: str) -> list[Any] | None:
    """Every JSON value in ``text``, one after another (separated by whitespace, ``,`` or ``;``);
    None when anything else is there."""
    values, pos = [], 0
    while True:
        while pos < len(text) and (text[pos].isspace() or text[pos] in ",;"):
            pos += 1
        if pos == len(text):
            return values
        try:
            value, pos = _JSON.raw_decode(text, pos)
        except ValueError:
            return None
        values.append(value)


def _calls_in(values: list[Any]) -> list[dict] | None:
    """The calls among decoded values (lists flattened); None when any value is not a call."""
    flat = [item for value in values for item in (value if isinstance(value, list) else [value])]
    calls = [_as_call(item) for item in flat]
    if not calls or any(call is None for call in calls):
        return None
    return calls


def _parse_hermes(text: str) -> tuple[str, list[dict]]:
    calls: list[dict] = []
    kept: list[str] = []
    pos = 0
    for match in _HERMES_BLOCK_RE.finditer(text):
        values = _json_values(match.group(1))
        found = _calls_in(values) if values else None
        kept.append(text[pos : match.start()] if found else text[pos : match.end()])
        calls += found or []
        pos = match.end()
    rest = text[pos:]
    # A last block the model did not close (it stopped right after the JSON) still counts when
    # nothing but the call follows the tag.
    head, tag, tail = rest.partition("<tool_call>")
    values = _json_values(tail.strip()) if tag and "</tool_call>" not in tail else None
    found = _calls_in(values) if values else None
    if found:
        calls += found
        rest = head
    kept.append(rest)
    return "".join(kept).strip() if calls else text, calls


def _parse_llama(text: str) -> tuple[str, list[dict]]:
    body = text.strip()
    if body.startswith(_PYTHON_TAG):
        body = body[len(_PYTHON_TAG) :]
    values = _json_values(body) if body.startswith(("{", "[")) else None
    calls = _calls_in(values) if values else None
    return ("", calls) if calls else (text, [])


def _parse_mistral(text: str) -> tuple[str, list[dict]]:
    head, mark, tail = text.partition(_MISTRAL_MARK)
    if not mark:
        # [TOOL_CALLS] is a control token: decoding with skip_special_tokens drops it, leaving
        # the JSON list alone.
        head, tail = "", text
        if not text.lstrip().startswith("["):
            return text, []
    values = _json_values(tail)
    calls = _calls_in(values) if values else None
    if calls is None and mark:
        # The tokenizer-v11 form: [TOOL_CALLS]name[ARGS]{…} per call.
        calls = []
        for part in tail.split(_MISTRAL_MARK):
            name, args_mark, args = part.partition("[ARGS]")
            values = _json_values(args) if args_mark else None
            call = _as_call({"name": name, "arguments": values[0]}) if values and len(values) == 1 else None
            if call is None:
                return text, []
            calls.append(call)
    return (head.strip(), calls) if calls else (text, [])


_PARSERS = {HERMES: _parse_hermes, LLAMA: _parse_llama, MISTRAL: _parse_mistral}


def parse_reply(text: str, style: str | None) -> tuple[str, list[dict]]:
    """Split a generated reply into its text and its tool calls.

    Args:
        text: what the model generated (with or without its end-of-turn token stripped).
        style: a style from :func:`tool_style`; ``"template"`` tries every known format; None
            (no tool support) or an unknown style reads no calls.

    Returns:
        ``(content, calls)``: calls as ``[{"name": str, "arguments": dict}, …]`` in the order
        written, and the rest of the text as content (stripped when calls were found). Text
        that does not parse as a call (broken JSON, a call without a name, arguments that are
        not an object) stays in the content; this never raises on model output.

    Example:
        >>> parse_reply('<tool_call>\\n{"name": "now", "arguments": {}}\\n</tool_call>', "hermes")
        ('', [{'name': 'now', 'arguments': {}}])
    """
    if not isinstance(text, str):
        return "", []
    if style == TEMPLATE:
        for parse in _PARSERS.values():
            content, calls = parse(text)
            if calls:
                return content, calls
        return text, []
    parse = _PARSERS.get(style or "")
    return parse(text) if parse else (text, [])


def call_prefix(style: str, name: str | None = None) -> str:
    """The text that starts a tool call in ``style``: prefilled after the generation prompt, it
    makes the model write a call (``tool_choice="required"``), or a call of ``name``.

    Args:
        style: ``"hermes"``, ``"llama-3.1"`` or ``"mistral"``.
        name: the function to call; None lets the model choose which.

    Returns:
        The prefix; the model continues with the function's name (``name=None``) or with its
        arguments' JSON object. ``parse_reply(prefix + generated, style)`` reads the call.

    Raises:
        ValueError: a style with no known call syntax (``"template"``, None, or unknown).

    Example:
        >>> call_prefix("hermes", "get_weather")
        '<tool_call>\\n{"name": "get_weather", "arguments": '
    """
    openers = {
        HERMES: ('<tool_call>\n{"name": ', '"arguments": '),
        LLAMA: ('{"name": ', '"parameters": '),
        MISTRAL: ('[TOOL_CALLS] [{"name": ', '"arguments": '),
    }
    if style not in openers:
        raise ValueError(
            f"No known tool-call syntax for style {style!r}; call_prefix knows "
            f"{', '.join(map(repr, openers))}."
        )
    opener, arguments = openers[style]
    if name is None:
        return opener + '"'
    return f"{opener}{json.dumps(name, ensure_ascii=False)}, {arguments}"
