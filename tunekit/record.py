"""The run record: what ``tunekit.json`` and ``metrics.json`` hold, as typed dataclasses.

Training writes them; the result, the card, the Hub push, the Space, the server and compare read
them, always through :class:`RunInfo` and :class:`Metrics` — never through string keys of their
own. Both are also read-only mappings (``result.metrics["eval_loss_best"]``), so code written
against the dicts earlier versions returned keeps working.

Compatibility: a file written by an older tunekit loads (missing fields take their defaults); a
field this version does not know (a newer tunekit's) is kept in ``extra`` and written back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelError
from .hubid import looks_like_path

RUN_FILE = "tunekit.json"
METRICS_FILE = "metrics.json"
REDACTED = "<redacted>"

# Secret-looking keys, compared after lower-casing and splitting on "_", "-", ".": a word that
# is always a secret anywhere in the key, or "token"/"key" as the last word after a word that
# makes it one. Tokenizer settings (pad_token, eos_token, max_new_tokens…) are not secrets.
_SECRET_WORDS = {"password", "passwd", "passphrase", "secret", "secrets", "apikey", "credential",
                 "credentials", "authorization", "bearer", "cookie"}
_TOKEN_OWNERS = {"hub", "hf", "auth", "access", "api", "bearer", "refresh", "session", "id", "github",
                 "gh", "wandb", "comet", "neptune", "mlflow", "openai", "push", "write", "read", "user"}
_KEY_OWNERS = {"api", "access", "secret", "private", "signing", "encryption", "license"}
# Values that are tokens whatever their key says (huggingface.co's and OpenAI's formats).
_SECRET_VALUE = re.compile(r"^(hf_|sk-|ghp_|github_pat_)[A-Za-z0-9_-]{16,}$")


def is_secret_key(key: object) -> bool:
    """Whether a record key names a secret (``hub_token``, ``api_key``, ``password``…).

    Args:
        key: a dict key at any depth of a record.

    Returns:
        True for keys whose values must never be written or pushed.
    """
    words = [w for w in re.split(r"[_\-.\s]+", str(key).lower()) if w]
    if not words:
        return False
    if _SECRET_WORDS & set(words) or words == ["token"] or words == ["key"]:
        return True
    last, before = words[-1], words[-2] if len(words) > 1 else ""
    return (last == "token" and before in _TOKEN_OWNERS) or (last == "key" and before in _KEY_OWNERS)


def redact(value: Any) -> Any:
    """A copy of a JSON-like value with every secret replaced by ``"<redacted>"``, at any depth.

    The one redaction every record, card and Space config goes through when it is written or
    pushed, so no writer can forget it: a token given as ``training_args={"hub_token": ...}``
    ends up in ``options`` like any other option, and must not reach ``tunekit.json``.

    Args:
        value: dicts, lists and scalars as ``json`` writes them.

    Returns:
        The same shape; values under secret-looking keys (:func:`is_secret_key`) and strings that
        are tokens by their format (``hf_…``, ``sk-…``) replaced.
    """
    if isinstance(value, Mapping):
        return {k: (REDACTED if is_secret_key(k) and v not in (None, "") else redact(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str) and _SECRET_VALUE.match(value):
        return REDACTED
    return value


def local_name(value: Any) -> Any:
    """A local path reduced to its last component (``/home/alice/runs/base`` → ``base``);
    anything else unchanged. What a published record says instead of a path on this machine.

    Args:
        value: a string that may be a path, or any other value.
    """
    if not isinstance(value, str) or not _is_local_path(value):
        return value
    return Path(value.rstrip("/\\")).name or value


def _is_local_path(text: str) -> bool:
    if text.startswith(("/", "~", "./", "../", "\\")) or re.match(r"^[A-Za-z]:[\\/]", text):
        return True
    home = os.path.expanduser("~")
    return len(home) > 1 and text.startswith(home)


def _names_only(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _names_only(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_names_only(v) for v in value]
    return local_name(value)


class _Record(Mapping):
    """Shared by the records: a read-only dict view over ``to_dict()`` and tolerant loading."""

    extra: dict[str, Any]

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in raw.items() if k in known}
        kwargs = cls._convert(kwargs)
        return cls(**kwargs, extra={k: v for k, v in raw.items() if k not in known})

    @classmethod
    def _convert(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is None and f.metadata.get("omit_none"):
                continue
            out[f.name] = value.to_dict() if isinstance(value, _Record) else value
        out.update(self.extra)
        return out

    # Mapping: read-only, for callers that used the dicts.
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    def _write(self, folder: str | os.PathLike, name: str) -> Path:
        path = Path(folder) / name
        path.write_text(self.to_json())
        return path

    def to_json(self) -> str:
        """The record as its file holds it: JSON, secrets redacted (:func:`redact`)."""
        return json.dumps(redact(self.to_dict()), indent=2)

    @classmethod
    def _read(cls, path: Path):
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ModelError(f"{path} cannot be read as a tunekit record: {e}. Re-run the training or "
                             "restore the file.") from e
        if not isinstance(raw, dict):
            raise ModelError(f"{path} is not a tunekit record (expected a JSON object)")
        return cls.from_dict(raw)


@dataclass(frozen=True, eq=False)
class TemplateInfo(_Record):
    """The chat template a run was trained with.

    Attributes:
        name: a shipped template's name, ``"base"`` (the model's own) or ``"custom"``.
        sha256: digest of the template's text.
        eos: the end-of-turn token generation stops at.
        tools: the template's tool-call format (``"hermes"``, ``"llama-3.1"``, ``"mistral"``,
            ``"template"``; :func:`tunekit.templates.tools.tool_style`), None without one.
    """

    name: str | None = None
    sha256: str | None = None
    eos: str | None = None
    tools: str | None = field(default=None, metadata={"omit_none": True})  # 0.1.0 runs have none
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, eq=False)
class DataInfo(_Record):
    """Where the training rows came from and how many were used.

    Attributes:
        source: the file, folder or data set id as given.
        format: the detected row format (``openai``, ``sharegpt``, ``alpaca``…).
        rows: rows read; train_rows / eval_rows: after the split and validation.
        skipped: rows dropped with ``on_bad_rows="skip"``.
        hub_dataset: the Hub data set id when the data came from the Hub.
        train_tokens / trained_tokens: tokens per epoch, and those that carry loss.
        tools: the function schemas the training rows offered, each once (None: no tools), so
            the Space and the card offer them after the data file is gone or on another machine.
    """

    source: str | None = None
    format: str | None = None
    rows: int | None = None
    train_rows: int | None = None
    eval_rows: int | None = None
    skipped: int | None = None
    hub_dataset: str | None = None
    train_tokens: int | None = None
    trained_tokens: int | None = None
    tools: list[dict] | None = field(default=None, metadata={"omit_none": True})  # 0.1.0 runs have none
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, eq=False)
class RunInfo(_Record):
    """``tunekit.json``: everything needed to reopen, describe and publish a run.

    Attributes:
        base: the base as the user named it (Hub id or folder).
        method: ``"full"``, ``"lora"`` or ``"qlora"``.
        adapter: True when the folder holds a PEFT adapter, False for full weights.
        objective: what the run optimised: ``"sft"`` (demonstrations), ``"dpo"`` (preference
            pairs) or ``"kto"`` (completions labelled good or bad).
        preference: for DPO/KTO, ``beta`` and how the reference was scored (``reference``:
            ``"base (adapter off)"``, ``"the starting adapter"`` or ``"a frozen copy"``); None for SFT.
        tunekit_version: the version that trained it.
        base_path: the local folder of a base given as a folder (None for Hub ids).
        embedded_base: trained on tunekit's embedded SmolLM2 copy.
        base_license: the base's license id, inherited by the card.
        method_choice: how ``method="auto"`` decided (None when the method was given).
        template: the chat template used.
        train_on: ``"assistant"`` or ``"all"``.
        options: every option of the run, as JSON values.
        data: the data's description (None for folders tunekit did not train).
        example_prompts: held-out user prompts for the Space and the card.
        created: ISO time the run finished.
        extra: fields this version does not know, kept as they were.
    """

    base: str
    method: str
    adapter: bool
    objective: str = "sft"
    preference: dict[str, Any] | None = field(default=None, metadata={"omit_none": True})
    tunekit_version: str | None = None
    base_path: str | None = None
    embedded_base: bool = False
    base_license: str | None = None
    method_choice: dict[str, Any] | None = None
    template: TemplateInfo = field(default_factory=TemplateInfo)
    train_on: str = "assistant"
    options: dict[str, Any] = field(default_factory=dict)
    data: DataInfo | None = None
    example_prompts: list[str] = field(default_factory=list)
    created: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def _convert(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        if isinstance(kwargs.get("template"), Mapping):
            kwargs["template"] = TemplateInfo.from_dict(kwargs["template"])
        elif kwargs.get("template") is None:
            kwargs.pop("template", None)
        if isinstance(kwargs.get("data"), Mapping):
            kwargs["data"] = DataInfo.from_dict(kwargs["data"])
        for key in ("options",):
            if kwargs.get(key) is None:
                kwargs.pop(key, None)
        if kwargs.get("example_prompts") is None:
            kwargs.pop("example_prompts", None)
        return kwargs

    @property
    def trained_here(self) -> bool:
        """True for a run tunekit trained (it has a data description), False for a plain PEFT
        adapter or model folder opened as a run."""
        return self.data is not None

    def option(self, name: str, default: Any = None) -> Any:
        """A recorded option's value (``default`` when the run did not record it)."""
        value = self.options.get(name)
        return default if value is None else value

    @property
    def base_is_local(self) -> bool:
        """True when the base was a folder on the training machine (not a Hub id)."""
        return bool(self.base_path) or looks_like_path(str(self.base))

    def published(self) -> "RunInfo":
        """The record as it may leave this machine (pushed to a Hub, shown in a card or a
        Space): secrets redacted, and every local path (base folder, data files, output folder)
        reduced to its name. A local base keeps ``base_path`` (as the name), so readers still
        know it was a folder and never mistake the name for a Hub repo id.

        The run folder's own ``tunekit.json`` keeps the paths: local runs reload their base
        from ``base_path``.
        """
        raw = _names_only(redact(self.to_dict()))
        if self.base_is_local and not self.embedded_base:
            # Only the last component: a relative "models/base" would read as a Hub repo id.
            raw["base"] = raw["base_path"] = Path(str(self.base).rstrip("/\\")).name or str(raw["base"])
        return RunInfo.from_dict(raw)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``tunekit.json`` into ``folder`` (secrets redacted)."""
        return self._write(folder, RUN_FILE)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "RunInfo | None":
        """Read ``folder/tunekit.json``; None when the folder has none.

        Raises:
            ModelError: the file exists but is not a readable record.
        """
        path = Path(folder) / RUN_FILE
        return cls._read(path) if path.exists() else None


@dataclass(frozen=True, eq=False)
class Metrics(_Record):
    """``metrics.json``: what training measured. Every field may be None (not measured).

    Attributes:
        train_loss_first / train_loss_last: first and last logged training loss.
        eval_loss_first / eval_loss_best / eval_loss_last: the base's eval loss (evaluated on
            start), the best and the last.
        best_checkpoint: the checkpoint ``load_best_model_at_end`` kept.
        epochs / steps: passes and optimizer updates done.
        train_rows / eval_rows / skipped_rows: rows used and dropped.
        tokens_per_epoch / trained_tokens_per_epoch: tokens, and those carrying loss.
        tokens_per_second / trained_tokens_per_second / wall_seconds: speed of training.
        device / dtype: where it ran.
        peak_memory_bytes / peak_memory_kind: the peak, as ``rss`` or ``cuda_max_allocated``.
        trainable_params / total_params: parameter counts (4-bit weights at logical size).
        rows_per_forward: rows per forward pass (CPU may merge micro-batches).
        estimated_peak_memory_bytes: with ``method="auto"``, the estimate the choice used.
        reward_accuracy_first / _last, reward_margin_first / _last, logps_chosen_first / _last,
        logps_rejected_first / _last: DPO/KTO on the eval split, before training (evaluated on
            start) and after: how often the chosen reply out-scores the rejected one, by how much
            (beta-scaled log-ratio to the reference), and the mean log-probabilities of each
            side. None (and left out of the file) for SFT.
    """

    train_loss_first: float | None = None
    train_loss_last: float | None = None
    eval_loss_first: float | None = None
    eval_loss_best: float | None = None
    eval_loss_last: float | None = None
    best_checkpoint: str | None = None
    epochs: float | None = None
    steps: int | None = None
    train_rows: int | None = None
    eval_rows: int | None = None
    skipped_rows: int | None = None
    tokens_per_epoch: int | None = None
    trained_tokens_per_epoch: int | None = None
    tokens_per_second: float | None = None
    trained_tokens_per_second: float | None = None
    wall_seconds: float | None = None
    device: str | None = None
    dtype: str | None = None
    peak_memory_bytes: int | None = None
    peak_memory_kind: str | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    rows_per_forward: int | None = None
    estimated_peak_memory_bytes: int | None = field(default=None, metadata={"omit_none": True})
    reward_accuracy_first: float | None = field(default=None, metadata={"omit_none": True})
    reward_accuracy_last: float | None = field(default=None, metadata={"omit_none": True})
    reward_margin_first: float | None = field(default=None, metadata={"omit_none": True})
    reward_margin_last: float | None = field(default=None, metadata={"omit_none": True})
    logps_chosen_first: float | None = field(default=None, metadata={"omit_none": True})
    logps_chosen_last: float | None = field(default=None, metadata={"omit_none": True})
    logps_rejected_first: float | None = field(default=None, metadata={"omit_none": True})
    logps_rejected_last: float | None = field(default=None, metadata={"omit_none": True})
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def published(self) -> "Metrics":
        """The metrics as they may leave this machine: local paths (``best_checkpoint``)
        reduced to their names, secrets redacted."""
        return Metrics.from_dict(_names_only(redact(self.to_dict())))

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``metrics.json`` into ``folder`` (secrets redacted)."""
        return self._write(folder, METRICS_FILE)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Metrics":
        """Read ``folder/metrics.json``; empty metrics when the folder has none."""
        path = Path(folder) / METRICS_FILE
        return cls._read(path) if path.exists() else cls()


