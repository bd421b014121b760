"""Every training option in one dataclass: defaults, help text and validation live here, and both
``tunekit.finetune(**options)`` and ``tunekit train --option`` are derived from it, so the API and
the CLI cannot drift apart."""

from __future__ import annotations

import dataclasses
import difflib
import warnings
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .methods import FULL_MIN_EXAMPLES, METHODS


def _opt(default: Any, help: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class Options:
    """Options of a fine-tuning run. Every one has a default; pass them by keyword."""

    base: str | None = _opt(None, "Hub model id or local folder; default: the embedded SmolLM2-135M-Instruct")
    method: str = _opt("auto", "auto | full | lora | qlora; auto: lora when it fits free memory, qlora when only "
                       f"that fits, full for {FULL_MIN_EXAMPLES:,}+ examples when it fits (see tunekit estimate)",
                       choices=("auto", *METHODS))
    objective: str | None = _opt(None, "sft | dpo | kto; default: from the data's shape (chats: sft, chosen/rejected "
                                       "pairs: dpo, completions with a true/false label: kto); sft on pairs trains on "
                                       "the chosen replies, kto on pairs uses chosen as good and rejected as bad",
                                 choices=("sft", "dpo", "kto"))
    beta: float | None = _opt(None, "dpo/kto: how far the tuned model may move from the reference (TRL's beta; "
                                    "lower moves further); default 0.1")
    template: str | None = _opt(None, "chat template name, .jinja path or Jinja text; default: the base's own family")
    train_on: str = _opt("assistant", "assistant: train only on assistant turns (weight 1); all: every token",
                         choices=("assistant", "all"))
    eval_data: str | None = _opt(None, "separate eval set (same forms as the training data); default: split off eval_split")
    eval_split: float = _opt(0.1, "fraction (0-1) or number of rows held out for evaluation when eval_data is not given")
    output_dir: str | None = _opt(None, "where the adapter/model, card and metrics go; default: runs/<base>-<method>-<time>")
    resume: bool = _opt(False, "continue an interrupted run in output_dir from its last checkpoint")
    epochs: float = _opt(2.0, "passes over the training data (1-3 is typical)")
    lr: float | None = _opt(None, "learning rate; default 2e-4 for lora/qlora, 2e-5 for full (the same for dpo/kto)")
    batch_size: int = _opt(4, "examples per device step")
    grad_accum: int | None = _opt(None, "steps whose gradients are summed before an update (effective batch = batch_size x "
                                        "grad_accum); default: 4, lowered to 2 or 1 so a small data set still gets ~100 updates")
    max_length: int = _opt(1024, "longest row in tokens; longer rows are reported as bad rows")
    r: int = _opt(16, "LoRA rank")
    alpha: int = _opt(32, "LoRA alpha (scale alpha/r); about 2r is typical")
    dropout: float = _opt(0.05, "LoRA dropout")
    target_modules: str = _opt("all-linear", "LoRA targets: all-linear, or comma-separated names such as q_proj,v_proj")
    use_dora: bool = _opt(False, "DoRA: weight-decomposed LoRA")
    use_rslora: bool = _opt(False, "rank-stabilised LoRA scaling (alpha/sqrt(r))")
    seed: int = _opt(42, "seed for the split, initialisation and data order")
    eval_steps: int | None = _opt(None, "evaluate (and checkpoint) every N updates; default: about 5 times per run, fewer when evaluating would cost over a tenth of the training compute")
    early_stopping: int = _opt(3, "stop after N evaluations without improvement of eval loss (0: never)")
    on_bad_rows: str = _opt("raise", "raise: stop and list bad rows; skip: drop them and report the count",
                            choices=("raise", "skip"))
    device: str | None = _opt(None, "cpu or cuda; default: cuda when available")
    gradient_checkpointing: bool | None = _opt(None, "recompute activations to save memory; default: on for CUDA and for qlora, off otherwise on CPU")
    trust_remote_code: bool = _opt(False, "run model code shipped with the base repo")
    training_args: dict | None = _opt(None, "extra trl.SFTConfig (DPOConfig, KTOConfig) arguments, applied last", cli=False)
    push_to: str | None = _opt(None, "Hub repo id to push the result to when training ends")
    private: bool = _opt(False, "make the pushed repo private")
    push_space: str | None = _opt(None, "Hub Space id (user/name-demo) to publish a Gradio demo to; needs push_to")
    progress: bool = _opt(True, "show a progress bar with loss and ETA")
    fastpath: bool | None = _opt(None, "tunekit's fast paths (fused LoRA forward, attention within rows, loss at trained "
                                       "positions only); False runs PEFT's and transformers' reference code; default: "
                                       "on unless TUNEKIT_FASTPATH=0")

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> "Options":
        """Build options from keywords, rejecting unknown names (with a suggestion) and checking
        every value; all problems are reported in one ConfigError."""
        names = [f.name for f in dataclasses.fields(cls)]
        problems = [f"unknown option {key!r}{_suggest(key, names)}" for key in kwargs if key not in names]
        if problems:
            raise ConfigError(problems)
        options = cls(**kwargs)
        options.validate()
        return options

    def validate(self) -> None:
        problems = []
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices and not (value is None and f.default is None):
                problems.append(f"{f.name}={value!r} is not one of {', '.join(choices)}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "max_length": self.max_length,
                    "r": self.r, "alpha": self.alpha}
        if self.grad_accum is not None:
            positive["grad_accum"] = self.grad_accum
        for name, value in positive.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                problems.append(f"{name} must be a positive number, got {value!r}")
        if self.beta is not None and (isinstance(self.beta, bool) or not isinstance(self.beta, (int, float))
                                      or self.beta <= 0):
            problems.append(f"beta must be a positive number, got {self.beta!r}")
        if self.beta is not None and self.objective == "sft":
            problems.append("beta applies to objective='dpo' or 'kto', not 'sft'")
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1):
            problems.append(f"lr must be between 0 and 1, got {self.lr!r}")
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.eval_split, bool) or not isinstance(self.eval_split, (int, float)) or self.eval_split < 0:
            problems.append(f"eval_split must be a fraction in [0, 1) or a row count, got {self.eval_split!r}")
        elif isinstance(self.eval_split, float) and not self.eval_split < 1:
            problems.append(f"eval_split as a fraction must be below 1, got {self.eval_split!r}")
        if self.eval_steps is not None and (not isinstance(self.eval_steps, int) or self.eval_steps < 1):
            problems.append(f"eval_steps must be a positive integer, got {self.eval_steps!r}")
        if not isinstance(self.early_stopping, int) or self.early_stopping < 0:
            problems.append(f"early_stopping must be a count >= 0, got {self.early_stopping!r}")
        if self.resume and not self.output_dir:
            problems.append("resume=True needs output_dir= of the run to continue")
        if self.method == "full" and (self.use_dora or self.use_rslora):
            problems.append("use_dora/use_rslora apply to lora and qlora, not method='full'")
        if self.push_space and not self.push_to:
            problems.append("push_space needs push_to: the Space loads the adapter from the Hub")
        if self.training_args is not None:
            problems += _check_training_args(self.training_args, self.objective)
        if problems:
            raise ConfigError(problems)

    def target_module_list(self) -> str | list[str]:
        if self.target_modules == "all-linear":
            return "all-linear"
        return [m.strip() for m in self.target_modules.split(",") if m.strip()]


