"""Training data: read it from anywhere, detect its format, normalise, validate, split.

Every source ends up as a list of ``Example`` dicts in one of two shapes::

    {"messages": [{"role": "user", "content": "...", "weight": 0},
                  {"role": "assistant", "content": "...", "weight": 1}], "row": 3}
    {"text": "...", "row": 3}

``weight`` is 1 on the assistant messages the model learns from and 0 everywhere else. ``row``
locates the example in its source (the file line for jsonl, the data row for csv, index + 1
otherwise) so later stages (token-length checks, previews) can point at it. Examples read from
a folder of several files also carry ``"file"``. No tokenizer here: this module counts
characters, not tokens.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from tunekit.errors import ConfigError, DataError

log = logging.getLogger(__name__)

Example = dict
"""A normalised row: ``{"messages": [...], "row": int}`` or ``{"text": str, "row": int}``."""

MAX_CHARS = 100_000
"""Default ``max_chars``: a row longer than this is almost surely a mistake (a whole book)."""
MAX_LISTED = 20
"""How many problems an error message lists before it says "... and N more"."""
SUPPORTED_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")
ROLES = ("system", "user", "assistant")
_ROLES = {r: r for r in ROLES}
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant",
                   "assistant": "assistant", "system": "system"}
# A Hub dataset id: "name" or "owner/name"; anything else that does not exist is a missing path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


@dataclass
class DataReport:
    """What ``read_examples`` read and what it kept.

    Attributes:
        source: where the rows came from: a file or folder path, ``"dataset <id>"``,
            ``"list of dicts"``, ``"datasets.Dataset"``, ``"pandas.DataFrame"``.
        format: ``messages``, ``sharegpt``, ``alpaca``, ``prompt_completion`` or ``text``.
        rows: rows read (blank jsonl lines are not rows; unparseable ones are).
        kept: rows that became examples.
        skipped: the problems of the rows dropped with ``on_bad_rows="skip"``.
        hub_dataset: the Hub dataset id when the data came from the Hub.
        files: the files read, for file and folder sources.
    """

    source: str
    format: str
    rows: int
    kept: int
    skipped: list[str] = field(default_factory=list)
    hub_dataset: str | None = None
    files: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for logs and the CLI."""
        dropped = f", skipped {self.rows - self.kept}" if self.kept < self.rows else ""
        return f"{self.source}: {self.kept} {self.format} examples from {self.rows} rows{dropped}"


# ---------------------------------------------------------------------------------------------
# Sources. Every reader returns _Source objects whose rows are (row number, raw value) pairs.


class _Unreadable(str):
    """A row that could not even be parsed (a bad JSON line); its text is the problem."""


@dataclass
class _Source:
    label: str  # what problem messages call it, e.g. "data/train.jsonl"
    unit: str  # "line" or "row"
    rows: list[tuple[int, Any]]
    columns: list[str] | None = None  # tabular sources: one set of keys for every row


def _read_text(path: Path, label: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: tolerate the BOM Excel writes
    except UnicodeDecodeError as e:
        raise DataError(f"{label}: not UTF-8 text ({e.reason} at byte {e.start}); save it as "
                        "UTF-8.", path=label) from e


def _read_jsonl(path: Path, label: str) -> _Source:
    rows: list[tuple[int, Any]] = []
    # Number the file's own lines so blank lines don't shift what users see; split("\n"), not
    # splitlines(), because JSON strings may hold U+2028 and friends.
    for lineno, line in enumerate(_read_text(path, label).split("\n"), 1):
        if line.strip():
            try:
                rows.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                rows.append((lineno, _Unreadable(f"invalid JSON ({e.msg} at column {e.colno}); "
                                                 "each line must be one complete JSON object")))
    return _Source(label, "line", rows)


def _read_json(path: Path, label: str) -> _Source:
    text = _read_text(path, label)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and text.lstrip().startswith("{"):
            return _read_jsonl(path, label)  # JSON Lines saved as .json: a common mix-up
        raise DataError(f"{label}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}. "
                        "A .json file must hold one list of objects.", path=label,
                        row=e.lineno) from e
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f'{label}: expected a list of objects or {{"data": [...]}} at the top '
                        f"level, got {_kind(data)}.", path=label)
    return _Source(label, "row", list(enumerate(data, 1)))


