"""Row formats: the table of formats tunekit reads, detecting them, converting their rows.

:data:`FORMATS` is tried in order, first match wins; each :class:`Format` names the keys its
rows need, how messages describe a row, a detector and a converter to the normalised
:class:`~tunekit.data.schema.Example`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tunekit.errors import DataError

from .checks import Problems, chat_example, json_list, keys, missing, string_field
from .preferences import PREFERENCE_FORMATS, format_objective
from .schema import Example
from .sources import Source
from .tools import Turn, read_turns, tool_example

# A table of (name, keys it needs, how to describe it, detector, converter). Chat formats carry
# tool calls too (tunekit.data.tools): a row's tools, calls and results are part of its chat.


def _from_messages(row: dict, problems: Problems) -> Example:
    key = "messages" if "messages" in row else "conversations"
    return tool_example(read_turns(row.get(key), key, problems), row, key, problems)


def _from_sharegpt(row: dict, problems: Problems) -> Example:
    turns = read_turns(row.get("conversations"), "conversations", problems, sharegpt=True)
    return tool_example(turns, row, "conversations", problems)


def _is_sharegpt(row: dict) -> bool:
    turns = json_list(row.get("conversations"))
    first = next((t for t in turns if isinstance(t, dict)), {}) if isinstance(turns, list) else {}
    return "from" in first or "value" in first


def _from_alpaca(row: dict, problems: Problems) -> Example:
    instruction = string_field(row.get("instruction"), "instruction", problems)
    extra = string_field(row.get("input"), "input", problems, required=False)
    output = string_field(row.get("output"), "output", problems)
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return chat_example([{"role": "user", "content": user, "weight": 0},
                         {"role": "assistant", "content": output, "weight": 1}],
                        row, "output", problems)


def _side(row: dict, key: str, role: str, problems: Problems) -> list[Turn]:
    """One side of a prompt/completion row: a string, or a list of messages."""
    value = json_list(row.get(key))
    if isinstance(value, str) or missing(value):
        return [Turn({"role": role, "content": string_field(value, key, problems), "weight": None},
                     key)]
    return read_turns(value, key, problems, system_first=key == "prompt")


def _from_prompt_completion(row: dict, problems: Problems) -> Example:
    prompt = _side(row, "prompt", "user", problems)
    for i, turn in enumerate(prompt):
        if turn.message["weight"] == 1:
            problems.append((f"prompt[{i}].weight", "the prompt is never trained on; move this "
                                                    "message into completion"))
        turn.message["weight"] = 0
    completion = _side(row, "completion", "assistant", problems)
    # One conversation for the tool checks: a completion's results may answer the prompt's calls.
    return tool_example(prompt + completion, row, "completion", problems)


def _from_text(row: dict, problems: Problems) -> Example:
    return {"text": string_field(row.get("text"), "text", problems)}


@dataclass(frozen=True)
class Format:
    """One row format tunekit reads.

    Attributes:
        name: what ``DataReport.format`` says (``"alpaca"``).
        needs: keys every row of the format must have.
        shape: how error messages describe a row (``'{"text": ...}'``).
        detect: whether a row (or a tabular source's sample row) is in this format.
        convert: turns a row into an :class:`Example` (without ``row``), appending
            ``(field, message)`` pairs to the problems list for what is wrong.
    """

    name: str
    needs: tuple[str, ...]
    shape: str
    detect: Callable[[dict], bool]
    convert: Callable[[dict, Problems], Example]


FORMATS: list[Format] = [
    # Tried in order, first match wins (alpaca rows often carry a "text" column too). A new
    # format is one more entry: appended, or inserted before a broader one that would claim its
    # rows. The preference formats (DPO pairs, KTO's labelled completions) come first: their
    # "messages"/"conversations"/"prompt" would otherwise read as a chat format.
    *(Format(*spec) for spec in PREFERENCE_FORMATS),
    Format("messages", (), '{"messages": [{"role": ..., "content": ...}, ...], "tools": [...] '
            '(optional)}',
            lambda r: "messages" in r or "conversations" in r and not _is_sharegpt(r),
            _from_messages),
    Format("sharegpt", ("conversations",), '{"conversations": [{"from": ..., "value": ...}], '
            '"tools": ... (optional)}',
            lambda r: "conversations" in r, _from_sharegpt),
    Format("alpaca", ("instruction", "output"),
            '{"instruction": ..., "input": ... (optional), "output": ...}',
            lambda r: "instruction" in r, _from_alpaca),
    Format("prompt_completion", ("prompt", "completion"), '{"prompt": ..., "completion": ...}',
            lambda r: "prompt" in r or "completion" in r, _from_prompt_completion),
    Format("text", ("text",), '{"text": ...}', lambda r: "text" in r, _from_text),
]


def format_help() -> str:
    """Every format's name and row shape, for "use one of: …" messages.

    Returns:
        ``"messages {...}; sharegpt {...}; …"``, in :data:`FORMATS` order, the demonstration
        formats first and the preference formats (tried first, but rarer) after them.
    """
    demos = [f for f in FORMATS if format_objective(f.name) == "sft"]
    pairs = [f for f in FORMATS if format_objective(f.name) != "sft"]
    return "; ".join(f"{f.name} {f.shape}" for f in demos) + (
        "; or, for preference tuning, " + "; ".join(f"{f.name} {f.shape}" for f in pairs) if pairs else "")


def detect(row: dict) -> Format | None:
    """The first format in :data:`FORMATS` that claims ``row``.

    Args:
        row: a raw row, or a tabular source's sample row.

    Returns:
        The format, or None when no format claims the row.
    """
    return next((f for f in FORMATS if f.detect(row)), None)


def table_format(src: Source) -> Format:
    """Tabular sources share their columns, so their format is checked once, not per row.

    Args:
        src: a source with ``columns``.

    Returns:
        The format of every row.

    Raises:
        DataError: the columns match no format, or lack one the format needs.
    """
    # Peek at real values: "conversations" needs a look inside to tell sharegpt from messages.
    sample = {c: next((r[c] for _, r in src.rows if isinstance(r, dict)
                       and not missing(r.get(c))), None) for c in src.columns or []}
    fmt = detect(sample)
    if fmt is None:
        raise DataError(f"{src.label}: the columns ({keys(src.columns)}) match no format "
                        f"tunekit reads. Use one of: {format_help()}.", path=src.label)
    lacking = [k for k in fmt.needs if k not in sample]
    if lacking:
        raise DataError(f"{src.label}: missing column {keys(lacking)}; {fmt.name} data needs "
                        f"{keys(fmt.needs)}. Add the column or rename yours.", path=src.label,
                        field=lacking[0])
    return fmt

