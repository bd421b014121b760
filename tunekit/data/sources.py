"""Sources: opening files, folders, Hub data sets, ``datasets`` and ``pandas`` objects.

Every source becomes :class:`Source` objects whose rows are (row number, raw value) pairs, for
``tunekit.data.formats`` to recognise and convert. Rows that cannot even be parsed (a bad JSON
line, a csv row with too many cells) stay in place as :class:`Unreadable` text, so they are
reported with the rest.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunekit.errors import DataError
from tunekit.hubid import is_hub_id

from .checks import kind

SUPPORTED_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")


class Unreadable(str):
    """A row that could not even be parsed (a bad JSON line); its text is the problem."""


@dataclass
class Source:
    """The rows of one file or in-memory source, before their format is known.

    Attributes:
        label: what problem messages call it, e.g. ``"data/train.jsonl"``.
        unit: what row numbers count: ``"line"`` (jsonl) or ``"row"``.
        rows: (1-based row number, raw value) pairs; a raw value is usually a dict, or an
            :class:`Unreadable` for a row that could not be parsed.
        columns: the column names of a tabular source (csv, parquet, data sets, data frames),
            one set of keys for every row; None for sources whose rows may differ.
    """

    label: str  # what problem messages call it, e.g. "data/train.jsonl"
    unit: str  # "line" or "row"
    rows: list[tuple[int, Any]]
    columns: list[str] | None = None  # tabular sources: one set of keys for every row


# Python's json parser gives up near 1,000 levels with a RecursionError; no chat row is nested
# more than a few levels, so such a row is a mistake (or an attack), reported like any bad row.
_TOO_DEEP = ("nested too deeply to be a training row (about 1,000 levels of lists or objects); "
             "each row must be one flat object like {\"messages\": [...]}")


def _read_text(path: Path, label: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: tolerate the BOM Excel writes
    except UnicodeDecodeError as e:
        raise DataError(f"{label}: not UTF-8 text ({e.reason} at byte {e.start}); save it as "
                        "UTF-8.", path=label) from e


def _read_jsonl(path: Path, label: str) -> Source:
    rows: list[tuple[int, Any]] = []
    # Number the file's own lines so blank lines don't shift what users see; split("\n"), not
    # splitlines(), because JSON strings may hold U+2028 and friends.
    for lineno, line in enumerate(_read_text(path, label).split("\n"), 1):
        if line.strip():
            try:
                rows.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                rows.append((lineno, Unreadable(f"invalid JSON ({e.msg} at column {e.colno}); "
                                                "each line must be one complete JSON object")))
            except RecursionError:
                rows.append((lineno, Unreadable(_TOO_DEEP)))
    return Source(label, "line", rows)


def _read_json(path: Path, label: str) -> Source:
    text = _read_text(path, label)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and text.lstrip().startswith("{"):
            return _read_jsonl(path, label)  # JSON Lines saved as .json: a common mix-up
        raise DataError(f"{label}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}. "
                        "A .json file must hold one list of objects.", path=label,
                        row=e.lineno) from e
    except RecursionError:
        raise DataError(f"{label}: {_TOO_DEEP}. A .json file must hold one list of objects.",
                        path=label) from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f'{label}: expected a list of objects or {{"data": [...]}} at the top '
                        f"level, got {kind(data)}.", path=label)
    return Source(label, "row", list(enumerate(data, 1)))


def _read_csv(path: Path, label: str) -> Source:
    # The csv module, not pandas: cells stay strings ("NA" or "1" are text, not NaN or ints).
    reader = csv.DictReader(io.StringIO(_read_text(path, label), newline=""))
    rows: list[tuple[int, Any]] = []
    for n, row in enumerate(reader, 1):
        if None in row:  # DictReader files cells beyond the header under the key None
            row = Unreadable(f"{len(row[None])} more cells than the header has columns; "
                             "quote cells that contain commas")
        rows.append((n, row))
    return Source(label, "row", rows, columns=list(reader.fieldnames or []))


def _read_parquet(path: Path, label: str) -> Source:
    import pyarrow.parquet as pq  # lazy: only parquet needs pyarrow

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several unrelated types for a damaged file
        raise DataError(f"{label}: cannot read it as parquet ({e}).", path=label) from e
    return Source(label, "row", list(enumerate(table.to_pylist(), 1)), table.column_names)


_READERS: dict[str, Callable[[Path, str], Source]] = {
    ".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}


def _read_path(path: Path, label: str, split: str) -> list[Source]:
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


def open_source(source: Any, split: str) -> tuple[str, list[Source], str | None]:
    """Turn any supported source into (label, sources, Hub dataset id).

    Args:
        source: a file or folder path, a Hub dataset id, a ``datasets`` object, a
            ``pandas.DataFrame`` or a list of dicts (see ``read_examples``).
        split: the split of a Hub dataset, ``DatasetDict`` or split-laid-out folder.

    Returns:
        ``(label, sources, hub_id)``: what messages call the whole source, one :class:`Source`
        per file (or one for an in-memory source), and the Hub dataset id or None.

    Raises:
        DataError: the path does not exist, a file cannot be read or has an unsupported type,
            the folder has no data files, the Hub dataset cannot be loaded, or the split is
            missing.
    """
    if isinstance(source, (str, Path)):
        path, label = Path(source), str(source)
        if path.exists():
            return label, _read_path(path, label, split), None
        # Data sets may be bare names ("squad"); anything else that does not exist is a
        # missing path.
        hub_id = is_hub_id(source, owner_required=False) and path.suffix not in _READERS
        if isinstance(source, str) and hub_id:
            ds = _load_hub_dataset(source, split)
            return _open_dataset(ds, split, f"dataset {source}")[:2] + (source,)
        raise DataError(f"{label}: no such file or folder.", path=label)
    if isinstance(source, list):
        return "list of dicts", [Source("list of dicts", "row", list(enumerate(source, 1)))], None
    if type(source).__module__.startswith("datasets"):
        return _open_dataset(source, split, f"datasets.{type(source).__name__}")
    if type(source).__module__.startswith("pandas") and hasattr(source, "to_dict"):
        rows = list(enumerate(source.to_dict("records"), 1))
        columns = [str(c) for c in source.columns]
        return "pandas.DataFrame", [Source("pandas.DataFrame", "row", rows, columns)], None
    raise DataError(f"cannot read training data from a {type(source).__name__}; pass a file or "
                    "folder path, a Hub dataset id, a datasets.Dataset or a list of dicts.")


def _open_dataset(ds: Any, split: str, label: str) -> tuple[str, list[Source], None]:
    if type(ds).__name__ in ("DatasetDict", "IterableDatasetDict"):
        if split not in ds:
            raise DataError(f"{label}: has no split {split!r}; pass split= one of "
                            f"{', '.join(map(repr, ds))}.", path=label)
        ds, label = ds[split], f"{label}[{split}]"
    rows = ds.to_list() if hasattr(ds, "to_list") else list(ds)  # IterableDataset has no to_list
    return label, [Source(label, "row", list(enumerate(rows, 1)),
                          getattr(ds, "column_names", None))], None

