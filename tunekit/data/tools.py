"""Tool calling: tool schemas, assistant calls and tool results, in one normalised shape.

Training rows (OpenAI's format, ShareGPT/glaive as LLaMA-Factory reads it, TRL's ``tools``
column) and the OpenAI server's requests all go through here, so training and serving hand the
chat template the same inputs::

    {"role": "assistant", "content": "", "weight": 1,
     "tool_calls": [{"id": "call_0", "type": "function",
                     "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
    {"role": "tool", "content": "18 C, sunny", "tool_call_id": "call_0", "name": "get_weather",
     "weight": 0}

and tools as OpenAI tool schemas, ``{"type": "function", "function": {"name", "description",
"parameters"}}``, exactly as ``apply_chat_template(tools=...)`` takes them.

The rules, once:

- ``arguments`` may be a JSON object or JSON text of one (OpenAI sends text); either way it
  becomes a dict. Anything else (invalid JSON, a list, text encoded twice) is a bad row.
- A call keeps the ``id`` it was given; one without (ShareGPT, legacy ``function_call``, TRL
  rows) gets ``call_0``, ``call_1``… in row order, skipping ids the row already uses.
- A tool result answers the earlier unanswered call with its ``tool_call_id``; without one
  (ShareGPT ``observation``, legacy ``role: "function"``, TRL rows) the first unanswered call of
  its ``name``, or without a name simply the first unanswered call. Its ``tool_call_id`` and
  ``name`` are then filled from that call. A result with no call to answer is a bad row; a call
  without a result is not (rows often end with the call the model should learn to make).
- When the row has tools, every call must name one of them. A row without tools may still
  make calls: OpenAI's fine-tuning guide trains calls without the full schemas in the prompt.
- Legacy ``functions`` (bare function schemas) become ``tools``; so do glaive's bare schemas
  and JSON text of a list. An empty list means no tools (some templates render tool boilerplate
  for ``tools=[]``).
- ``parallel_tool_calls`` is kept on the example; ``false`` with a turn that makes several
  calls is a bad row.
- ``None`` inside tool schemas means "absent", and a ``None`` argument the function does not
  declare is dropped: Arrow (``datasets``, parquet) gives every row every key some other row
  has, filled with nulls.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from tunekit.errors import DataError

from .checks import (Problems, chat_example, json_list, keys, kind, missing, parse_turns, quote,
                     string_field)
from .schema import Example, Message

OPENAI_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "tool": "tool",
                "function": "tool"}
"""OpenAI's role names (``function`` is the legacy name of ``tool``) mapped to ``ROLES``."""

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "function_call": "assistant", "observation": "tool",
                  "tool": "tool"}
"""ShareGPT's ``from`` values (LLaMA-Factory's defaults, plus the plain names)."""

TOOL_SHAPE = ('{"type": "function", "function": {"name": ..., "description": ..., '
              '"parameters": {"type": "object", "properties": {...}}}}')
CALL_SHAPE = '{"id": ..., "type": "function", "function": {"name": ..., "arguments": {...}}}'

# OpenAI's rule for function names, plus dots (namespaced names are common in the wild).
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_NO_ARGS = "({} for a function without parameters)"


@dataclass
class Turn:
    """One parsed message and where its tool parts are in the row, for :func:`link_calls`.

    Attributes:
        message: the message so far: ``role``, ``content``, ``weight`` (None where the row gives
            none) and, for a call, ``tool_calls`` whose ``id`` may still be None.
        where: the message's field, ``"messages[2]"``.
        call_fields: for each of its calls, the field that holds the function's name.
        result_id: a tool result's ``tool_call_id`` as given, or None.
        result_name: a tool result's ``name`` as given, or None.
    """

    message: dict
    where: str
    call_fields: list[str] = field(default_factory=list)
    result_id: str | None = None
    result_name: str | None = None


# ----------------------------------------------------------------------------- values


def _plain(value: Any, *, drop_none: bool = False) -> Any:
    """numpy arrays and scalars (pandas cells) as Python values; with ``drop_none``, dict keys
    whose value is None removed (how Arrow fills keys a row does not have)."""
    if isinstance(value, dict):
        return {str(k): _plain(v, drop_none=drop_none) for k, v in value.items()
                if not (drop_none and missing(v))}
    if isinstance(value, (list, tuple)):
        return [_plain(v, drop_none=drop_none) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, str):
        return _plain(value.tolist(), drop_none=drop_none)
    return value


