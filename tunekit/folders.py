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
        ConfigError: it exists and is not empty (or is a file): tunekit never overwrites.
    """
    out = Path(path).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        fix = "Pass resume=True to continue it, or choose another" if resume_hint else "Choose another"
        raise ConfigError(f"{what} {out} already exists and is not empty; tunekit never overwrites it. "
                          f"{fix} {what}.")
    return out


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
