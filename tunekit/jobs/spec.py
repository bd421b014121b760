"""From an OpenAI fine-tuning request to ``tunekit.finetune`` options: the hyperparameters'
``"auto"`` settled, ``learning_rate_multiplier`` turned into a learning rate, the method's type
into tunekit's objective."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from .. import methods
from ..options import Options

# Jobs train LoRA adapters: the server answers every fine-tuned model with the one base it holds.
METHOD = "lora"
# OpenAI's method types and the objective each asks tunekit for.
OBJECTIVES = {"supervised": "sft", "dpo": "dpo"}
AUTO_BETA = 0.1  # TRL's DPOConfig default


def option_names() -> set[str]:
    """Every option ``tunekit.finetune`` accepts in this version."""
    return {f.name for f in dataclasses.fields(Options)}


def supports(method_type: str) -> bool:
    """Whether this tunekit can train a method type: ``supervised`` always, ``dpo`` once
    ``finetune`` takes ``objective=``."""
    return method_type == "supervised" or (method_type in OBJECTIVES and "objective" in option_names())


def resolved(hyper: dict[str, Any], method_type: str) -> dict[str, Any]:
    """The hyperparameters with every ``"auto"`` (or missing one) replaced by the value used, as
    a job reports them once it runs."""
    defaults = {f.name: f.default for f in dataclasses.fields(Options)}
    out = {
        "n_epochs": _given(hyper.get("n_epochs"), defaults["epochs"]),
        "batch_size": _given(hyper.get("batch_size"), defaults["batch_size"]),
        "learning_rate_multiplier": _given(hyper.get("learning_rate_multiplier"), 1.0),
    }
    if isinstance(out["n_epochs"], float) and out["n_epochs"].is_integer():
        out["n_epochs"] = int(out["n_epochs"])
    if method_type == "dpo":
        out["beta"] = _given(hyper.get("beta"), AUTO_BETA)
    return out


def finetune_options(hyper: dict[str, Any], method_type: str, *, base: str, seed: int | None,
                     eval_data: str | None, output_dir: str, resume: bool,
                     defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """The keyword arguments of ``tunekit.finetune`` for a job.

    Args:
        hyper: the request's hyperparameters (values or ``"auto"``).
        method_type: ``supervised`` or ``dpo``.
        base: the base to train from.
        seed: the request's seed (None: tunekit's default).
        eval_data: the validation file's path, or None to hold out part of the training file.
        output_dir: the job's run folder.
        resume: continue from the folder's last checkpoint.
        defaults: the server's own defaults for every job (e.g. ``max_length``), applied first.
    """
    settled = resolved(hyper, method_type)
    options = dict(defaults or {})
    options.update(base=base, method=METHOD, epochs=float(settled["n_epochs"]), batch_size=int(settled["batch_size"]),
                   lr=base_lr(method_type) * float(settled["learning_rate_multiplier"]),
                   output_dir=output_dir, resume=resume, progress=False)
    if seed is not None:
        options["seed"] = seed
    if eval_data is not None:
        options["eval_data"] = eval_data
    if "objective" in option_names():
        # Said outright, so a supervised job never turns into DPO because of its file's shape.
        options["objective"] = OBJECTIVES[method_type]
    if method_type == "dpo" and "beta" in option_names():
        options["beta"] = float(settled["beta"])
    return options


def base_lr(method_type: str) -> float:
    """The learning rate a multiplier of 1 means: tunekit's LoRA default for the method's
    objective (:meth:`tunekit.methods.Method.lr`)."""
    return methods.get(METHOD).lr(OBJECTIVES[method_type])


def hub_repo(namespace: str, base: str, job: dict) -> str:
    """The Hub repo a job's model is pushed to: ``<namespace>/<base>-<suffix>-<job id>`` (the
    parts of its ``ft:`` name a repo id can hold).

    Example:
        >>> hub_repo("acme", "HuggingFaceTB/SmolLM2-135M-Instruct", {"id": "ftjob-abc", "request": {"suffix": "x"}})
        'acme/SmolLM2-135M-Instruct-x-ftjob-abc'
    """
    parts = [base.rstrip("/").split("/")[-1], job["request"].get("suffix") or "", job["id"]]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(p for p in parts if p))
    name = re.sub(r"[-.]{2,}", "-", name).strip("-.")
    # The job id is what makes it unique: keep it whole when the name is cut to the Hub's 96.
    if len(name) > 96:
        name = f"{name[:95 - len(job['id'])].strip('-.')}-{job['id']}"
    return f"{namespace}/{name}"


def _given(value: Any, default: Any) -> Any:
    return default if value is None or value == "auto" else value
