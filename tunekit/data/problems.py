"""Bad-row reports, shared with ``tunekit.templates`` so a row is described the same way
whichever stage rejects it.

Each bad row is a :class:`RowProblem` (file, line or row, field, what to do); all of them go
into one error from :func:`bad_rows_error`, or one warning from :func:`skipped_message` when the
caller skips bad rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tunekit.errors import DataError

MAX_LISTED = 20
"""How many problems an error message lists before it says "... and N more"."""


@dataclass(frozen=True)
class RowProblem:
    """One thing wrong with one row, located as precisely as it is known.

    ``str()`` gives the line error messages list: ``"data.jsonl, line 3, messages[1].role:
    unknown role 'bot'; use one of: system, user, assistant, tool, function"``.

    Attributes:
        source: the file (or source description) the row came from; None when unknown.
        row: the row's 1-based line or row number; None when unknown.
        field: the field that is wrong (``"messages[1].role"``), None for the whole row.
        message: what is wrong and what to do about it.
        unit: what ``row`` counts: ``"line"`` (jsonl) or ``"row"``.
    """

    source: str | None
    row: int | None
    field: str | None
    message: str
    unit: str = "row"

    def __str__(self) -> str:
        where = [self.source] if self.source else []
        where.append(f"{self.unit} {self.row}" if self.row is not None else f"a {self.unit}")
        if self.field:
            where.append(self.field)
        return f"{', '.join(where)}: {self.message}"

    def error(self) -> DataError:
        """This problem alone as a ``DataError`` (for code that handles one row)."""
        return DataError(str(self), path=self.source, row=self.row, field=self.field)


def bad_rows_error(problems: Sequence[RowProblem], *, source: str, total: int,
                   kept: int) -> DataError:
    """The one error for data with bad rows: every problem (up to ``MAX_LISTED``) and the fix.

    Args:
        problems: what is wrong, in row order; a row may have several. Must not be empty.
        source: what the header names (the file, folder or data set).
        total: rows in the source.
        kept: rows without problems.

    Returns:
        A ``DataError`` whose ``path``, ``row`` and ``field`` locate the first problem and whose
        ``problems`` are the listed lines (with a closing ``"... and N more"``).

    Example:
        >>> raise bad_rows_error(problems, source="chats.jsonl", total=4, kept=2)  # doctest: +SKIP
        DataError: chats.jsonl: 2 of 4 rows cannot be used:
          - chats.jsonl, line 2, messages: no assistant message to learn from; ...
        Fix these rows, or pass on_bad_rows="skip" to train on the 2 good rows.
    """
    listed = [str(p) for p in problems[:MAX_LISTED]]
    listed += [f"... and {len(problems) - MAX_LISTED} more"] if len(problems) > MAX_LISTED else []
    fix = (f'Fix these rows, or pass on_bad_rows="skip" to train on the {kept:,} good rows.'
           if kept else "Fix these rows; none can be used as they are.")
    message = "\n".join([f"{source}: {total - kept:,} of {total:,} rows cannot be used:",
                         *(f"  - {line}" for line in listed), fix])
    first = problems[0]
    return DataError(message, path=first.source, row=first.row, field=first.field,
                     problems=listed)


def skipped_message(problems: Sequence[RowProblem], *, source: str, total: int,
                    kept: int) -> str:
    """The warning logged when ``on_bad_rows="skip"`` drops rows (``problems`` not empty)."""
    return (f"{source}: skipped {total - kept} of {total} rows that cannot be used; first: "
            f"{problems[0]}")