def _json_error(text: str) -> str | None:
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        return f"{e.msg} at character {e.pos}"
    except RecursionError:
        return "nested too deeply"
    return None


def parse_arguments(value: Any, where: str, problems: Problems) -> dict | None:
    """A call's arguments as a dict: a JSON object, or JSON text of one (as OpenAI sends them).

    Args:
        value: the raw ``arguments``.
        where: the field in problem messages (``"messages[1].tool_calls[0].function.arguments"``).
        problems: where to append what is wrong.

    Returns:
        The arguments, or None when they are unusable (the problem is appended).
    """
    if missing(value):
        problems.append((where, f"missing; write the call's arguments as a JSON object {_NO_ARGS}"))
        return None
    parsed = value
    if isinstance(value, str):
        if (error := _json_error(value)) is not None:
            problems.append((where, f"not valid JSON ({error}): {quote(value)}; write the "
                                    f"arguments as a JSON object, e.g. {{\"city\": \"Paris\"}} "
                                    f"{_NO_ARGS}"))
            return None
        parsed = json.loads(value)
        twice = isinstance(parsed, str) and _json_error(parsed) is None
        if twice and isinstance(json.loads(parsed), dict):
            problems.append((where, f"JSON text of a string, not of an object: {quote(value)} is "
                                    "encoded twice; encode the arguments once, so they read "
                                    "{\"key\": ...}"))
            return None
    parsed = _plain(parsed)
    if not isinstance(parsed, dict):
        problems.append((where, f"must be a JSON object of parameter names to values, got "
                                f"{kind(parsed)} {quote(parsed)} {_NO_ARGS}"))
        return None
    return parsed


def _function_name(value: Any, where: str, problems: Problems) -> str:
    if missing(value) or value == "":
        problems.append((where, "missing; name the function"))
        return ""
    if not isinstance(value, str):
        problems.append((where, f"expected a string, got {kind(value)} {quote(value)}"))
        return ""
    if not _NAME.fullmatch(value):
        problems.append((where, f"{quote(value)} is not a function name: use letters, digits, "
                                "_ . or - (at most 64)"))
    return value


def _text(value: Any, where: str, problems: Problems) -> str | None:
    """An optional short string field (an id, a name): None when absent."""
    if missing(value):
        return None
    if not isinstance(value, str) or not value.strip():
        problems.append((where, f"expected a non-empty string, got {kind(value)} {quote(value)}"))
        return None
    return value


# ----------------------------------------------------------------------------- tools


def _parameters(params: Any, where: str, problems: Problems) -> None:
    if not isinstance(params, dict):
        problems.append((where, f"expected a JSON schema object like {{\"type\": \"object\", "
                                f"\"properties\": {{...}}}}, got {kind(params)}"))
        return
    if not params:  # {}: no parameters
        return
    if params.get("type") != "object":
        got = "missing" if "type" not in params else f"got {quote(params['type'])}"
        problems.append((f"{where}.type", f'must be "object" (the arguments are one JSON object), '
                                          f"{got}"))
    props = params.get("properties", {})
    if not isinstance(props, dict):
        problems.append((f"{where}.properties", f"expected an object mapping each parameter's name "
                                                f"to its schema, got {kind(props)}"))
        props = {}
    for name, schema in props.items():
        if not isinstance(schema, dict):
            problems.append((f"{where}.properties.{name}",
                             f"expected a schema object like {{\"type\": \"string\"}}, got "
                             f"{kind(schema)}"))
    required = params.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        problems.append((f"{where}.required", f"expected a list of parameter names, got "
                                              f"{quote(required)}"))
    elif unknown := [r for r in required if r not in props]:
        problems.append((f"{where}.required", f"names {keys(unknown)}, which are not among the "
                                              f"properties ({keys(props)}); declare them or drop "
                                              "them"))