def _read_csv(path: Path, label: str) -> _Source:
    # The csv module, not pandas: cells stay strings ("NA" or "1" are text, not NaN or ints).
    reader = csv.DictReader(io.StringIO(_read_text(path, label), newline=""))
    rows: list[tuple[int, Any]] = []
    for n, row in enumerate(reader, 1):
        if None in row:  # DictReader files cells beyond the header under the key None
            row = _Unreadable(f"{len(row[None])} more cells than the header has columns; "
                              "quote cells that contain commas")
        rows.append((n, row))
    return _Source(label, "row", rows, columns=list(reader.fieldnames or []))


def _read_parquet(path: Path, label: str) -> _Source:
    import pyarrow.parquet as pq  # lazy: only parquet needs pyarrow

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several unrelated types for a damaged file
        raise DataError(f"{label}: cannot read it as parquet ({e}).", path=label) from e
    return _Source(label, "row", list(enumerate(table.to_pylist(), 1)), table.column_names)


_READERS: dict[str, Callable[[Path, str], _Source]] = {
    ".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}


def _read_path(path: Path, label: str, split: str) -> list[_Source]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.is_file() and p.suffix in _READERS and not p.name.startswith("."))
        # A folder laid out as splits (train.jsonl, test.jsonl) is read for the split asked for.
        files = [p for p in files if p.stem == split or p.stem.startswith(f"{split}-")] or files
        if not files:
            raise DataError(f"{label}: the folder has no data files; put "
                            f"{', '.join(SUPPORTED_EXTENSIONS)} files in it.", path=label)
        return [_READERS[p.suffix](p, str(Path(label) / p.name)) for p in files]
    if path.suffix not in _READERS:
        raise DataError(f"{label}: unsupported file type {path.suffix or '(no extension)'!r}; "
                        f"use one of {', '.join(SUPPORTED_EXTENSIONS)}.", path=label)
    return [_READERS[path.suffix](path, label)]


def _load_hub_dataset(repo_id: str, split: str) -> Any:
    """Load ``repo_id`` from the Hub, or from ``HF_ENDPOINT`` (e.g. ``tunekit hub serve``).

    The one place this module touches the Hub, kept apart so Hub tests can target it.
    """
    import datasets  # lazy: importing datasets takes about a second

    try:
        return datasets.load_dataset(repo_id, split=split)
    except Exception as e:  # network, 404, missing split, offline mode: all mean "can't load"
        raise DataError(f"{repo_id!r} is neither a local file or folder nor a reachable Hub "
                        f"dataset (split {split!r}): {type(e).__name__}: {e}. Check the path, or "
                        "the dataset id, split, HF_ENDPOINT and HF_TOKEN.", path=repo_id) from e


def _open(source: Any, split: str) -> tuple[str, list[_Source], str | None]:
    """Turn any supported source into (label, sources, Hub dataset id)."""
    if isinstance(source, (str, Path)):
        path, label = Path(source), str(source)
        if path.exists():
            return label, _read_path(path, label, split), None
        if isinstance(source, str) and _HUB_ID.match(source) and path.suffix not in _READERS:
            ds = _load_hub_dataset(source, split)
            return _open_dataset(ds, split, f"dataset {source}")[:2] + (source,)
        raise DataError(f"{label}: no such file or folder.", path=label)
    if isinstance(source, list):
        return "list of dicts", [_Source("list of dicts", "row", list(enumerate(source, 1)))], None
    if type(source).__module__.startswith("datasets"):
        return _open_dataset(source, split, f"datasets.{type(source).__name__}")
    if type(source).__module__.startswith("pandas") and hasattr(source, "to_dict"):
        rows = list(enumerate(source.to_dict("records"), 1))
        columns = [str(c) for c in source.columns]
        return "pandas.DataFrame", [_Source("pandas.DataFrame", "row", rows, columns)], None
    raise DataError(f"cannot read training data from a {type(source).__name__}; pass a file or "
                    "folder path, a Hub dataset id, a datasets.Dataset or a list of dicts.")


