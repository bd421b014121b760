"""Preference rows: DPO pairs and KTO's labelled completions, in the forms people bring them.

Every form is read into one of two shapes (:class:`~tunekit.data.schema.PreferenceExample`,
:class:`~tunekit.data.schema.KTOExample`)::

    {"prompt": [Message…], "chosen": [Message…], "rejected": [Message…], "tools"?: [...], "row": 3}
    {"prompt": [Message…], "completion": [Message…], "label": True, "tools"?: [...], "row": 3}

The prompt (every message weight 0) ends with the user (or tool) turn the replies answer;
``chosen``, ``rejected`` and ``completion`` hold only the assistant's reply (weight 1), the turns
the two sides share already split off into the prompt. The forms:

- ``preference`` (TRL): ``prompt`` / ``chosen`` / ``rejected`` as strings or message lists;
  ``chosen`` / ``rejected`` alone as whole conversations (the implicit prompt: the turns they
  share); Anthropic HH text (``"\\n\\nHuman: … \\n\\nAssistant: …"``) in any of them. A
  ``system`` field is prepended; ``question`` (Intel's orca_dpo_pairs) or ``instruction`` +
  ``input`` (LLaMA-Factory's alpaca pairs) stand in for ``prompt``.
- ``preference_openai``: OpenAI's preference JSONL, ``input`` (``messages``, ``tools``),
  ``preferred_output``, ``non_preferred_output``.
- ``preference_sharegpt`` (LLaMA-Factory): ``conversations`` (or ``messages``) + ``chosen`` +
  ``rejected``, each side one ``{"from", "value"}`` turn (or a list of them).
- ``kto`` (TRL): ``prompt`` / ``completion`` / ``label``; ``kto_messages`` (LLaMA-Factory):
  ``messages`` + ``label``, the last message being the completion the label judges.

KTO's ``label`` must be a boolean (``true``/``false``, or that text in a csv cell): ``1``,
``"yes"`` or a class name are refused with a message rather than guessed, since a column called
``label`` in other data is often something else.

:data:`PREFERENCE_FORMATS` holds the rows of the format table (``tunekit.data.formats`` wraps
them); :func:`objective_of` says which training objective an example is for.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from tunekit.errors import DataError

from .checks import Problems, json_list, kind, missing, quote, string_field, text_problem
from .schema import Example
from .tools import Turn, link_calls, normalise_tools, parallel_flag, read_turns, row_tools

OBJECTIVES = ("sft", "dpo", "kto")
"""The training objectives, by the rows' shape: demonstrations, preference pairs, labelled completions."""

OBJECTIVE_NAMES = {"sft": "demonstrations", "dpo": "preference pairs", "kto": "labelled completions"}