def _tool(value: Any, where: str, problems: Problems) -> dict | None:
    if not isinstance(value, dict):
        problems.append((where, f"expected a tool like {TOOL_SHAPE}, got {kind(value)}"))
        return None
    tool = _plain(value, drop_none=True)
    if "function" in tool:
        fn, at = tool["function"], f"{where}.function"
        if tool.get("type", "function") != "function":
            problems.append((f"{where}.type", f'only function tools are supported, got '
                                              f'{quote(tool["type"])}; use "function"'))
            return None
        if not isinstance(fn, dict):
            problems.append((at, f"expected an object like {{\"name\": ..., \"parameters\": ...}}, "
                                 f"got {kind(fn)}"))
            return None
        out = {**tool, "type": "function"}
    elif "name" in tool:  # a bare function schema: legacy "functions", glaive, the Responses API
        fn, at = {k: v for k, v in tool.items() if k != "type"}, where
        out = {"type": "function", "function": fn}
    else:
        problems.append((where, f"neither a tool ({TOOL_SHAPE}) nor a function schema "
                                f"({{\"name\": ..., \"parameters\": ...}}); keys: {keys(tool)}"))
        return None
    _function_name(fn.get("name"), f"{at}.name", problems)
    if "description" in fn and not isinstance(fn["description"], str):
        problems.append((f"{at}.description", f"expected a string, got {kind(fn['description'])}"))
    if "parameters" in fn:
        _parameters(fn["parameters"], f"{at}.parameters", problems)
    return out


def normalise_tools(value: Any, problems: Problems | None = None, *,
                    where: str = "tools") -> list[dict] | None:
    """Tool schemas as ``apply_chat_template(tools=...)`` takes them, checked.

    Accepts OpenAI tools, bare function schemas (legacy ``functions``, glaive, the Responses
    API's flat tools) and JSON text of a list of either.

    Args:
        value: the raw ``tools`` (or ``functions``).
        problems: where to append what is wrong; None raises instead (for callers with one
            request at hand, like the server).
        where: the field in problem messages.

    Returns:
        The tools, or None when there are none (missing or an empty list).

    Raises:
        DataError: ``problems`` is None and the tools are not valid function schemas.

    Example:
        >>> normalise_tools('[{"name": "now", "parameters": {"type": "object", "properties": {}}}]')
        [{'type': 'function', 'function': {'name': 'now', 'parameters': {'type': 'object', 'properties': {}}}}]
    """
    own: Problems = [] if problems is None else problems
    value = json_list(value)
    tools: list[dict] = []
    if isinstance(value, str):
        if value.strip():
            why = _json_error(value) or "not a list"
            own.append((where, f"not JSON text of a list of tools ({why}); write a list like "
                               f"[{TOOL_SHAPE}]"))
    elif isinstance(value, dict):
        own.append((where, "expected a list of tools, got one object; wrap it in [...]"))
    elif not missing(value) and not isinstance(value, list):
        own.append((where, f"expected a list of tools like [{TOOL_SHAPE}], got {kind(value)}"))
    elif isinstance(value, list):
        seen: dict[str, int] = {}
        for i, item in enumerate(value):
            tool = _tool(item, f"{where}[{i}]", own)
            if tool is None:
                continue
            name = tool["function"].get("name")
            if isinstance(name, str) and name in seen:
                own.append((f"{where}[{i}]", f"a second function named {name!r} (the first is "
                                             f"{where}[{seen[name]}]); give each its own name"))
            seen.setdefault(name, i)
            tools.append(tool)
    if problems is None:
        _raise(own, where)
    return tools or None


def row_tools(row: dict, problems: Problems) -> list[dict] | None:
    """A row's tools: its ``tools``, or the legacy ``functions``.

    Args:
        row: the raw row.
        problems: where to append what is wrong.

    Returns:
        The normalised tools, or None when the row has none.
    """
    tools, functions = row.get("tools"), row.get("functions")
    if not missing(functions) and not missing(tools):
        problems.append(("functions", "give either tools or the legacy functions, not both"))
        return None
    if missing(tools):
        return normalise_tools(functions, problems, where="functions")
    return normalise_tools(tools, problems)


def parallel_flag(row: dict, problems: Problems) -> bool | None:
    """A row's ``parallel_tool_calls``: True, False, or None when it has none."""
    value = row.get("parallel_tool_calls")
    if missing(value):
        return None
    if type(value).__name__ in ("bool", "bool_"):  # numpy's bool_ from pandas
        return bool(value)
    problems.append(("parallel_tool_calls", f"expected true or false, got {kind(value)} "
                                            f"{quote(value)}"))
    return None


# ----------------------------------------------------------------------------- turns


def _present(value: Any) -> bool:
    value = json_list(value)
    return not missing(value) and value != [] and value != ""


def _makes_calls(turn: dict) -> bool:
    return turn.get("role") == "assistant" and (_present(turn.get("tool_calls"))
                                                or _present(turn.get("function_call")))