def _open_dataset(ds: Any, split: str, label: str) -> tuple[str, list[_Source], None]:
    if type(ds).__name__ in ("DatasetDict", "IterableDatasetDict"):
        if split not in ds:
            raise DataError(f"{label}: has no split {split!r}; pass split= one of "
                            f"{', '.join(map(repr, ds))}.", path=label)
        ds, label = ds[split], f"{label}[{split}]"
    rows = ds.to_list() if hasattr(ds, "to_list") else list(ds)  # IterableDataset has no to_list
    return label, [_Source(label, "row", list(enumerate(rows, 1)),
                           getattr(ds, "column_names", None))], None


# ---------------------------------------------------------------------------------------------
# Row checks. Each appends (field, message) pairs to ``problems``; every message says the fix.

Problems = list[tuple[str | None, str]]


def _missing(value: Any) -> bool:
    """None, NaN (pandas, parquet) and pandas.NA all mean "no value"."""
    return (value is None or (isinstance(value, float) and math.isnan(value))
            or type(value).__name__ == "NAType")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string"}.get(
        type(value), f"a {type(value).__name__}")


def _keys(keys: Any) -> str:
    return ", ".join(map(str, keys)) or "none"


def _json_list(value: Any) -> Any:
    """csv cells and some Hub datasets hold message lists as JSON text; "[INST] hi" stays text."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
            return parsed if isinstance(parsed, list) else value
        except json.JSONDecodeError:
            return value
    return value.tolist() if hasattr(value, "tolist") else value  # numpy arrays from pandas


def _string(value: Any, where: str, problems: Problems, *, required: bool = True) -> str:
    if _missing(value):
        if required:
            problems.append((where, "missing (or null); write the text here"))
        return ""
    if not isinstance(value, str):
        problems.append((where, f"expected a string, got {_kind(value)} {value!r:.40}; write "
                                "plain text (multi-part content is not supported)"))
        return ""
    if required and not value.strip():
        problems.append((where, "empty (or only whitespace); write the text or drop it"))
    return value


def _turns(value: Any, where: str, role_key: str, content_key: str, roles: dict[str, str],
           problems: Problems, *, system_first: bool = True) -> list[dict]:
    """Parse a list of turns into messages; ``weight`` stays None where the row gives none."""
    value, shape = _json_list(value), f"{{{role_key!r}: ..., {content_key!r}: ...}}"
    if _missing(value) or value == []:
        problems.append((where, f"missing or empty; add a list of {shape} turns"))
        return []
    if not isinstance(value, list):
        problems.append((where, f"expected a (JSON) list of {shape} turns, got {_kind(value)}"))
        return []
    allowed, out = ", ".join(roles), []
    for i, turn in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(turn, dict):
            problems.append((at, f"expected an object like {shape}, got {_kind(turn)}"))
            continue
        raw = turn.get(role_key)
        role = roles.get(raw) if isinstance(raw, str) else None
        if _missing(raw):
            problems.append((f"{at}.{role_key}", f"missing; use one of: {allowed}"))
        elif role is None:
            problems.append((f"{at}.{role_key}", f"unknown role {raw!r}; use one of: {allowed}"))
        elif role == "system" and (i > 0 or not system_first):
            problems.append((f"{at}.{role_key}", "a system message must be the first message; "
                                                 "move it to the start or make it a user turn"))
        content = _string(turn.get(content_key), f"{at}.{content_key}", problems)
        weight = None if _missing(turn.get("weight")) else turn["weight"]
        if weight is not None and (isinstance(weight, str) or weight not in (0, 1)):
            problems.append((f"{at}.weight", f"must be 0 or 1, got {weight!r}"))
        elif weight == 1 and role in ("system", "user"):
            # weight 0 on such a turn is harmless (it is never trained on); 1 would mislead.
            problems.append((f"{at}.weight", "only assistant messages can have weight 1; "
                                             "system and user turns are never trained on"))
        out.append({"role": role, "content": content,
                    "weight": None if weight is None else int(weight)})
    return out


def _chat(messages: list[dict], row: dict, where: str, problems: Problems) -> Example:
    """The checks and defaults every chat format shares."""
    system = row.get("system")
    if not _missing(system):
        if not isinstance(system, str):
            problems.append(("system", f"expected a string, got {_kind(system)}"))
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


# ---------------------------------------------------------------------------------------------
# Formats: a table of (name, keys it needs, how to describe it, detector, converter).


def _conversation(role_key: str, content_key: str, roles: dict[str, str]):
    def convert(row: dict, problems: Problems) -> Example:
        key = "messages" if "messages" in row else "conversations"
        return _chat(_turns(row.get(key), key, role_key, content_key, roles, problems), row,
                     key, problems)
    return convert


def _is_sharegpt(row: dict) -> bool:
    turns = _json_list(row.get("conversations"))
    first = next((t for t in turns if isinstance(t, dict)), {}) if isinstance(turns, list) else {}
    return "from" in first or "value" in first


def _from_alpaca(row: dict, problems: Problems) -> Example:
    instruction = _string(row.get("instruction"), "instruction", problems)
    extra = _string(row.get("input"), "input", problems, required=False)
    output = _string(row.get("output"), "output", problems)
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return _chat([{"role": "user", "content": user, "weight": 0},
                  {"role": "assistant", "content": output, "weight": 1}], row, "output", problems)


def _side(row: dict, key: str, role: str, problems: Problems) -> list[dict]:
    """One side of a prompt/completion row: a string, or a list of messages."""
    value = _json_list(row.get(key))
    if isinstance(value, str) or _missing(value):
        return [{"role": role, "content": _string(value, key, problems), "weight": None}]
    return _turns(value, key, "role", "content", _ROLES, problems, system_first=key == "prompt")


def _from_prompt_completion(row: dict, problems: Problems) -> Example:
    prompt = _side(row, "prompt", "user", problems)
    for i, m in enumerate(prompt):
        if m["weight"] == 1:
            problems.append((f"prompt[{i}].weight", "the prompt is never trained on; move this "
                                                    "message into completion"))
        m["weight"] = 0
    completion = _side(row, "completion", "assistant", problems)
    return _chat(prompt + completion, row, "completion", problems)


def _from_text(row: dict, problems: Problems) -> Example:
    return {"text": _string(row.get("text"), "text", problems)}


@dataclass(frozen=True)
class _Format:
    name: str
    needs: tuple[str, ...]  # keys every row must have
    shape: str  # how error messages describe a row
    detect: Callable[[dict], bool]
    convert: Callable[[dict, Problems], Example]


_FORMATS = (  # tried in order, first match wins (alpaca rows often carry a "text" column too)
    _Format("messages", (), '{"messages": [{"role": ..., "content": ...}, ...]}',
            lambda r: "messages" in r or "conversations" in r and not _is_sharegpt(r),
            _conversation("role", "content", _ROLES)),
    _Format("sharegpt", ("conversations",), '{"conversations": [{"from": ..., "value": ...}]}',
            lambda r: "conversations" in r, _conversation("from", "value", _SHAREGPT_ROLES)),
    _Format("alpaca", ("instruction", "output"),
            '{"instruction": ..., "input": ... (optional), "output": ...}',
            lambda r: "instruction" in r, _from_alpaca),
    _Format("prompt_completion", ("prompt", "completion"), '{"prompt": ..., "completion": ...}',
            lambda r: "prompt" in r or "completion" in r, _from_prompt_completion),
    _Format("text", ("text",), '{"text": ...}', lambda r: "text" in r, _from_text),
)
_FORMAT_HELP = "; ".join(f"{f.name} {f.shape}" for f in _FORMATS)


def _detect(row: dict) -> _Format | None:
    return next((f for f in _FORMATS if f.detect(row)), None)


def _table_format(src: _Source) -> _Format:
    """Tabular sources share their columns, so their format is checked once, not per row."""
    # Peek at real values: "conversations" needs a look inside to tell sharegpt from messages.
    sample = {c: next((r[c] for _, r in src.rows if isinstance(r, dict)
                       and not _missing(r.get(c))), None) for c in src.columns or []}
    fmt = _detect(sample)
    if fmt is None:
        raise DataError(f"{src.label}: the columns ({_keys(src.columns)}) match no format "
                        f"tunekit reads. Use one of: {_FORMAT_HELP}.", path=src.label)
    lacking = [k for k in fmt.needs if k not in sample]
    if lacking:
        raise DataError(f"{src.label}: missing column {_keys(lacking)}; {fmt.name} data needs "
                        f"{_keys(fmt.needs)}. Add the column or rename yours.", path=src.label,
                        field=lacking[0])
    return fmt


# ---------------------------------------------------------------------------------------------
# The engine.


@dataclass
class _Problem:
    label: str
    unit: str
    row: int
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f", {self.field}" if self.field else ""
        return f"{self.label}, {self.unit} {self.row}{where}: {self.message}"


def _normalise(src: _Source, max_chars: int) -> tuple[_Format, list[Example], list[_Problem]]:
    if not src.rows:
        raise DataError(f"{src.label}: no rows; the data is empty.", path=src.label)
    first = None  # (row, format) of the first recognised row; tabular data needs no vote
    if src.columns is not None:
        fmt = _table_format(src)
    else:
        objects = [(n, r) for n, r in src.rows if isinstance(r, dict)]
        first = next(((n, f) for n, r in objects if (f := _detect(r))), None)
        if first is None:
            n, r = (objects or src.rows)[0]
            got = f"keys {_keys(r)}" if isinstance(r, dict) else "no JSON objects"
            raise DataError(f"{src.label}: no row is in a format tunekit reads ({src.unit} {n} "
                            f"has {got}). Use one of: {_FORMAT_HELP}.", path=src.label, row=n)
        fmt = first[1]
    examples: list[Example] = []
    bad: list[_Problem] = []
    for n, raw in src.rows:
        problems: Problems = []
        row_fmt = (fmt if first is None else _detect(raw)) if isinstance(raw, dict) else None
        if isinstance(raw, _Unreadable):
            problems.append((None, str(raw)))
        elif not isinstance(raw, dict):
            problems.append((None, f"expected an object, got {_kind(raw)}; each row must be "
                                   f"one object like {fmt.shape}"))
        elif row_fmt is None:
            problems.append((None, f"keys {_keys(raw)} match no format; use one of: "
                                   f"{_FORMAT_HELP}"))
        elif row_fmt is not fmt:
            problems.append((None, f"this row is {row_fmt.name} but {src.unit} {first[0]} is "
                                   f"{fmt.name}; use one format per file ({fmt.shape})"))
        elif lacking := [k for k in fmt.needs if k not in raw]:
            problems.append((lacking[0], f"missing; {fmt.name} rows need {_keys(fmt.needs)}"))
        else:
            example = fmt.convert(raw, problems)
            chars = sum(len(m["content"]) for m in example.get("messages", ()))
            chars += len(example.get("text", ""))
            if chars > max_chars:
                problems.append((None, f"{chars:,} characters, over max_chars={max_chars:,}; "
                                       "shorten or split it, or raise max_chars"))
            if not problems:
                examples.append({**example, "row": n})
        bad += [_Problem(src.label, src.unit, n, f, m) for f, m in problems]
    return fmt, examples, bad


def read_examples(
    source: Any,
    *,
    on_bad_rows: Literal["raise", "skip"] = "raise",
    split: str = "train",
    max_chars: int = MAX_CHARS,
) -> tuple[list[Example], DataReport]:
    """Read training data from anywhere, in any common format, as normalised examples.

    Args:
        source: a ``.jsonl``/``.json``/``.csv``/``.parquet`` path, a folder of them (its
            ``{split}.*`` files if it has any, otherwise all, in sorted order), a Hub dataset id
            (``"user/name"``, when no such local path exists; ``HF_ENDPOINT`` is honoured), a
            ``datasets.Dataset``/``DatasetDict``, a ``pandas.DataFrame`` or a list of dicts.
        on_bad_rows: ``"raise"`` stops on any bad row, listing them all; ``"skip"`` drops them,
            records them in ``report.skipped`` and logs a warning.
        split: the split of a Hub dataset, ``DatasetDict`` or split-laid-out folder.
        max_chars: rows with more characters than this are bad rows (likely a mistake).

    Returns:
        The examples (see the module docstring for their shape) and a ``DataReport``.

    Raises:
        DataError: the source cannot be read, is empty, matches no format, has bad rows (with
            ``"raise"``), or no rows remain. ``path``/``row``/``field`` locate the first problem.
        ConfigError: ``on_bad_rows`` or ``max_chars`` is invalid.

    Example:
        >>> examples, report = read_examples("examples/data/formats/alpaca.csv")
        >>> examples[0]["messages"][-1]["role"], report.format
        ('assistant', 'alpaca')
    """
    if on_bad_rows not in ("raise", "skip"):
        raise ConfigError(f'on_bad_rows must be "raise" or "skip", got {on_bad_rows!r}')
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
        raise ConfigError(f"max_chars must be a positive integer, got {max_chars!r}")
    label, sources, hub_id = _open(source, split)
    first_fmt, examples, bad, rows = None, [], [], 0
    for src in sources:
        fmt, kept, problems = _normalise(src, max_chars)
        if first_fmt and fmt.name != first_fmt[1]:
            raise DataError(f"{label}: {src.label} is {fmt.name} but {first_fmt[0]} is "
                            f"{first_fmt[1]}; use one format for all files.", path=src.label)
        first_fmt = first_fmt or (src.label, fmt.name)
        if len(sources) > 1:  # rows restart in each file, so say which file each came from
            kept = [{**e, "file": src.label} for e in kept]
        examples, bad, rows = examples + kept, bad + problems, rows + len(src.rows)
    files = [s.label for s in sources] if isinstance(source, (str, Path)) and not hub_id else []
    report = DataReport(label, first_fmt[1], rows, len(examples), hub_dataset=hub_id, files=files)
    n_bad = rows - len(examples)
    if bad and on_bad_rows == "raise":
        listed = [str(p) for p in bad[:MAX_LISTED]]
        listed += [f"... and {len(bad) - MAX_LISTED} more"] if len(bad) > MAX_LISTED else []
        fix = (f'Fix these rows, or pass on_bad_rows="skip" to train on the {len(examples):,} '
               "good rows." if examples else "Fix these rows; none can be used as they are.")
        message = "\n".join([f"{label}: {n_bad:,} of {rows:,} rows cannot be used:",
                             *(f"  - {line}" for line in listed), fix])
        raise DataError(message, path=bad[0].label, row=bad[0].row, field=bad[0].field,
                        problems=listed)
    if bad:
        report.skipped = [str(p) for p in bad]
        log.warning("%s: skipped %d of %d rows that cannot be used; first: %s", label, n_bad,
                    rows, bad[0])
    if not examples:
        raise DataError(f"{label}: no usable rows remain (all {rows:,} were skipped); first "
                        f"problem: {bad[0]}.", path=label)
    log.info("%s", report.summary())
    return examples, report


def split_examples(
    examples: list[Example], eval_split: float | int = 0.1, *, seed: int = 42
) -> tuple[list[Example], list[Example]]:
    """Split examples into train and eval sets, the same way every time for a seed.

    Which examples go to eval is drawn with ``random.Random(seed)``; both lists keep the input
    order.

    Args:
        examples: what ``read_examples`` returned.
        eval_split: a fraction (``0 < x < 1``, rounded down) or a count (int ``>= 1``) of
            examples to hold out; ``0`` holds out none. Train always keeps at least one example,
            so small data sets may get an empty eval list (e.g. 9 rows with 0.1): the caller
            decides whether to train without evaluation.
        seed: the shuffle seed.

    Returns:
        ``(train, eval)``.

    Raises:
        ConfigError: ``eval_split`` is neither a fraction in (0, 1) nor a non-negative int.

    Example:
        >>> train, held = split_examples([{"text": str(i), "row": i} for i in range(20)], 0.1)
        >>> len(train), len(held)
        (18, 2)
    """
    fraction = isinstance(eval_split, float) and 0 < eval_split < 1
    count = isinstance(eval_split, int) and not isinstance(eval_split, bool) and eval_split >= 0
    if not (fraction or count or eval_split == 0.0 and isinstance(eval_split, float)):
        raise ConfigError(f"eval_split must be a fraction between 0 and 1 (e.g. 0.1) or a number "
                          f"of examples (e.g. 50), got {eval_split!r}")
    n = len(examples)
    # The epsilon keeps float noise (0.29 * 100 = 28.999...) from losing a row.
    wanted = math.floor(n * eval_split + 1e-9) if fraction else int(eval_split)
    n_eval = max(0, min(wanted, n - 1))
    if count and n_eval < wanted:
        log.warning("eval_split=%d but only %d examples; holding out %d", wanted, n, n_eval)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:n_eval])
    return ([e for i, e in enumerate(examples) if i not in held],
            [e for i, e in enumerate(examples) if i in held])
