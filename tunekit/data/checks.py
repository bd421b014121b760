"""Row checks: the value tests and parsers every format's converter shares.

Each check appends ``(field, message)`` pairs to a :data:`Problems` list instead of raising, so
one pass over the data finds every bad row; every message says the fix.
"""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Callable
from typing import Any

from .schema import Example

# Row checks. Each appends (field, message) pairs to ``problems``; every message says the fix.
Problems = list[tuple[str | None, str]]


def missing(value: Any) -> bool:
    """None, NaN (pandas, parquet) and pandas.NA all mean "no value".

    Args:
        value: a cell or field as the source gave it.

    Returns:
        Whether ``value`` is missing.
    """
    return (value is None or (isinstance(value, float) and math.isnan(value))
            or type(value).__name__ == "NAType")


def kind(value: Any) -> str:
    """What messages call a value's type: ``"an object"``, ``"a list"``, ``"a float"``…

    Args:
        value: any raw value.

    Returns:
        The type's name with its article.
    """
    return {dict: "an object", list: "a list", str: "a string"}.get(
        type(value), f"a {type(value).__name__}")


def keys(names: Any) -> str:
    """Keys or column names as messages list them.

    Args:
        names: a dict or any iterable of names.

    Returns:
        The names joined with ``", "``, or ``"none"``.
    """
    return ", ".join(map(str, names)) or "none"


# Values quoted in messages: short, and safe for any nesting (a plain repr of a list nested a
# thousand deep raises RecursionError).
def _short_repr() -> reprlib.Repr:
    r = reprlib.Repr()  # attributes, not keywords: Python 3.11's Repr takes none
    r.maxlevel, r.maxstring, r.maxother, r.maxlist, r.maxdict = 2, 40, 40, 3, 3
    return r


quote = _short_repr().repr
"""A value as messages quote it: short (``reprlib``), and safe for any nesting."""


