"""What a job's run folder says about its progress: the Trainer's log history in its newest
checkpoint (``trainer_state.json``), turned into OpenAI's step metrics, events and the result CSV."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

# The columns of OpenAI's step-metrics file (``result_files``), in its order.
CSV_COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy",
               "full_valid_loss", "full_valid_mean_token_accuracy")


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