def _add_call(turn: Turn, name: Any, arguments: Any, call_id: str | None, name_at: str,
              args_at: str, problems: Problems) -> None:
    args = parse_arguments(arguments, args_at, problems)
    call = {"id": call_id, "type": "function",
            "function": {"name": _function_name(name, name_at, problems),
                         "arguments": {} if args is None else args}}
    turn.message.setdefault("tool_calls", []).append(call)
    turn.call_fields.append(name_at)


def _openai_call(value: Any, at: str, turn: Turn, problems: Problems) -> None:
    if not isinstance(value, dict):
        problems.append((at, f"expected a call like {CALL_SHAPE}, got {kind(value)}"))
        return
    if value.get("type", "function") not in ("function", None):
        problems.append((f"{at}.type", f'only function calls are supported, got '
                                       f'{quote(value["type"])}; use "function"'))
        return
    fn, base = value.get("function"), f"{at}.function"
    if missing(fn) and "name" in value:  # the flat {"id", "name", "arguments"} some data sets use
        fn, base = value, at
    if not isinstance(fn, dict):
        problems.append((base, f"missing or not an object; write {CALL_SHAPE}"))
        return
    call_id = _text(value.get("id"), f"{at}.id", problems)
    _add_call(turn, fn.get("name"), fn.get("arguments"), call_id, f"{base}.name",
              f"{base}.arguments", problems)


def _openai_turn(raw: dict, turn: Turn, problems: Problems) -> None:
    m, at = turn.message, turn.where
    calls, legacy = json_list(raw.get("tool_calls")), raw.get("function_call")
    if m["role"] != "assistant":
        for key in ("tool_calls", "function_call"):
            if _present(raw.get(key)):
                problems.append((f"{at}.{key}", "only assistant messages make tool calls; move "
                                                "the call into an assistant message"))
    elif _makes_calls(raw):
        m["content"] = string_field(raw.get("content"), f"{at}.content", problems, required=False)
        if _present(calls) and _present(legacy):
            problems.append((f"{at}.function_call", "give either tool_calls or the legacy "
                                                    "function_call, not both"))
        elif _present(calls):
            if not isinstance(calls, list):
                problems.append((f"{at}.tool_calls", f"expected a list of calls like "
                                                     f"[{CALL_SHAPE}], got {kind(calls)}"))
            for j, call in enumerate(calls if isinstance(calls, list) else []):
                _openai_call(_plain(call), f"{at}.tool_calls[{j}]", turn, problems)
        elif not isinstance(legacy, dict):
            problems.append((f"{at}.function_call", f"expected an object like {{\"name\": ..., "
                                                    f"\"arguments\": ...}}, got {kind(legacy)}"))
        else:
            legacy = _plain(legacy)
            _add_call(turn, legacy.get("name"), legacy.get("arguments"), None,
                      f"{at}.function_call.name", f"{at}.function_call.arguments", problems)
    if m["role"] == "tool":
        turn.result_id = _text(raw.get("tool_call_id"), f"{at}.tool_call_id", problems)
        turn.result_name = _text(raw.get("name"), f"{at}.name", problems)


def _sharegpt_turn(raw: dict, turn: Turn, problems: Problems) -> None:
    if raw.get("from") != "function_call":
        return
    at = f"{turn.where}.value"
    value = raw.get("value")
    shape = '{"name": ..., "arguments": {...}} (or a list of them, for parallel calls)'
    if isinstance(value, str):
        if (error := _json_error(value)) is not None:
            problems.append((at, f"not valid JSON ({error}): {quote(value)}; a function_call turn "
                                 f"holds {shape}"))
            return
        value = json.loads(value)
    value = _plain(value)
    calls = value if isinstance(value, list) else [value]
    if not calls or missing(value):
        problems.append((at, f"missing or empty; a function_call turn holds {shape}"))
    for j, call in enumerate(calls):
        where = f"{at}[{j}]" if isinstance(value, list) else at
        if not isinstance(call, dict):
            problems.append((where, f"expected {shape}, got {kind(call)}"))
            continue
        _add_call(turn, call.get("name"), call.get("arguments"), None, f"{where}.name",
                  f"{where}.arguments", problems)