def lone_surrogate(text: str) -> int | None:
    """Where ``text`` holds a lone UTF-16 surrogate (``"\\ud800"`` in JSON), or None.

    Such a string is valid JSON and a valid Python ``str``, but not Unicode text: it cannot be
    encoded as UTF-8, so tokenizers fail on it with an error that names no row.

    Args:
        text: the string to check.

    Returns:
        The 0-based index of the first lone surrogate, or None when the text is clean.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


def text_problem(text: str) -> str | None:
    """What is wrong with a string that is meant to be text, or None.

    Args:
        text: the string.

    Returns:
        The problem message (with the fix), or None.
    """
    at = lone_surrogate(text)
    if at is None:
        return None
    return (f"holds a lone UTF-16 surrogate ({text[at]!r} at character {at}), which is not text; "
            "the file was written from a broken string (e.g. an emoji cut in half): remove or "
            "repair that character")


def json_list(value: Any) -> Any:
    """csv cells and some Hub datasets hold message lists as JSON text; "[INST] hi" stays text.

    Args:
        value: a field that should hold a list.

    Returns:
        The parsed list when ``value`` is JSON text of a list, a numpy array's list, or
        ``value`` unchanged.
    """
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
            return parsed if isinstance(parsed, list) else value
        except (json.JSONDecodeError, RecursionError):  # not a list of turns: checked as text
            return value
    return value.tolist() if hasattr(value, "tolist") else value  # numpy arrays from pandas


def string_field(value: Any, where: str, problems: Problems, *, required: bool = True) -> str:
    """Check a field that must hold text.

    Args:
        value: the field's raw value.
        where: the field's name in problem messages (``"messages[1].content"``).
        problems: where to append what is wrong.
        required: whether a missing or blank value is a problem.

    Returns:
        The text, or ``""`` when it is missing or not a string.
    """
    if missing(value):
        if required:
            problems.append((where, "missing (or null); write the text here"))
        return ""
    if not isinstance(value, str):
        problems.append((where, f"expected a string, got {kind(value)} {quote(value)}; write "
                                "plain text (multi-part content is not supported)"))
        return ""
    if (problem := text_problem(value)) is not None:
        problems.append((where, problem))
        return ""
    if required and not value.strip():
        problems.append((where, "empty (or only whitespace); write the text or drop it"))
    return value


def parse_turns(value: Any, where: str, role_key: str, content_key: str,
                roles: dict[str, str], problems: Problems, *,
                system_first: bool = True,
                own_content: Callable[[dict], bool] | None = None) -> list[dict]:
    """Parse a list of turns into messages; ``weight`` stays None where the row gives none.

    Args:
        value: the list of turns (or JSON text of one).
        where: the field's name in problem messages (``"messages"``).
        role_key: the key that holds each turn's role (``"role"``, ShareGPT's ``"from"``).
        content_key: the key that holds each turn's text (``"content"``, ``"value"``).
        roles: the source's role names mapped to ``ROLES``.
        problems: where to append what is wrong.
        system_first: whether a system message may open the list.
        own_content: turns for which this returns True have their content checked and set by
            the caller (``content`` is left ``""``): an assistant's tool call may have none,
            a ShareGPT ``function_call`` turn holds JSON (``tunekit.data.tools``).

    Returns:
        One message dict per turn that is an object, in order.
    """
    value, shape = json_list(value), f"{{{role_key!r}: ..., {content_key!r}: ...}}"
    if missing(value) or value == []:
        problems.append((where, f"missing or empty; add a list of {shape} turns"))
        return []
    if not isinstance(value, list):
        problems.append((where, f"expected a (JSON) list of {shape} turns, got {kind(value)}"))
        return []
    allowed, out = ", ".join(roles), []
    for i, turn in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(turn, dict):
            problems.append((at, f"expected an object like {shape}, got {kind(turn)}"))
            continue
        raw = turn.get(role_key)
        role = roles.get(raw) if isinstance(raw, str) else None
        if missing(raw):
            problems.append((f"{at}.{role_key}", f"missing; use one of: {allowed}"))
        elif role is None:
            problems.append((f"{at}.{role_key}", f"unknown role {raw!r}; use one of: {allowed}"))
        elif role == "system" and (i > 0 or not system_first):
            problems.append((f"{at}.{role_key}", "a system message must be the first message; "
                                                 "move it to the start or make it a user turn"))
        content = ("" if own_content is not None and own_content(turn)
                   else string_field(turn.get(content_key), f"{at}.{content_key}", problems))
        weight = None if missing(turn.get("weight")) else turn["weight"]
        if weight is not None and (isinstance(weight, str) or weight not in (0, 1)):
            problems.append((f"{at}.weight", f"must be 0 or 1, got {quote(weight)}"))
        elif weight == 1 and role is not None and role != "assistant":
            # weight 0 on such a turn is harmless (it is never trained on); 1 would mislead.
            problems.append((f"{at}.weight", "only assistant messages can have weight 1; "
                                             "system, user and tool turns are never trained on"))
        out.append({"role": role, "content": content,
                    "weight": None if weight is None else int(weight)})
    return out


def chat_example(messages: list[dict], row: dict, where: str, problems: Problems) -> Example:
    """The checks and defaults every chat format shares.

    Args:
        messages: the parsed turns; changed in place (a row's ``system`` prepended, missing
            weights set: 1 on assistant turns, 0 elsewhere).
        row: the raw row, for its optional ``system`` field.
        where: the field conversation-level problems are reported on.
        problems: where to append what is wrong.

    Returns:
        The :class:`~tunekit.data.schema.Example` (without ``row``).
    """
    system = row.get("system")
    if not missing(system):
        if not isinstance(system, str):
            problems.append(("system", f"expected a string, got {kind(system)}"))
        elif (problem := text_problem(system)) is not None:
            problems.append(("system", problem))
        elif system.strip() and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": system, "weight": 0})
    for m in messages:
        if m["weight"] is None:
            m["weight"] = int(m["role"] == "assistant")
    if not problems:  # conversation-level checks would only echo a broken turn's problem
        roles = [m["role"] for m in messages]
        if "user" not in roles:
            problems.append((where, "no user message; add the user turn the assistant answers"))
        if "assistant" not in roles:
            problems.append((where, "no assistant message to learn from; add the reply the "
                                    "model should learn"))
        elif not any(m["weight"] for m in messages):
            problems.append((where, "every assistant message has weight 0, so there is nothing "
                                    "to learn; set weight 1 on at least one"))
    return {"messages": messages}