def describe_folder(path: str | os.PathLike) -> tuple[RunInfo, Metrics]:
    """The record of any folder tunekit can open: a tunekit run (its ``tunekit.json``), a plain
    PEFT adapter (base from ``adapter_config.json``, else the card's ``base_model``) or a full
    transformers model.

    Raises:
        ModelError: the folder holds none of these, or an adapter that does not name its base.
    """
    path = Path(path)
    run = RunInfo.load(path)
    if run is not None:
        return run, Metrics.load(path)
    adapter_cfg = path / "adapter_config.json"
    if adapter_cfg.exists():
        cfg = json.loads(adapter_cfg.read_text())
        base = cfg.get("base_model_name_or_path") or card_base_model(path)
        if not base:
            raise ModelError(
                f"{path} is a PEFT adapter that does not name its base model (no base_model_name_or_path "
                "in adapter_config.json, no base_model in README.md)"
            )
        method = "qlora" if "4bit" in json.dumps(cfg).lower() else "lora"
        return RunInfo(base=base, method=method, adapter=True), Metrics()
    if (path / "config.json").exists():
        return RunInfo(base=card_base_model(path) or str(path), method="full", adapter=False), Metrics()
    raise ModelError(f"{path} holds no tunekit run, PEFT adapter or transformers model")


def card_base_model(path: str | os.PathLike) -> str | None:
    """The ``base_model`` a folder's model card names, or None."""
    readme = Path(path) / "README.md"
    if not readme.exists():
        return None
    try:
        from huggingface_hub import ModelCard

        base = ModelCard.load(readme).data.to_dict().get("base_model")
    except Exception:  # an unreadable card just means we cannot learn the base from it
        return None
    return base[0] if isinstance(base, list) and base else base