def read_turns(value: Any, where: str, problems: Problems, *, sharegpt: bool = False,
               system_first: bool = True) -> list[Turn]:
    """Parse a row's messages, tool calls and results included, before they are linked.

    Args:
        value: the list of messages (or JSON text of one).
        where: the field in problem messages (``"messages"``, ``"conversations"``).
        problems: where to append what is wrong.
        sharegpt: ShareGPT turns (``from``/``value``; ``function_call`` and ``observation``)
            instead of OpenAI messages (``role``/``content``; ``tool_calls``, ``tool``, legacy
            ``function_call`` and ``function``).
        system_first: whether a system message may open the list.

    Returns:
        One :class:`Turn` per message that is an object; pass them to :func:`link_calls`.
    """
    value = json_list(value)
    if sharegpt:
        messages = parse_turns(value, where, "from", "value", SHAREGPT_ROLES, problems,
                               system_first=system_first,
                               own_content=lambda t: t.get("from") == "function_call")
    else:
        messages = parse_turns(value, where, "role", "content", OPENAI_ROLES, problems,
                               system_first=system_first, own_content=_makes_calls)
    raws = [(i, t) for i, t in enumerate(value if isinstance(value, list) else [])
            if isinstance(t, dict)]
    turns = []
    for (i, raw), message in zip(raws, messages):
        turn = Turn(message, f"{where}[{i}]")
        (_sharegpt_turn if sharegpt else _openai_turn)(raw, turn, problems)
        turns.append(turn)
    return turns


# ----------------------------------------------------------------------------- linking


def _declared(tools: list[dict] | None) -> dict[str, set[str] | None]:
    """Each tool's name and its declared parameter names (None: it declares no properties)."""
    out: dict[str, set[str] | None] = {}
    for tool in tools or ():
        params = tool["function"].get("parameters")
        props = params.get("properties") if isinstance(params, dict) else None
        out[tool["function"].get("name")] = set(props) if isinstance(props, dict) else None
    return out


def link_calls(turns: list[Turn], tools: list[dict] | None, problems: Problems, *,
               parallel_tool_calls: bool | None = None) -> list[Message]:
    """Give every call an id, answer every tool result with its call, check both against tools.

    Args:
        turns: the row's turns from :func:`read_turns` (several lists may be joined, e.g. a
            prompt's and a completion's).
        tools: the row's normalised tools, or None.
        problems: where to append what is wrong.
        parallel_tool_calls: the row's flag; False makes a turn with several calls a problem.

    Returns:
        The messages (weights still None where the row gave none).
    """
    declared = _declared(tools)
    used = {c["id"] for t in turns for c in t.message.get("tool_calls", ()) if c["id"]}
    fresh = (f"call_{n}" for n in itertools.count() if f"call_{n}" not in used)
    waiting: list[dict] = []  # calls made so far without a result, in order
    answered: set[str] = set()
    for turn in turns:
        m = turn.message
        for call, name_at in zip(m.get("tool_calls", ()), turn.call_fields):
            fn = call["function"]
            call["id"] = call["id"] or next(fresh)
            if tools and fn["name"] and fn["name"] not in declared:
                problems.append((name_at, f"calls {fn['name']!r}, which is not in this row's tools "
                                          f"({keys(declared)}); add its schema to tools or fix "
                                          "the name"))
            elif (params := declared.get(fn["name"])) is not None:
                fn["arguments"] = {k: v for k, v in fn["arguments"].items()
                                   if v is not None or k in params}
            waiting.append(call)
        if parallel_tool_calls is False and len(m.get("tool_calls", ())) > 1:
            problems.append((f"{turn.where}", f"{len(m['tool_calls'])} calls in one turn, but the "
                                              "row sets parallel_tool_calls to false; set it to "
                                              "true or make one call per turn"))
        if m["role"] == "tool":
            _answer(turn, waiting, answered, problems)
    return [t.message for t in turns]


def _answer(turn: Turn, waiting: list[dict], answered: set[str], problems: Problems) -> None:
    """Match a tool result to the call it answers and fill its ``tool_call_id`` and ``name``."""
    rid, rname, at = turn.result_id, turn.result_name, turn.where
    if rid is not None:
        call = next((c for c in waiting if c["id"] == rid), None)
        if call is None:
            open_ids = keys(repr(c["id"]) for c in waiting)
            why = ("was already answered by an earlier tool message; each call gets one result"
                   if rid in answered else
                   f"matches no earlier unanswered call (waiting: {open_ids}); use the id of the "
                   "call this result answers")
            problems.append((f"{at}.tool_call_id", f"{rid!r} {why}"))
            return
    elif rname is not None:
        call = next((c for c in waiting if c["function"]["name"] == rname), None)
        if call is None:
            open_names = keys(repr(c["function"]["name"]) for c in waiting)
            problems.append((f"{at}.name", f"no earlier unanswered call of {rname!r} for this "
                                           f"result to answer (waiting: {open_names}); fix the "
                                           "name or add the call"))
            return
    elif waiting:
        call = waiting[0]
    else:
        problems.append((at, "a tool result with no unanswered assistant tool call before it; "
                             "put the assistant's call (tool_calls) before it, or drop this "
                             "message"))
        return
    if rname is not None and rname != call["function"]["name"]:
        problems.append((f"{at}.name", f"{rname!r}, but the call it answers ({call['id']!r}) is "
                                       f"{call['function']['name']!r}; make the names agree"))
    waiting.remove(call)
    answered.add(call["id"])
    turn.message["tool_call_id"] = call["id"]
    turn.message["name"] = call["function"]["name"]


