"""The reader: any source to normalised, validated examples, and the train/eval split.

``read_examples`` opens the source (``tunekit.data.sources``), recognises and converts each
row (``tunekit.data.formats``), and reports every bad row at once (``tunekit.data.problems``).
The rows' shape also settles the training objective (``DataReport.objective``): demonstrations
(SFT), preference pairs (DPO) or labelled completions (KTO), one per data set.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tunekit.errors import ConfigError, DataError

from .checks import Problems, keys, kind
from .formats import Format, detect, format_help, table_format
from .preferences import OBJECTIVE_NAMES, format_objective, mixed_objectives_error
from .problems import RowProblem, bad_rows_error, skipped_message
from .schema import Example
from .sources import Source, Unreadable, open_source

# The package's name, not this module's: the logger users configure stays "tunekit.data".
log = logging.getLogger("tunekit.data")

MAX_CHARS = 100_000
"""Default ``max_chars``: a row longer than this is almost surely a mistake (a whole book)."""


@dataclass
class DataReport:
    """What ``read_examples`` read and what it kept.

    Attributes:
        source: where the rows came from: a file or folder path, ``"dataset <id>"``,
            ``"list of dicts"``, ``"datasets.Dataset"``, ``"pandas.DataFrame"``.
        format: the format's name in ``tunekit.data.FORMATS``: ``messages``, ``sharegpt``,
            ``alpaca``, ``prompt_completion``, ``text``; for preference data ``preference``,
            ``preference_openai``, ``preference_sharegpt``, ``kto`` or ``kto_messages``.
        rows: rows read (blank jsonl lines are not rows; unparseable ones are).
        kept: rows that became examples.
        skipped: the problems of the rows dropped with ``on_bad_rows="skip"``.
        hub_dataset: the Hub dataset id when the data came from the Hub.
        files: the files read, for file and folder sources.
        unit: what row numbers count: ``"line"`` (jsonl) or ``"row"``.
        problems: every problem found in these rows so far, by any stage: reading here, then
            tokenisation (``tunekit.templates.encode_rows``); :func:`settle` reports them.
        objective: what the rows train: ``"sft"`` (demonstrations), ``"dpo"`` (preference
            pairs) or ``"kto"`` (completions labelled desirable or not), from the format.
    """

    source: str
    format: str
    rows: int
    kept: int
    skipped: list[str] = field(default_factory=list)
    hub_dataset: str | None = None
    files: list[str] = field(default_factory=list)
    unit: str = "row"
    problems: list[RowProblem] = field(default_factory=list)
    objective: str = "sft"

    def add(self, problems: Sequence[RowProblem]) -> None:
        """Record problems a later stage found in rows of this source."""
        self.problems.extend(problems)

    @property
    def bad_rows(self) -> int:
        """Rows with at least one problem (a row may have several)."""
        return len({(p.source, p.row) for p in self.problems})

    def summary(self) -> str:
        """One line for logs and the CLI."""
        dropped = f", skipped {self.rows - self.kept}" if self.kept < self.rows else ""
        trains = (f"; objective {self.objective} ({OBJECTIVE_NAMES[self.objective]})"
                  if self.objective != "sft" else "")
        return f"{self.source}: {self.kept} {self.format} examples from {self.rows} rows{dropped}{trains}"


# The engine.


def _check_objectives(src: Source) -> None:
    """Rows for different objectives (demonstrations and pairs, say) in one source are one error
    naming the rows of each, not a bad row each: which kind is the mistake is the user's call."""
    rows: dict[str, list[int]] = {}
    for n, raw in src.rows:
        if isinstance(raw, dict) and (fmt := detect(raw)) is not None:
            rows.setdefault(format_objective(fmt.name), []).append(n)
    if len(rows) > 1:
        raise mixed_objectives_error(src.label, src.unit, rows)


def _chars(example: Example) -> int:
    turns = [m for key in ("messages", "prompt", "chosen", "rejected", "completion")
             for m in example.get(key, ())]
    return sum(len(m["content"]) for m in turns) + len(example.get("text", ""))


