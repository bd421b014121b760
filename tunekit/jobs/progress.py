"""What a job's run folder says about its progress: the Trainer's logs as it writes them
(``logs.jsonl``) and the log history in its checkpoints (``trainer_state.json``), turned into
OpenAI's step metrics, events and the result CSV."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

# The columns of OpenAI's step-metrics file (``result_files``), in its order.
CSV_COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy",
               "full_valid_loss", "full_valid_mean_token_accuracy")


class Tail:
    """Follows a run's ``logs.jsonl`` as the Trainer appends to it: each :meth:`read` adds the
    lines completed since the last and returns every entry read so far.

    Args:
        path: the file (it may not exist yet).
    """

    def __init__(self, path: Path):
        self.path, self.offset, self.entries = Path(path), 0, []

    def read(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return self.entries
        end = chunk.rfind(b"\n") + 1  # a line still being written waits for the next read
        self.offset += end
        for line in chunk[:end].splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line a killed process cut short
            if isinstance(entry, dict):
                self.entries.append(entry)
        return self.entries


def trainer_state(checkpoint: Path) -> dict | None:
    """A checkpoint's ``trainer_state.json``, or None when it is missing or half-written."""
    try:
        return json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None


def steps(log_history: list[dict]) -> dict[int, dict]:
    """OpenAI's metrics per step from the Trainer's log history: ``train_loss`` (and
    ``train_mean_token_accuracy`` when TRL logs it) at logged steps, ``valid_loss`` / ``full_valid_loss`` at
    evaluations (tunekit evaluates the whole eval set, so the two are the same)."""
    out: dict[int, dict] = {}
    for entry in log_history:
        step = int(entry.get("step", 0))
        row = out.setdefault(step, {"step": step})
        if "loss" in entry:
            row["train_loss"] = float(entry["loss"])
            if "mean_token_accuracy" in entry:
                row["train_mean_token_accuracy"] = float(entry["mean_token_accuracy"])
        if "eval_loss" in entry:
            row["valid_loss"] = row["full_valid_loss"] = float(entry["eval_loss"])
            if "eval_mean_token_accuracy" in entry:
                row["valid_mean_token_accuracy"] = row["full_valid_mean_token_accuracy"] = \
                    float(entry["eval_mean_token_accuracy"])
    return {s: r for s, r in sorted(out.items()) if len(r) > 1}


def at_or_before(metrics: dict[int, dict], step: int) -> dict:
    """The latest known value of each metric at ``step`` (a checkpoint's metrics)."""
    merged: dict = {}
    for s, row in metrics.items():
        if s <= step:
            merged.update(row)
    merged["step"] = step
    return merged


def result_csv(metrics: dict[int, dict]) -> bytes:
    """The step-metrics CSV OpenAI attaches to a finished job (empty cells where a step has no
    value)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in metrics.values():
        row = {**row, "train_accuracy": row.get("train_mean_token_accuracy")}
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in CSV_COLUMNS})
    return out.getvalue().encode()


def step_message(row: dict, total: int | None) -> str:
    """An event's text for one step, in OpenAI's wording: ``Step 3/20: training loss=1.23``."""
    parts = []
    if "train_loss" in row:
        parts.append(f"training loss={row['train_loss']:.4f}")
    if "valid_loss" in row:
        parts.append(f"validation loss={row['valid_loss']:.4f}")
    of = f"/{total}" if total else ""
    return f"Step {row['step']}{of}: " + ", ".join(parts)