# ----------------------------------------------------------------------------- whole rows


def _weigh(messages: list[dict]) -> None:
    for m in messages:
        if m["weight"] is None:
            m["weight"] = int(m["role"] == "assistant")


def _raise(problems: Problems, what: str) -> None:
    if problems:
        lines = [f"{f}: {m}" if f else m for f, m in problems]
        raise DataError(f"invalid {what}:\n" + "\n".join(f"  - {line}" for line in lines),
                        field=problems[0][0], problems=lines)


def normalise_messages(messages: Any, tools: Any = None, problems: Problems | None = None, *,
                       where: str = "messages",
                       parallel_tool_calls: bool | None = None) -> list[Message]:
    """OpenAI-shaped messages (training rows and chat requests alike) in the normalised shape.

    Handles ``tool_calls`` (``arguments`` as JSON text or an object), ``role: "tool"`` with
    ``tool_call_id``, the legacy ``function_call`` / ``role: "function"``, and the weights
    (1 on assistant turns, 0 elsewhere, unless a message gives its own).

    Args:
        messages: the list of messages (or JSON text of one).
        tools: the tools offered, raw or already normalised (:func:`normalise_tools`), or None.
        problems: where to append ``(field, message)`` pairs; None raises instead.
        where: the messages' field in problem messages.
        parallel_tool_calls: False makes an assistant turn with several calls a problem.

    Returns:
        The normalised messages.

    Raises:
        DataError: ``problems`` is None and something is wrong; ``problems`` lists every
            ``"field: message"``.

    Example:
        >>> normalise_messages([
        ...     {"role": "user", "content": "Weather in Paris?"},
        ...     {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
        ...      "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
        ...     {"role": "tool", "tool_call_id": "c1", "content": "18 C"}])[2]
        {'role': 'tool', 'content': '18 C', 'weight': 0, 'tool_call_id': 'c1', 'name': 'weather'}
    """
    own: Problems = [] if problems is None else problems
    tools = normalise_tools(tools, own)
    out = link_calls(read_turns(messages, where, own), tools, own,
                     parallel_tool_calls=parallel_tool_calls)
    _weigh(out)
    if problems is None:
        _raise(own, where)
    return out


def tool_example(turns: list[Turn], row: dict, where: str, problems: Problems) -> Example:
    """A chat row's example: its turns linked against its tools, the chat checks, the flags.

    Args:
        turns: the row's turns (:func:`read_turns`).
        row: the raw row, for ``tools`` / ``functions``, ``parallel_tool_calls`` and ``system``.
        where: the field conversation-level problems are reported on.
        problems: where to append what is wrong.

    Returns:
        The :class:`~tunekit.data.schema.Example` (without ``row``), with ``tools`` and
        ``parallel_tool_calls`` when the row has them.
    """
    tools = row_tools(row, problems)
    parallel = parallel_flag(row, problems)
    messages = link_calls(turns, tools, problems, parallel_tool_calls=parallel)
    example = chat_example(messages, row, where, problems)
    if tools:
        example["tools"] = tools
    if parallel is not None:
        example["parallel_tool_calls"] = parallel
    return example


def distinct_tools(rows: list[dict], limit: int | None = None) -> list[dict]:
    """The function schemas a data set offers, each function once (first definition wins), in
    the order first seen — what a run records so that its demo and card can offer the same tools
    after the data file is gone.

    Args:
        rows: normalised examples (SFT, DPO or KTO), each with an optional ``tools`` list.
        limit: the most functions to return (None: all).

    Returns:
        The schemas, as the rows hold them.
    """
    seen: dict[str, dict] = {}
    for row in rows:
        for tool in row.get("tools") or []:
            name = (tool.get("function") or {}).get("name")
            if name and name not in seen:
                seen[name] = tool
    return list(seen.values())[:limit]