def _normalise(src: Source, max_chars: int) -> tuple[Format, list[Example], list[RowProblem]]:
    if not src.rows:
        raise DataError(f"{src.label}: no rows; the data is empty.", path=src.label)
    first = None  # (row, format) of the first recognised row; tabular data needs no vote
    if src.columns is not None:
        fmt = table_format(src)
    else:
        objects = [(n, r) for n, r in src.rows if isinstance(r, dict)]
        first = next(((n, f) for n, r in objects if (f := detect(r))), None)
        if first is None:
            n, r = (objects or src.rows)[0]
            got = f"keys {keys(r)}" if isinstance(r, dict) else "no JSON objects"
            raise DataError(f"{src.label}: no row is in a format tunekit reads ({src.unit} {n} "
                            f"has {got}). Use one of: {format_help()}.", path=src.label, row=n)
        fmt = first[1]
        _check_objectives(src)
    examples: list[Example] = []
    bad: list[RowProblem] = []
    for n, raw in src.rows:
        problems: Problems = []
        row_fmt = (fmt if first is None else detect(raw)) if isinstance(raw, dict) else None
        if isinstance(raw, Unreadable):
            problems.append((None, str(raw)))
        elif not isinstance(raw, dict):
            problems.append((None, f"expected an object, got {kind(raw)}; each row must be "
                                   f"one object like {fmt.shape}"))
        elif row_fmt is None:
            problems.append((None, f"keys {keys(raw)} match no format; use one of: "
                                   f"{format_help()}"))
        elif row_fmt is not fmt:
            problems.append((None, f"this row is {row_fmt.name} but {src.unit} {first[0]} is "
                                   f"{fmt.name}; use one format per file ({fmt.shape})"))
        elif lacking := [k for k in fmt.needs if k not in raw]:
            problems.append((lacking[0], f"missing; {fmt.name} rows need {keys(fmt.needs)}"))
        else:
            example = fmt.convert(raw, problems)
            chars = _chars(example)
            if chars > max_chars:
                problems.append((None, f"{chars:,} characters, over max_chars={max_chars:,}; "
                                       "shorten or split it, or raise max_chars"))
            if not problems:
                examples.append({**example, "row": n})
        bad += [RowProblem(src.label, n, f, m, src.unit) for f, m in problems]
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
        The examples (see ``tunekit.data``'s docstring for their shape) and a ``DataReport``.

    Raises:
        DataError: the source cannot be read, is empty, matches no format, mixes rows for
            different objectives (always, whatever ``on_bad_rows``), has bad rows (with
            ``"raise"``), or no rows remain. ``path``/``row``/``field`` locate the first problem.
        ConfigError: ``on_bad_rows`` or ``max_chars`` is invalid.

    Example:
        >>> examples, report = read_examples("examples/data/formats/alpaca.csv")
        >>> examples[0]["messages"][-1]["role"], report.format
        ('assistant', 'alpaca')
    """
    check_on_bad_rows(on_bad_rows)
    examples, report = read_rows(source, split=split, max_chars=max_chars)
    settle([report], on_bad_rows)
    return examples, report


def read_rows(source: Any, *, split: str = "train", max_chars: int = MAX_CHARS) -> tuple[list[Example], DataReport]:
    """:func:`read_examples` without the verdict: the rows that passed the checks so far, and a
    report whose ``problems`` list the others. For callers that check more (token lengths)
    before reporting every bad row at once with :func:`settle`.

    Raises:
        DataError: the source cannot be read, is empty or matches no format (not row problems).
        ConfigError: ``max_chars`` is invalid.
    """
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
        raise ConfigError(f"max_chars must be a positive integer, got {max_chars!r}")
    label, sources, hub_id = open_source(source, split)
    first_fmt, examples, bad, rows = None, [], [], 0
    for src in sources:
        fmt, kept, problems = _normalise(src, max_chars)
        if first_fmt and fmt.name != first_fmt[1]:
            ours, theirs = format_objective(fmt.name), format_objective(first_fmt[1])
            fix = ("use one format for all files" if ours == theirs else
                   f"those train different objectives ({ours}, {theirs}): keep one kind of row in "
                   "a data set and train the other separately")
            raise DataError(f"{label}: {src.label} is {fmt.name} but {first_fmt[0]} is "
                            f"{first_fmt[1]}; {fix}.", path=src.label)
        first_fmt = first_fmt or (src.label, fmt.name)
        if len(sources) > 1:  # rows restart in each file, so say which file each came from
            kept = [{**e, "file": src.label} for e in kept]
        examples, bad, rows = examples + kept, bad + problems, rows + len(src.rows)
    files = [s.label for s in sources] if isinstance(source, (str, Path)) and not hub_id else []
    report = DataReport(label, first_fmt[1], rows, len(examples), hub_dataset=hub_id, files=files,
                        unit=sources[0].unit, problems=bad, objective=format_objective(first_fmt[1]))
    return examples, report


def settle(reports: Sequence[DataReport], on_bad_rows: Literal["raise", "skip"] = "raise") -> None:
    """The verdict on every problem the reports hold, once, after every check has run.

    With ``"raise"``, one ``DataError`` lists them all (each source's section in the same
    words, rows in order); with ``"skip"`` each report records its problems in ``skipped``,
    counts its ``kept`` rows and logs one warning.

    Raises:
        DataError: bad rows with ``"raise"``; or a source with no usable row left.
    """
    check_on_bad_rows(on_bad_rows)
    for report in reports:
        report.problems.sort(key=lambda p: (p.source or "", p.row if p.row is not None else -1))
    bad = [r for r in reports if r.problems]
    if bad and on_bad_rows == "raise":
        errors = [bad_rows_error(r.problems, source=r.source, total=r.rows, kept=r.rows - r.bad_rows)
                  for r in bad]
        if len(errors) == 1:
            raise errors[0]
        first = errors[0]
        raise DataError("\n".join(str(e) for e in errors), path=first.path, row=first.row, field=first.field,
                        problems=[p for e in errors for p in e.problems])
    for report in reports:
        if report.problems:
            report.kept = report.rows - report.bad_rows
            report.skipped = [str(p) for p in report.problems]
            log.warning("%s", skipped_message(report.problems, source=report.source, total=report.rows,
                                              kept=report.kept))
        if not report.kept:
            first = f"; first problem: {report.problems[0]}" if report.problems else ""
            raise DataError(f"{report.source}: no usable rows remain (all {report.rows:,} were skipped){first}.",
                            path=report.source)
        log.info("%s", report.summary())


def check_on_bad_rows(on_bad_rows: str) -> None:
    """Raises ConfigError unless ``on_bad_rows`` is ``"raise"`` or ``"skip"``."""
    if on_bad_rows not in ("raise", "skip"):
        raise ConfigError(f'on_bad_rows must be "raise" or "skip", got {on_bad_rows!r}')


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