# HH text: "\n\nHuman: …\n\nAssistant: …"; a turn's own text may hold blank lines, so only the
# role markers split it.
_HH_MARKER = re.compile(r"\n\n(Human|Assistant):[ \t]?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}
_LABELS = {"true": True, "false": False}


def objective_of(example: dict) -> str:
    """The training objective an example is for, by its shape.

    Args:
        example: a normalised example (what ``read_examples`` returns).

    Returns:
        ``"dpo"`` for a pair (``chosen``/``rejected``), ``"kto"`` for a labelled completion,
        ``"sft"`` for a demonstration (``messages`` or ``text``).

    Example:
        >>> objective_of({"prompt": [], "chosen": [], "rejected": [], "row": 1})
        'dpo'
    """
    if "chosen" in example:
        return "dpo"
    if "label" in example and "completion" in example:
        return "kto"
    return "sft"


def format_objective(name: str) -> str:
    """The objective of a format in the table (``"preference_openai"`` → ``"dpo"``); ``"sft"``
    for every format that reads demonstrations."""
    return _FORMAT_OBJECTIVES.get(name, "sft")


# -- reading one side of a row ------------------------------------------------------------------


def hh_turns(text: str, where: str, problems: Problems) -> list[dict] | None:
    """Anthropic HH text as messages, or None when ``text`` is not HH text.

    Args:
        text: ``"\\n\\nHuman: …\\n\\nAssistant: …"``; a closing ``"\\n\\nAssistant:"`` with no text
            (the prompt form) is dropped.
        where: the field, for problems.
        problems: where to append what is wrong.

    Returns:
        The turns (weight None), or None when the text does not start with a ``Human:`` turn.
    """
    if not text.lstrip().startswith("Human:") or "\n\nAssistant:" not in text:
        return None
    parts = _HH_MARKER.split("\n\n" + text.lstrip())
    turns = [{"role": _HH_ROLES[role], "content": content.strip(), "weight": None}
             for role, content in zip(parts[1::2], parts[2::2])]
    if turns and turns[-1]["role"] == "assistant" and not turns[-1]["content"]:
        turns.pop()  # "…\n\nAssistant:" ends a prompt: the reply is elsewhere
    for i, turn in enumerate(turns):
        if not turn["content"]:
            problems.append((where, f"turn {i + 1} ({'Human' if turn['role'] == 'user' else 'Assistant'}:) "
                                    "is empty; write its text or drop the turn"))
    return turns


def _turns(value: Any, where: str, problems: Problems, *, role: str, sharegpt: bool = False) -> list[Turn]:
    """One side of a row, parsed (tool calls included) but not yet linked: a string (HH text, or
    one ``role`` turn), one turn object (LLaMA-Factory's sides), or a list of turns."""
    value = json_list(value)
    if isinstance(value, str):
        turns = hh_turns(value, where, problems) if text_problem(value) is None else None
        if turns is None:  # (string_field reports text that is not text)
            turns = [{"role": role, "content": string_field(value, where, problems), "weight": None}]
        return [Turn(m, where) for m in turns]
    if isinstance(value, dict):
        found: Problems = []
        turns = read_turns([value], where, found, sharegpt=sharegpt, system_first=False)
        problems += [(f.replace(f"{where}[0]", where, 1) if f else f, m) for f, m in found]
        for turn in turns:
            turn.where = where
        return turns
    if missing(value) or isinstance(value, list):
        return read_turns(value, where, problems, sharegpt=sharegpt)
    problems.append((where, f"expected text or a list of messages, got {kind(value)}"))
    return []


def _key(message: dict) -> tuple:
    calls = message.get("tool_calls")
    return (message["role"], message["content"], json.dumps(calls, sort_keys=True) if calls else None,
            message.get("tool_call_id"))


def _shared(a: Sequence[dict], b: Sequence[dict]) -> int:
    n = 0
    while n < min(len(a), len(b)) and _key(a[n]) == _key(b[n]):
        n += 1
    return n


def _strip_prompt(prompt: list[Turn], side: list[Turn]) -> tuple[list[Turn], int]:
    """A side written as the whole conversation (prompt included, as in HuggingFaceH4's
    ultrafeedback_binarized) loses its copy of the prompt; returns the side and the offset."""
    n = len(prompt)
    if n and len(side) > n and _shared([t.message for t in prompt], [t.message for t in side]) == n:
        return side[n:], n
    return side, 0


def _link(conversations: list[list[Turn]], tools: list[dict] | None, problems: Problems,
          parallel: bool | None = None) -> list[list[dict]]:
    """Each conversation's calls and results linked (``tunekit.data.tools``), as messages; a
    problem in turns two conversations share (the prompt) is reported once."""
    out, seen = [], set(problems)
    for turns in conversations:
        found: Problems = []
        out.append(link_calls(turns, tools, found, parallel_tool_calls=parallel))
        problems += [p for p in found if p not in seen]
        seen.update(found)
    return out


# -- the checks both objectives share -----------------------------------------------------------


def _check_prompt(prompt: list[dict], where: str, problems: Problems) -> None:
    for i, m in enumerate(prompt):
        if m["weight"] == 1:
            problems.append((f"{where}[{i}].weight", "the prompt is never trained on; move this "
                                                     "reply into the preferred side or drop the weight"))
        m["weight"] = 0
    if not prompt:
        problems.append((where, "missing: no turn before the replies; add the user turn they answer"))
    elif (role := prompt[-1]["role"]) not in ("user", "tool"):
        article = "an" if role == "assistant" else "a"
        problems.append((where, f"ends with {article} {role} turn; the prompt must end with the "
                                "user (or tool) turn the replies answer"))


def _check_reply(reply: list[dict], where: str, offset: int, problems: Problems) -> None:
    """``reply`` is the assistant's side after the shared turns; ``offset`` is where it starts in
    the row's own list (for the field names)."""
    if not reply:
        problems.append((where, "empty: no reply after the turns both sides share; give the "
                                "assistant's reply"))
        return
    for i, m in enumerate(reply, offset):
        if m["role"] not in ("assistant", "tool"):
            problems.append((f"{where}[{i}]", f"a {m['role']} turn in the reply; this side holds "
                                              "only the assistant's reply (the conversation before "
                                              "it belongs in the prompt, which both sides share)"))
        elif m["role"] == "assistant" and m["weight"] == 0:
            problems.append((f"{where}[{i}].weight", "weight 0 on a reply of a preference row: every "
                                                     "reply is trained on; remove the weight"))
        m["weight"] = int(m["role"] == "assistant")
    if reply[0]["role"] == "tool":
        problems.append((where, "starts with a tool turn; the reply starts with the assistant"))


def _system(row: dict, prompt: list[dict], problems: Problems) -> None:
    system = row.get("system")
    if missing(system) or (prompt and prompt[0]["role"] == "system"):
        return
    if not isinstance(system, str):
        problems.append(("system", f"expected a string, got {kind(system)}"))
    elif (problem := text_problem(system)) is not None:
        problems.append(("system", problem))
    elif system.strip():
        prompt.insert(0, {"role": "system", "content": system, "weight": 0})


def _finish(example: Example, tools: list[dict] | None) -> Example:
    if tools:
        example["tools"] = tools
    return example


def pair_example(row: dict, prompt: list[Turn] | None, chosen: list[Turn], rejected: list[Turn],
                 problems: Problems, *, names: tuple[str, str, str] = ("prompt", "chosen", "rejected"),
                 tools: list[dict] | None = None, parallel: bool | None = None) -> Example:
    """The checks and the prompt split every pair format shares.

    Args:
        row: the raw row (for its ``system`` field).
        prompt: the parsed prompt, or None when the row has none (the implicit prompt: the turns
            ``chosen`` and ``rejected`` share).
        chosen, rejected: the parsed sides (``tunekit.data.tools.read_turns``).
        problems: where to append what is wrong.
        names: the row's own names for prompt, chosen and rejected (for problem fields).
        tools: the row's normalised tools; every call is checked against them.
        parallel: the row's ``parallel_tool_calls``.

    Returns:
        ``{"prompt", "chosen", "rejected"}`` (and ``"tools"``), without ``row``.
    """
    p_name, c_name, r_name = names
    c_off = r_off = 0
    if prompt is None:
        whole_c, whole_r = _link([chosen, rejected], tools, problems, parallel)
        if problems:  # a broken turn: the checks below would only echo it
            return {"prompt": [], "chosen": whole_c, "rejected": whole_r}
        if [_key(m) for m in whole_c] == [_key(m) for m in whole_r]:
            problems.append((r_name, f"identical to {c_name}; a pair needs two different replies: "
                                     "fix the row or drop it"))
            return {"prompt": [], "chosen": whole_c, "rejected": whole_r}
        c_off = r_off = _shared(whole_c, whole_r)
        messages, good, bad = whole_c[:c_off], whole_c[c_off:], whole_r[c_off:]
        if not messages:
            if good[0]["role"] == bad[0]["role"] == "assistant":
                problems.append((p_name, f"missing; add the conversation the replies answer (a {p_name} "
                                         f"field), or give {c_name} and {r_name} as whole conversations "
                                         "that start with the same user turn"))
            else:
                problems.append((r_name, f"differs from {c_name} from the first turn on; as whole "
                                         "conversations they must share every turn before the reply "
                                         f"(or give the conversation as a {p_name} field)"))
            return {"prompt": messages, "chosen": good, "rejected": bad}
    else:
        chosen, c_off = _strip_prompt(prompt, chosen)
        rejected, r_off = _strip_prompt(prompt, rejected)
        whole_c, whole_r = _link([prompt + chosen, prompt + rejected], tools, problems, parallel)
        n = len(prompt)
        messages, good, bad = whole_c[:n], whole_c[n:], whole_r[n:]
        if problems:
            return {"prompt": messages, "chosen": good, "rejected": bad}
    _system(row, messages, problems)
    _check_prompt(messages, p_name, problems)
    _check_reply(good, c_name, c_off, problems)
    _check_reply(bad, r_name, r_off, problems)
    if not problems and [_key(m) for m in good] == [_key(m) for m in bad]:
        problems.append((r_name, f"identical to {c_name}; a pair needs two different replies: "
                                 "fix the row or drop it"))
    return _finish({"prompt": messages, "chosen": good, "rejected": bad}, tools)


def _label(value: Any, problems: Problems) -> bool:
    if isinstance(value, bool) or type(value).__name__ == "bool_":  # numpy's, from pandas
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _LABELS:  # csv cells are text
        return _LABELS[value.strip().lower()]
    if missing(value):
        problems.append(("label", "missing (or null); write true (a desirable completion) or false"))
    else:
        problems.append(("label", f"expected true or false, got {quote(value)}; "
                                  "KTO's label says whether the completion is desirable (true) or not "
                                  "(false): write a JSON boolean. A label column that means something "
                                  "else must be renamed or dropped"))
    return False


def kto_example(row: dict, prompt: list[Turn], completion: list[Turn], problems: Problems, *,
                names: tuple[str, str] = ("prompt", "completion"), offset: int | None = None,
                tools: list[dict] | None = None) -> Example:
    """The checks every KTO format shares.

    Args:
        row: the raw row (its ``label`` and ``system``).
        prompt, completion: the parsed turns.
        problems: where to append what is wrong.
        names: the row's own names for prompt and completion.
        offset: where the completion starts in the row's list (None: a list of its own, which
            may repeat the prompt first).
        tools: the row's normalised tools.

    Returns:
        ``{"prompt", "completion", "label"}`` (and ``"tools"``), without ``row``.
    """
    label = _label(row.get("label"), problems)
    if offset is None:
        completion, offset = _strip_prompt(prompt, completion)
    (whole,) = _link([prompt + completion], tools, problems)
    messages, reply = whole[:len(prompt)], whole[len(prompt):]
    if not problems:
        _system(row, messages, problems)
        _check_prompt(messages, names[0], problems)
        _check_reply(reply, names[1], offset, problems)
    return _finish({"prompt": messages, "completion": reply, "label": label}, tools)


# -- the formats --------------------------------------------------------------------------------


def _prompt_of(row: dict, problems: Problems) -> tuple[list[Turn] | None, str]:
    """A pair row's prompt and the field it came from; None when the row gives none."""
    for key in ("prompt", "question"):
        if not missing(row.get(key)):
            return _turns(row[key], key, problems, role="user"), key
    if not missing(row.get("instruction")):  # LLaMA-Factory's alpaca pairs
        text = string_field(row["instruction"], "instruction", problems)
        extra = string_field(row.get("input"), "input", problems, required=False)
        content = f"{text}\n\n{extra}" if extra.strip() else text
        return [Turn({"role": "user", "content": content, "weight": None}, "instruction")], "instruction"
    return None, "prompt"


def from_pair(row: dict, problems: Problems) -> Example:
    """A TRL-style pair: ``prompt`` (optional) / ``chosen`` / ``rejected``."""
    tools = row_tools(row, problems)
    prompt, p_name = _prompt_of(row, problems)
    chosen = _turns(row.get("chosen"), "chosen", problems, role="assistant")
    rejected = _turns(row.get("rejected"), "rejected", problems, role="assistant")
    return pair_example(row, prompt, chosen, rejected, problems, names=(p_name, "chosen", "rejected"),
                        tools=tools, parallel=parallel_flag(row, problems))


def from_openai_pair(row: dict, problems: Problems) -> Example:
    """OpenAI's preference JSONL: ``input.messages`` (+ ``tools``, ``parallel_tool_calls``),
    ``preferred_output``, ``non_preferred_output``."""
    given = row.get("input")
    if isinstance(given, list):  # some exporters write the messages straight into input
        given = {"messages": given}
    if not isinstance(given, dict):
        problems.append(("input", f'expected an object like {{"messages": [...]}}, got {kind(given)}'))
        given = {}
    tools = normalise_tools(given.get("tools"), problems, where="input.tools")
    parallel = parallel_flag(given, problems)
    prompt = _turns(given.get("messages"), "input.messages", problems, role="user")
    chosen = _turns(row.get("preferred_output"), "preferred_output", problems, role="assistant")
    rejected = _turns(row.get("non_preferred_output"), "non_preferred_output", problems, role="assistant")
    return pair_example(row, prompt, chosen, rejected, problems, tools=tools, parallel=parallel,
                        names=("input.messages", "preferred_output", "non_preferred_output"))


def _history(row: dict) -> tuple[str, bool]:
    """The conversation field of a LLaMA-Factory row, and whether its turns are ShareGPT's
    from/value (rather than role/content), sniffed from the first turn."""
    key = "conversations" if "conversations" in row else "messages"
    turns = json_list(row.get(key))
    first = next((t for t in turns if isinstance(t, dict)), {}) if isinstance(turns, list) else {}
    return key, "from" in first or "value" in first


def from_sharegpt_pair(row: dict, problems: Problems) -> Example:
    """LLaMA-Factory's ranking rows: ``conversations`` + ``chosen`` + ``rejected``."""
    key, sharegpt = _history(row)
    tools = row_tools(row, problems)
    prompt = _turns(row.get(key), key, problems, role="user", sharegpt=sharegpt)
    chosen = _turns(row.get("chosen"), "chosen", problems, role="assistant", sharegpt=sharegpt)
    rejected = _turns(row.get("rejected"), "rejected", problems, role="assistant", sharegpt=sharegpt)
    return pair_example(row, prompt, chosen, rejected, problems, names=(key, "chosen", "rejected"),
                        tools=tools)


def from_kto(row: dict, problems: Problems) -> Example:
    """TRL's unpaired preference rows: ``prompt`` / ``completion`` / ``label``."""
    tools = row_tools(row, problems)
    prompt = _turns(row.get("prompt"), "prompt", problems, role="user")
    completion = _turns(row.get("completion"), "completion", problems, role="assistant")
    return kto_example(row, prompt, completion, problems, tools=tools)


def from_kto_messages(row: dict, problems: Problems) -> Example:
    """LLaMA-Factory's KTO rows: ``messages`` + ``label``, the last message the completion."""
    key, sharegpt = _history(row)
    tools = row_tools(row, problems)
    turns = _turns(row.get(key), key, problems, role="user", sharegpt=sharegpt)
    if turns and turns[-1].message["role"] != "assistant":
        problems.append((turns[-1].where, "the last message must be the assistant's completion "
                                          "that the label judges"))
    return kto_example(row, turns[:-1], turns[-1:], problems, names=(key, key),
                       offset=max(len(turns) - 1, 0), tools=tools)


def _pairs_in(row: dict) -> bool:
    return "chosen" in row or "rejected" in row


PREFERENCE_FORMATS: list[tuple[str, tuple[str, ...], str, Callable[[dict], bool],
                               Callable[[dict, Problems], Example]]] = [
    # (name, keys every row needs, row shape, detector, converter), in the order they are tried;
    # all before the chat formats, which would read "messages"/"conversations"/"prompt" rows.
    ("preference_openai", ("input", "preferred_output", "non_preferred_output"),
     '{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}',
     lambda r: "preferred_output" in r or "non_preferred_output" in r, from_openai_pair),
    ("preference_sharegpt", ("chosen", "rejected"),
     '{"conversations": [{"from": ..., "value": ...}], "chosen": {...}, "rejected": {...}}',
     # Not with a "prompt": HuggingFaceH4's ultrafeedback_binarized has prompt, chosen, rejected
     # and a "messages" column besides (a copy of chosen), and is a TRL pair.
     lambda r: ("conversations" in r or "messages" in r) and _pairs_in(r) and "prompt" not in r,
     from_sharegpt_pair),
    ("preference", ("chosen", "rejected"), '{"prompt": ..., "chosen": ..., "rejected": ...}',
     _pairs_in, from_pair),
    ("kto_messages", ("label",), '{"messages": [..., {"role": "assistant", ...}], "label": true}',
     lambda r: "label" in r and ("messages" in r or "conversations" in r) and "completion" not in r,
     from_kto_messages),
    ("kto", ("prompt", "completion", "label"), '{"prompt": ..., "completion": ..., "label": true}',
     lambda r: "label" in r and ("completion" in r or "prompt" in r), from_kto),
]
"""The preference rows of ``tunekit.data.formats.FORMATS``, as ``Format`` field tuples."""

_FORMAT_OBJECTIVES = {"preference_openai": "dpo", "preference_sharegpt": "dpo", "preference": "dpo",
                      "kto_messages": "kto", "kto": "kto"}


# -- one objective per file ---------------------------------------------------------------------


def _spans(numbers: Sequence[int], limit: int = 8) -> str:
    """``[1, 2, 3, 7]`` → ``"1-3, 7"``; after ``limit`` spans, how many rows are left."""
    spans: list[list[int]] = []
    for n in sorted(numbers):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    text = ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in spans[:limit])
    if len(spans) > limit:
        text += f" and {sum(b - a + 1 for a, b in spans[limit:])} more"
    return text


def mixed_objectives_error(source: str, unit: str, rows: dict[str, list[int]]) -> DataError:
    """The one error for a file whose rows are for different objectives.

    Args:
        source: the file (or source) the rows are in.
        unit: what row numbers count (``"line"`` or ``"row"``).
        rows: each objective's row numbers, in the order the objectives first appear.

    Returns:
        A ``DataError`` naming the rows of each objective and the fix; ``row`` is the first row
        of the second objective.
    """
    parts = [f"{objective} ({OBJECTIVE_NAMES[objective]}) on {unit}{'s' if len(numbers) > 1 else ''} "
             f"{_spans(numbers)}" for objective, numbers in rows.items()]
    first = min(list(rows.values())[1])
    hint = (" A KTO row without a label reads as a demonstration: give every row its label."
            if {"sft", "kto"} <= rows.keys() else "")
    return DataError(f"{source}: the rows are for different training objectives: {'; '.join(parts)}. "
                     "One data set trains one objective: put each kind of row in its own file and train "
                     f"them in turn (e.g. SFT first, then DPO or KTO with base= the SFT run's folder).{hint}",
                     path=source, row=first)
