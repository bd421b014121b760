"""Output folders: naming a new run's folder and never overwriting one that holds something.

Training, compare, the multi-process launcher, merge and pull all write into folders the user
may already have; this module is the one rule for all of them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from .errors import ConfigError

RUNS = Path("runs")
# A run folder's file of Trainer logs, one JSON object a line (tunekit.trainer.LogLines writes it,
# the jobs API tails it). Named here, in a module without torch, so readers need not load TRL.
LOG_FILE = "logs.jsonl"


def run_name(*parts: str | None) -> str:
    """``<part>-<part>-<YYYYmmdd-HHMMSS>`` from the non-empty parts; a Hub id or path part
    contributes its last component (``HuggingFaceTB/SmolLM2-135M`` → ``SmolLM2-135M``)."""
    names = [str(p).rstrip("/").split("/")[-1] for p in parts if p]
    return "-".join([*names, datetime.now().strftime("%Y%m%d-%H%M%S")])


def fresh_dir(stem: str, parent: str | os.PathLike = RUNS) -> Path:
    """A folder under ``parent`` named ``stem`` (``stem-2``, ``stem-3``… when taken); not created."""
    parent = Path(parent)
    out, n = parent / stem, 1
    while out.exists():
        n += 1
        out = parent / f"{stem}-{n}"
    return out


def check_new(path: str | os.PathLike, *, what: str = "output_dir", resume_hint: bool = False) -> Path:
    """``path`` as a Path, when it does not exist or is an empty folder.

    Raises:
        ConfigError: it exists and is not empty, or it (or a folder above it) is a file:
            tunekit never overwrites.
    """
    out = Path(path).expanduser()
    _check_not_a_file(out, what)
    if out.exists() and any(out.iterdir()):
        fix = "Pass resume=True to continue it, or choose another" if resume_hint else "Choose another"
        raise ConfigError(f"{what} {out} already exists and is not empty; tunekit never overwrites it. "
                          f"{fix} {what}.")
    return out


def check_resumable(path: str | os.PathLike, *, record: str, work: str, what: str = "output_dir") -> Path:
    """``path`` as a Path, when a run may be resumed (or started) in it: it is missing or empty,
    holds the run record ``record`` (a finished run), or a non-empty ``work`` folder (the
    checkpoints a run writes while it trains).

    A folder that holds other things is the user's, not a run: resuming in it would write the
    run's card and records over files of the same names.

    Raises:
        ConfigError: it (or a folder above it) is a file, or it holds things but no run.
    """
    out = Path(path).expanduser()
    _check_not_a_file(out, what)
    if not out.exists() or (out / record).is_file():
        return out
    work_dir = out / work
    if work_dir.is_dir() and any(work_dir.iterdir()):
        return out
    # A run's live log (LOG_FILE) is written from its first step, before any checkpoint: a run
    # stopped that early is still a run to resume (from the beginning).
    others = sorted(p.name for p in out.iterdir() if p != work_dir and p.name != LOG_FILE)
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise ConfigError(f"{what} {out} is not a tunekit run, so resume=True cannot continue it: it has no "
                          f"{record} and no {work}/ folder, and holds {shown}. Nothing was changed. Pass the "
                          f"folder of the run to resume, or drop resume=True and choose a new {what}.")
    return out


def make_dir(path: str | os.PathLike, *, what: str = "output_dir") -> Path:
    """Create the folder ``path`` (and the folders above it) if missing.

    Raises:
        ConfigError: it (or a folder above it) is a file, or it cannot be created.
    """
    out = Path(path).expanduser()
    _check_not_a_file(out, what)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {what} {out}: {e.strerror or e}. Choose a folder you can "
                          f"write to.") from e
    return out


def _check_not_a_file(out: Path, what: str) -> None:
    # The nearest part of the path that exists must be a folder; `Path.exists` is False for
    # anything under a file, so a file further up is found by walking up to what does exist.
    for part in (out, *out.parents):
        if part.exists() or part.is_symlink():
            if not part.is_dir():
                where = "is a file" if part == out else f"is inside {part}, which is a file"
                raise ConfigError(f"{what} {out} {where}, not a folder. Choose a folder for {what}.")
            return


def write_atomically(out: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` on a sibling temporary folder, then rename it to ``out`` (which must be
    missing or empty): an interrupted write never leaves half a folder behind."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        write(tmp)
        if out.exists():
            out.rmdir()  # empty, or check_new would have refused it
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
