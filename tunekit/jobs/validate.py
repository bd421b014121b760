"""Checking a job's files before it queues: every bad row found at once, reported in OpenAI's
codes with tunekit's own row-level detail."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError, TunekitError


# What each of OpenAI's method types trains on, in the words of tunekit's objectives.
NEEDS = {"sft": "chat rows ({\"messages\": [...]})",
         "dpo": "preference rows ({\"input\": {\"messages\": [...]}, \"preferred_output\": [...], "
                "\"non_preferred_output\": [...]})"}


def check_file(path: Path, *, param: str, objective: str = "sft") -> dict | None:
    """The error of a job whose file at ``path`` cannot be trained on, or None when it reads.

    Args:
        path: the file (named ``<file id>.jsonl``, so messages name the file the user uploaded).
        param: the request field that named it (``training_file`` or ``validation_file``).
        objective: what the job's method trains (``sft`` for supervised, ``dpo``); a file whose
            rows are of another kind is refused.

    Returns:
        ``{"code", "message", "param"}`` as OpenAI's job ``error``, or None.
    """
    from .. import data

    try:
        rows, report = data.read_rows(str(path))
        data.settle([report], "raise")
    except DataError as e:
        return data_error(e, param=param)
    except TunekitError as e:
        return {"code": "invalid_file_format", "message": str(e), "param": param}
    if not rows:
        return {"code": "invalid_n_examples", "message": f"{path.name} has no usable rows.", "param": param}
    found = getattr(report, "objective", "sft")
    if found != objective and objective in NEEDS:
        return {"code": "invalid_file_format", "param": param,
                "message": f"{path.name} holds {found} rows, but the job's method trains {objective}: it needs "
                           f"{NEEDS[objective]}. Upload that, or set method.type to match the file."}
    return None


def data_error(e: DataError, *, param: str) -> dict:
    """OpenAI's ``error`` for a ``DataError``: ``invalid_file_format``, its message (file, line,
    field and fix of every bad row) and the request field."""
    return {"code": "invalid_file_format", "message": str(e), "param": param}
