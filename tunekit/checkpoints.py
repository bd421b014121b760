"""Checkpoints a run can resume from: marking the complete ones, finding the newest, clearing
the rest.

The Trainer writes a checkpoint file by file straight into ``checkpoints/checkpoint-<step>``
(weights, optimizer, scheduler, RNG state, ``trainer_state.json`` last), from private methods
that offer no way to redirect the folder, so the write cannot be made a temporary-folder rename
without rewriting it. Instead each checkpoint is marked once it is complete: after the Trainer's
``on_save`` event every file is flushed to disk and a manifest (``tunekit-complete.json``: each
file and its size) is written last, atomically. A process killed mid-save leaves a folder without
a manifest, or one whose files no longer match it (a checkpoint half-deleted by rotation), and
resuming skips it for the newest complete one.

Checkpoints without a manifest (written before tunekit marked them, or saved between the
Trainer's rotation and ``on_save``) are judged by their contents: ``trainer_state.json``, which
the Trainer writes last, must parse and name the folder's step, and every safetensors and torch
file must be whole.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["MANIFEST", "discard_after", "is_complete", "last_complete", "mark_complete", "step_of", "why_incomplete"]

MANIFEST = "tunekit-complete.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_TORCH_FILES = (".pt", ".pth", ".bin")


def step_of(folder: str | os.PathLike) -> int | None:
    """The step a ``checkpoint-<step>`` folder name carries; None for any other name."""
    match = _CHECKPOINT.match(Path(folder).name)
    return int(match.group(1)) if match else None


def mark_complete(folder: str | os.PathLike) -> Path:
    """Flush every file of a just-saved checkpoint to disk, then write its manifest.

    Call it only once the Trainer has finished writing ``folder`` (its ``on_save`` event), on
    the process that wrote it.

    Args:
        folder: the ``checkpoint-<step>`` folder.

    Returns:
        The manifest's path.
    """
    folder = Path(folder)
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        _fsync(path)
        files[path.relative_to(folder).as_posix()] = path.stat().st_size
    for sub in sorted({p.parent for p in folder.rglob("*")} | {folder}):
        _fsync_dir(sub)
    manifest = folder / MANIFEST
    tmp = folder / f".{MANIFEST}.tmp"
    with open(tmp, "w") as f:
        json.dump({"step": step_of(folder), "files": files}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, manifest)  # the manifest appears whole or not at all
    _fsync_dir(folder)
    return manifest


def why_incomplete(folder: str | os.PathLike) -> str | None:
    """Why ``folder`` cannot be resumed from, or None when it is a complete checkpoint."""
    folder = Path(folder)
    try:
        if (folder / MANIFEST).exists():
            return _manifest_problem(folder)
        return _content_problem(folder)
    except OSError as e:  # a file vanished or cannot be read while looking: not resumable
        return f"{e.filename or folder} cannot be read ({e.strerror or e})"


def is_complete(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a checkpoint the Trainer can resume from (see :func:`why_incomplete`)."""
    return why_incomplete(folder) is None


def last_complete(checkpoints: str | os.PathLike) -> Path | None:
    """The newest complete ``checkpoint-<step>`` under ``checkpoints``; None when there is none.

    Each newer, incomplete one is logged with what is wrong with it.
    """
    for folder in _by_step(checkpoints, newest_first=True):
        why = why_incomplete(folder)
        if why is None:
            return folder
        log.warning("skipping %s, an incomplete checkpoint (%s): the run was probably stopped while "
                    "saving it", folder, why)
    return None


def discard_after(checkpoints: str | os.PathLike, resume_from: Path | None) -> list[Path]:
    """Delete the checkpoints newer than ``resume_from`` (all of them when None).

    They are all incomplete (``resume_from`` is the newest complete one); left in place, the
    resumed run would write the same step into a half-written folder, and the Trainer's
    rotation would count them.

    Returns:
        The folders deleted.
    """
    after = -1 if resume_from is None else step_of(resume_from)
    gone = []
    for folder in _by_step(checkpoints, newest_first=False):
        if step_of(folder) > after:
            shutil.rmtree(folder, ignore_errors=True)
            gone.append(folder)
    return gone


def _by_step(checkpoints: str | os.PathLike, *, newest_first: bool) -> list[Path]:
    root = Path(checkpoints)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if step_of(p) is not None and p.is_dir()]
    return sorted(found, key=step_of, reverse=newest_first)


def _manifest_problem(folder: Path) -> str | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = dict(manifest["files"])
    except (ValueError, KeyError, TypeError):
        return f"{MANIFEST} is unreadable"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
    return None


def _content_problem(folder: Path) -> str | None:
    state_file = folder / "trainer_state.json"
    if not state_file.is_file():
        return "trainer_state.json is missing"
    try:
        state = json.loads(state_file.read_text())
    except ValueError:
        return "trainer_state.json is cut short"
    if not isinstance(state, dict) or state.get("global_step") != step_of(folder):
        return f"trainer_state.json does not record step {step_of(folder)}"
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        return "it holds no weights (*.safetensors)"
    for path in weights:
        why = _safetensors_problem(path)
        if why:
            return f"{path.name} {why}"
    for path in sorted(folder.iterdir()):
        if path.suffix in _TORCH_FILES and not zipfile.is_zipfile(path):
            return f"{path.name} is cut short"
    return None


def _safetensors_problem(path: Path) -> str | None:
    # The format: an 8-byte little-endian header length, a JSON header whose data_offsets say
    # where each tensor ends; the file must be exactly as long as its last tensor's end.
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return "is cut short"
        (length,) = struct.unpack("<Q", head)
        if 8 + length > size:
            return "is cut short"
        try:
            header = json.loads(f.read(length))
        except ValueError:
            return "has an unreadable header"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    if 8 + length + max(ends, default=0) != size:
        return "is cut short"
    return None


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    # A folder's entries (the new files' names) reach the disk only with the folder's own fsync.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms that cannot open folders (Windows) have nothing to flush here
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