def _check_training_args(extra: Any, objective: str | None = None) -> list[str]:
    if not isinstance(extra, dict):
        return [f"training_args must be a dict of trl.SFTConfig arguments, got {type(extra).__name__}"]
    from trl import DPOConfig, KTOConfig, SFTConfig

    # The trainer's config class: SFT, DPO or KTO; any of them while the data decides.
    classes = {"sft": [SFTConfig], "dpo": [DPOConfig], "kto": [KTOConfig]}.get(objective, [SFTConfig, DPOConfig,
                                                                                              KTOConfig])
    names = " / ".join(f"trl.{c.__name__}" for c in classes)
    known = sorted({f.name for c in classes for f in dataclasses.fields(c)})
    return [f"training_args: {key!r} is not a {names} argument{_suggest(key, known)}"
            for key in extra if key not in known]


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def option_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(Options))


def renamed(kwargs: dict[str, Any], aliases: dict[str, str], *, where: str) -> dict[str, Any]:
    """Map deprecated keyword names to their new names: the one alias table of a function.

    Args:
        kwargs: the keywords as passed.
        aliases: old name -> new name.
        where: the function or command they were passed to, for the messages.

    Returns:
        A new dict with every old name replaced by its new one (other keys unchanged).

    Raises:
        ConfigError: both the old and the new name were given.

    Example:
        >>> renamed({"data_source": "t.jsonl"}, {"data_source": "data"}, where="finetune")
        {'data': 't.jsonl'}  # and a FutureWarning: data_source is deprecated; use data
    """
    out = dict(kwargs)
    for old, new in aliases.items():
        if old not in out:
            continue
        if new in out:
            raise ConfigError(f"{where}: pass {new}= only; {old}= is its deprecated name")
        warnings.warn(f"{where}: {old} is deprecated; use {new}", FutureWarning, stacklevel=3)
        out[new] = out.pop(old)
    return out
