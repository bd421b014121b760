"""The one training path, in named stages: prepare data → plan → build model → build trainer →
train and save.

Full, LoRA and QLoRA differ only in how the model is loaded and wrapped (``methods.py``); every
default is settled once, before any weights load, in a :class:`tunekit.plan.Plan`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from . import card, checkpoints, data as data_module, methods, models, templates
from .plan import Plan, build as build_plan
from .data.tools import distinct_tools
from .errors import ConfigError, DataError, TrainingError
from .folders import check_new, check_resumable, fresh_dir, make_dir, run_name
from .options import Options, renamed
from .placement import placement
from .record import RUN_FILE, DataInfo, Metrics, RunInfo, TemplateInfo

log = logging.getLogger(__name__)

MAX_RECORDED_TOOLS = 32  # tunekit.json keeps the schemas a run offered, for its demo and card
CHECKPOINTS = "checkpoints"  # the Trainer's folder inside the run: a run under way

_DATA_ALIASES = {"data_source": "data"}  # renamed in 0.2: one name for the data everywhere


def finetune(data: Any = None, **options: Any):
    """Fine-tune a chat model on your data.

    Args:
        data: a path (.jsonl/.json/.csv/.parquet or a folder), a Hub dataset id, a
            ``datasets.Dataset``/``DatasetDict`` or a list of dicts, in any common chat format
            (OpenAI messages, ShareGPT, Alpaca, prompt/completion, plain text). ``data_source=``
            is its deprecated name.
        **options: see :class:`tunekit.options.Options` — e.g. ``base``, ``method``
            ("full" | "lora" | "qlora" | "auto"), ``epochs``, ``lr``, ``r``, ``output_dir``, ``resume``.

    Returns:
        TuneResult: paths, metrics and methods to chat with, evaluate, push and merge the result.

    Raises:
        ConfigError: unknown or invalid options (all listed at once).
        DataError: rows that cannot be used (file, row, field and fix for each).
        ModelError / TemplateError / ResourceError: base, template or machine problems.

    Example:
        >>> r = tunekit.finetune("train.jsonl", method="qlora", epochs=1)
        >>> r.chat("Summarise this episode: ...")
    """
    from .quiet import quiet_libraries

    data, options = _data_argument(data, options, where="finetune")
    opts = Options.from_kwargs(options)
    with quiet_libraries():
        prepared = prepare_data(data, opts)
        run_plan = plan_run(prepared, opts)
        # After the plan, so the default folder name says which method runs.
        out = output_dir(run_plan.options)
        model, peft_config = build_model(prepared, run_plan)
        trainer = build_trainer(model, peft_config, prepared, run_plan, out)
        return train_and_save(trainer, prepared, run_plan, out, adapter=methods.get(run_plan.method).peft)


def plan(data: Any = None, **options: Any) -> Plan:
    """Plan a run without training it (the dry run): read and validate the data, tokenize it
    with the base's tokenizer and settle every default, with the memory estimate. No weights load
    and nothing is written.

    Args:
        data: as for :func:`finetune`.
        **options: as for :func:`finetune`.

    Returns:
        The :class:`tunekit.plan.Plan`; ``print(plan.describe())`` shows it.

    Raises:
        ConfigError / DataError / ModelError / TemplateError: as :func:`finetune` would.
        ResourceError: ``method="auto"`` and no method fits.

    Example:
        >>> print(tunekit.train.plan("train.jsonl", method="auto").describe())  # doctest: +SKIP
    """
    from .quiet import quiet_libraries

    data, options = _data_argument(data, options, where="plan")
    opts = Options.from_kwargs(options)
    with quiet_libraries():
        prepared = prepare_data(data, opts)
        return plan_run(prepared, opts, estimate=True)


def plan_run(prepared: "PreparedData", opts: Options, *, estimate: bool = False) -> Plan:
    """The :class:`~tunekit.plan.Plan` of prepared data: the objective the data decided, and a
    run that continues an adapter (``base=`` an SFT run) trains that adapter's method.

    Raises:
        ConfigError: ``method`` contradicts the adapter being continued.
        ResourceError: ``method="auto"`` and no method fits.
    """
    if prepared.start is not None:
        started = prepared.start.method
        if opts.method not in ("auto", started):
            raise ConfigError(f"base={opts.base!r} is a {started} adapter: training continues it, so "
                              f"method={opts.method!r} cannot apply. Pass method={started!r} (or leave it out).")
        opts = dataclasses.replace(opts, method=started)
    return build_plan(opts, prepared.base.path, prepared.train_enc, prepared.eval_enc, placement(opts.device),
                      estimate=estimate, objective=prepared.objective, objective_reason=prepared.objective_reason)


def _data_argument(data: Any, options: dict[str, Any], *, where: str) -> tuple[Any, dict[str, Any]]:
    if "data_source" in options:
        given = {"data": data} if data is not None else {}
        options = renamed({**given, **options}, _DATA_ALIASES, where=where)
        data = options.pop("data")
    if data is None:
        raise TypeError(f"{where}() missing 1 required argument: 'data'")
    return data, options


def prepare_tokenizer(base_name: str | None, template_name: str | None, start: "StartAdapter | None" = None):
    """Resolve the base and its tokenizer with the chat template set. Returns the base, the
    tokenizer, the template and the template tokens that had to be added to the vocabulary.
    ``start``: an adapter training continues; its base and its own tokenizer are used."""
    if start is not None:
        from .adapters import adapter_tokenizer

        base = start.base
        tokenizer = adapter_tokenizer(start.folder, base)
    else:
        base = models.resolve_base(base_name)
        tokenizer = models.load_tokenizer(base.path)
    template = templates.resolve_template(tokenizer, template_name)
    missing = templates.apply_template(tokenizer, template)
    if missing:
        # Tokens the template needs but the vocabulary lacks: add them (the model is resized and
        # the new embeddings trained), rather than letting them split into ordinary pieces. Then
        # apply again: the eos may have been one of them, and only now can it be set.
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
        templates.apply_template(tokenizer, template)
    return base, tokenizer, template, missing


def preview(data: Any = None, *, base: str | None = None, template: str | None = None, n: int = 3,
            train_on: str = "assistant", color: bool = False, **deprecated: Any) -> str:
    """Show how rows will be rendered with the chat template, trained spans marked.

    Args:
        data: anything ``finetune`` accepts (``data_source=`` is its deprecated name).
        base: the base whose tokenizer and template to use (default: the embedded model).
        template: a template name to use instead of the base's own.
        n: how many rows to show.
        train_on: "assistant" or "all", as in ``finetune``.
        color: mark trained spans with ANSI green instead of brackets.

    Returns:
        The rendered text.
    """
    data, unknown = _data_argument(data, deprecated, where="preview")
    if unknown:
        raise TypeError(f"preview() got an unexpected keyword argument {next(iter(unknown))!r}")
    rows, _ = data_module.read_examples(data)
    _, tokenizer, _, _ = prepare_tokenizer(base, template)
    return templates.preview(rows[:n], tokenizer, n=n, train_on=train_on, color=color)


# -- stage 1: data ---------------------------------------------------------------------------------
@dataclass
class PreparedData:
    """The rows of a run, read, split and encoded with the base's tokenizer and template.

    Attributes:
        base: the resolved base; ``tokenizer`` with the template applied; ``template``;
            ``missing``: template tokens added to the vocabulary.
        report: what reading the training data found (with ``on_bad_rows="skip"``, what was
            dropped at any stage); ``eval_report``: the same for a separate ``eval_data``.
        train_rows / eval_rows: the usable normalised rows after the split.
        train_enc / eval_enc: their encodings (``input_ids``, ``labels``; DPO/KTO: the token
            columns of :mod:`tunekit.templates.pairs`).
        objective: ``"sft"``, ``"dpo"`` or ``"kto"``; ``objective_reason`` says how it was decided.
        start: the adapter training continues (``base=`` an SFT run or a Hub adapter), or None.
    """

    base: Any
    tokenizer: Any
    template: Any
    missing: list[str]
    report: Any
    train_rows: list[dict]
    eval_rows: list[dict]
    train_enc: list[dict]
    eval_enc: list[dict]
    eval_report: Any = None
    objective: str = "sft"
    objective_reason: str = ""
    start: "StartAdapter | None" = None

    @property
    def skipped_rows(self) -> int:
        """Rows dropped with ``on_bad_rows="skip"``, training and evaluation data together."""
        return sum(r.rows - r.kept for r in (self.report, self.eval_report) if r is not None)


def prepare_data(data: Any, opts: Options) -> PreparedData:
    """Read, split and encode the rows in one pass that reports every bad row together —
    structural problems and rows over ``max_length`` tokens alike; nothing is loaded but the
    tokenizer.

    Raises:
        DataError: rows that cannot be used (with ``on_bad_rows="raise"``), all in one error.
        TrainingError: no training row is left.
    """
    train_rows, report = data_module.read_rows(data)
    eval_rows, eval_report = [], None
    if opts.eval_data is not None:
        eval_rows, eval_report = data_module.read_rows(opts.eval_data)
    return prepare_rows(train_rows, report, opts, eval_rows=eval_rows, eval_report=eval_report)


def prepare_rows(train_rows: list[dict], report: Any, opts: Options, *, eval_rows: list[dict] | None = None,
                 eval_report: Any = None) -> PreparedData:
    """:func:`prepare_data` for rows already read (``tunekit.data.read_rows``): decide the
    objective, split, encode, and report every bad row at once.

    Raises:
        DataError / ConfigError / TrainingError: as :func:`prepare_data`.
    """
    eval_rows = eval_rows or []
    reports = [report] + ([eval_report] if eval_report is not None else [])
    if not train_rows or (eval_report is not None and not eval_rows):
        data_module.settle(reports, opts.on_bad_rows)  # nothing to tokenise: report what there is
    objective, objective_why = decide_objective(opts, train_rows, report)
    log.info("objective: %s (%s)", objective, objective_why)
    if eval_report is None:
        train_rows, eval_rows = data_module.split_examples(train_rows, opts.eval_split, seed=opts.seed)
    train_rows = as_objective(train_rows, objective, source=report.source)
    eval_rows = as_objective(eval_rows, objective, source=(eval_report or report).source)
    start = starting_adapter(opts.base)
    base, tokenizer, template, missing = prepare_tokenizer(opts.base, opts.template, start)
    held = eval_report or report
    if objective == "sft":
        kw = dict(train_on=opts.train_on, max_length=opts.max_length)
        encode = templates.encode_rows
    else:
        from .templates.pairs import encode_preference_rows

        kw = dict(max_length=opts.max_length)
        encode = encode_preference_rows
    train_enc, train_problems = encode(train_rows, tokenizer, **kw, source=report.source, unit=report.unit)
    eval_enc, eval_problems = encode(eval_rows, tokenizer, **kw, source=held.source, unit=held.unit)
    report.add(train_problems)
    held.add(eval_problems)
    data_module.settle(reports, opts.on_bad_rows)
    train_rows, train_enc = _usable(train_rows, train_enc)
    eval_rows, eval_enc = _usable(eval_rows, eval_enc)
    if not train_enc:
        raise TrainingError("no training rows are left after validation; nothing to train on")
    return PreparedData(base, tokenizer, template, missing, report, train_rows, eval_rows, train_enc, eval_enc,
                        eval_report, objective=objective, objective_reason=objective_why, start=start)


def decide_objective(opts: Options, rows: list[dict], report: Any) -> tuple[str, str]:
    """``(objective, why)``: ``objective=`` when given and the rows can train it, else the data's
    own (:attr:`tunekit.data.DataReport.objective`, from the rows' shape).

    Raises:
        ConfigError: the objective asks for what the rows do not have (pairs from chats, or
            pairs from unpaired completions).
    """
    found = report.objective
    shape = {"sft": "chats", "dpo": "preference pairs", "kto": "labelled completions"}[found]
    if opts.objective is None or opts.objective == found:
        return found, f"from the data: {shape}" if opts.objective is None else "given; the data's own"
    possible = {"sft": ("sft",), "dpo": ("dpo", "kto", "sft"), "kto": ("kto", "sft")}[found]
    if opts.objective not in possible:
        need = {"dpo": "pairs (prompt, chosen, rejected)", "kto": "replies labelled good or bad (or pairs)"}
        raise ConfigError(f"objective={opts.objective!r} needs {need[opts.objective]}, but {report.source} holds "
                          f"{shape}. Leave objective out to train {found}, or bring {need[opts.objective]}.")
    how = {("dpo", "kto"): "chosen replies as good, rejected as bad",
           ("dpo", "sft"): "on the chosen replies", ("kto", "sft"): "on the replies labelled good"}
    return opts.objective, f"given: {how[(found, opts.objective)]} of the {shape}"


def as_objective(rows: list[dict], objective: str, *, source: str | None = None) -> list[dict]:
    """Rows reshaped for ``objective``: pairs → KTO rows (chosen good, rejected bad) or chats
    (prompt + chosen); KTO rows → chats (the good ones). Rows already in shape are unchanged."""
    out: list[dict] = []
    for row in rows:
        shape = data_module.objective_of(row)
        if shape == objective:
            out.append(row)
            continue
        keep = {k: row[k] for k in ("row", "file", "tools") if k in row}
        if shape == "dpo" and objective == "kto":
            out.append({**keep, "prompt": row["prompt"], "completion": row["chosen"], "label": True})
            out.append({**keep, "prompt": row["prompt"], "completion": row["rejected"], "label": False})
        elif shape in ("dpo", "kto") and objective == "sft":
            if shape == "kto" and not row["label"]:
                continue
            reply = row["chosen"] if shape == "dpo" else row["completion"]
            out.append({**keep, "messages": list(row["prompt"]) + list(reply)})
        else:
            raise DataError(f"{row.get('file') or source or 'data'}, row {row.get('row')}: a {shape} row among "
                            f"{objective} rows; one data set holds one objective.", path=row.get("file") or source,
                            row=row.get("row"))
    return out


@dataclass(frozen=True)
class StartAdapter:
    """An adapter a run continues (``base=`` a LoRA/QLoRA run folder or Hub adapter repo).

    Attributes:
        folder: the adapter's local folder; ``name``: as the user gave it.
        method: ``"lora"`` or ``"qlora"`` (the adapter's own).
        base: its resolved base.
    """

    folder: Path
    name: str
    method: str
    base: Any


def starting_adapter(name: str | None) -> StartAdapter | None:
    """The adapter ``base=`` names, or None when it names a base model.

    A local folder holding ``adapter_config.json`` is one; a Hub id is one when its repo has that
    file (a Hub that cannot be asked means a base model, as before).

    Raises:
        ModelError / HubError: the adapter or its base cannot be found.
    """
    if name is None:
        return None
    from .hubid import looks_like_path
    from .record import describe_folder

    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "adapter_config.json").exists():
            return None
        folder = local
    elif looks_like_path(name) or not _hub_has_adapter(name):
        return None
    else:
        from . import hub

        folder, _ = hub.local_folder(name)
    run, _ = describe_folder(folder)
    if run.method == "full" or not run.adapter:
        return None
    base_name = run.base_path or run.base
    base = models.resolve_base(None if run.embedded_base else base_name)
    return StartAdapter(folder=folder, name=name, method=run.method, base=base)


def _hub_has_adapter(repo_id: str) -> bool:
    from huggingface_hub import file_exists

    try:
        return bool(file_exists(repo_id, "adapter_config.json"))
    except Exception:  # noqa: BLE001 - offline, a private repo, an odd id: treat it as a base, as before
        return False


def _usable(rows: list[dict], encoded: list[dict | None]) -> tuple[list[dict], list[dict]]:
    kept = [(row, enc) for row, enc in zip(rows, encoded) if enc is not None]
    return [row for row, _ in kept], [enc for _, enc in kept]


def output_dir(opts: Options) -> Path:
    """The run's folder, created: ``output_dir``, or a new ``runs/<base>-<method>-<time>``.

    Raises:
        ConfigError: ``output_dir`` is a file or cannot be created; it holds something and
            ``resume`` is off (tunekit never overwrites a run); ``resume`` is on and it holds
            things but no run (resuming would write the run's card and records over them).
    """
    if opts.output_dir:
        out = Path(opts.output_dir).expanduser()
        if opts.resume:
            check_resumable(out, record=RUN_FILE, work=CHECKPOINTS)
        # Only the main process checks: in a multi-process run the others may look after it
        # has started writing checkpoints there.
        elif os.environ.get("RANK", "0") == "0":
            check_new(out, resume_hint=True)
    else:
        out = fresh_dir(run_name(opts.base or models.EMBEDDED_ID, opts.method))
    return make_dir(out)


# -- stage 3: model --------------------------------------------------------------------------------
def build_model(prepared: PreparedData, run_plan: Plan):
    """Load the base as the plan says (4-bit for QLoRA), grow its vocabulary by the template's
    missing tokens, and make the LoRA config. Returns ``(model, peft_config or None)``; a run
    that continues an adapter returns the PEFT model with that adapter trainable and no config."""
    opts, where = run_plan.options, run_plan.placement
    method = methods.get(run_plan.method)
    model = models.load_model(prepared.base.path, where=where, quantize_4bit=method.quantized,
                              trust_remote_code=opts.trust_remote_code)
    if prepared.start is not None:
        return _continued_adapter(model, prepared, run_plan), None
    new_token_ids = []
    if prepared.missing:
        model.resize_token_embeddings(len(prepared.tokenizer))
        new_token_ids = prepared.tokenizer.convert_tokens_to_ids(prepared.missing)
    if not where.is_cuda:
        models.tune_cpu_runtime()
    peft_config = None
    if method.peft:
        peft_config = methods.lora_config(
            r=opts.r, alpha=opts.alpha, dropout=opts.dropout,
            target_modules=opts.target_module_list(), use_dora=opts.use_dora, use_rslora=opts.use_rslora,
        )
        if new_token_ids:
            peft_config.trainable_token_indices = {"embed_tokens": new_token_ids}
    if method.quantized:
        model = methods.prepare_for_kbit(model, gradient_checkpointing=run_plan.gradient_checkpointing)
    return model, peft_config


def _continued_adapter(model, prepared: PreparedData, run_plan: Plan):
    """The base with the starting adapter loaded trainable (TRL's preference trainers then keep
    a frozen copy of it as the reference)."""
    from peft import PeftModel

    from .adapters import check_fits, fit_embeddings, misfit

    start = prepared.start
    if not run_plan.placement.is_cuda:
        models.tune_cpu_runtime()
    fit_embeddings(model, prepared.tokenizer)
    check_fits(models.linear_shapes(model), start.folder, adapter=start.name, base=start.base.name)
    if methods.get(run_plan.method).quantized:
        model = methods.prepare_for_kbit(model, gradient_checkpointing=run_plan.gradient_checkpointing)
    try:
        return PeftModel.from_pretrained(model, str(start.folder), is_trainable=True)
    except (RuntimeError, ValueError, KeyError) as e:
        raise misfit(start.name, start.base.name, f"shapes or module names differ ({e})") from e


# -- stage 4: trainer ------------------------------------------------------------------------------
def build_trainer(model, peft_config, prepared: PreparedData, run_plan: Plan, out: Path):
    """The :class:`tunekit.trainer.Trainer` for the plan (DPO/KTO: :mod:`tunekit.preference`'s),
    with its callbacks and datasets."""
    from datasets import Dataset
    from trl import SFTConfig

    from .trainer import LOG_FILE, LogLines, Trainer

    opts = run_plan.options
    has_eval = len(prepared.eval_enc) > 0
    callbacks = [*_callbacks(opts, has_eval), LogLines(out / LOG_FILE)]
    if run_plan.objective != "sft":
        return build_preference_trainer(model, peft_config, prepared, run_plan, out, callbacks)
    config = SFTConfig(**{**sft_arguments(run_plan, out, has_eval=has_eval), **(opts.training_args or {})})
    columns = ("input_ids", "labels")
    train_ds = Dataset.from_list([{k: r[k] for k in columns} for r in prepared.train_enc])
    eval_ds = Dataset.from_list([{k: r[k] for k in columns} for r in prepared.eval_enc]) if has_eval else None
    return Trainer(
        model=model,
        args=config,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=prepared.tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
        compute_dtype=run_plan.placement.dtype,
        **run_plan.trainer_fast_paths,
    )


def _callbacks(opts: Options, has_eval: bool) -> list:
    from transformers import EarlyStoppingCallback

    callbacks = []
    if has_eval and opts.early_stopping:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=opts.early_stopping))
    if opts.progress:
        from .progress import ProgressBar

        callbacks.append(ProgressBar())
    return callbacks


def build_preference_trainer(model, peft_config, prepared: PreparedData, run_plan: Plan, out: Path, callbacks: list):
    """TRL's ``DPOTrainer`` / ``KTOTrainer`` (tunekit's subclasses) on the encoded rows.

    The reference: LoRA/QLoRA score it with the adapter off (no copy); a continued adapter with
    a frozen copy of it (TRL's "ref" adapter); full fine-tuning with a frozen copy of the base.
    """
    import copy

    from datasets import Dataset
    from trl import DPOConfig, KTOConfig

    from .preference import TRAINERS
    from .templates.pairs import preference_columns

    opts, objective = run_plan.options, run_plan.objective
    has_eval = len(prepared.eval_enc) > 0
    config_class = DPOConfig if objective == "dpo" else KTOConfig
    known = {f.name for f in dataclasses.fields(config_class)}
    args = {k: v for k, v in preference_arguments(run_plan, out, has_eval=has_eval).items() if k in known}
    config = config_class(**{**args, **(opts.training_args or {})})
    train_ds = Dataset.from_dict(preference_columns(prepared.train_enc))
    if objective == "kto":
        # KTO trains in the data's order (its KL pairs are neighbours in a batch): shuffle once.
        train_ds = train_ds.shuffle(seed=opts.seed)
    eval_ds = Dataset.from_dict(preference_columns(prepared.eval_enc)) if has_eval else None
    ref_model = None
    if not methods.get(run_plan.method).peft:
        # A frozen copy of the base as loaded (vocabulary grown included); TRL would reload it
        # from the base's folder without the grown rows.
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    return TRAINERS[objective](
        model=model,
        ref_model=ref_model,
        args=config,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=prepared.tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
        compute_dtype=run_plan.placement.dtype,
        fastpath=run_plan.fastpath,
    )


# SFTConfig arguments TRL's preference configs do not have (rows arrive encoded either way).
_SFT_ONLY = ("packing", "padding_free", "max_length")


def preference_arguments(run_plan: Plan, out: Path, *, has_eval: bool) -> dict[str, Any]:
    """The ``trl.DPOConfig`` / ``KTOConfig`` arguments of a plan (before ``training_args``):
    the SFT ones (schedule, checkpoints, evaluation, CPU fp32), with beta, the eval metric and no
    truncation (rows are length-checked when encoded). Keys a config lacks are dropped by the caller
    (KTOConfig has no ``padding_free``)."""
    args = {k: v for k, v in sft_arguments(run_plan, out, has_eval=has_eval).items() if k not in _SFT_ONLY}
    if run_plan.dpo_loss is not None:
        args["loss_type"] = list(run_plan.dpo_loss)
    return {
        **args,
        "beta": run_plan.beta,
        "max_length": None,
        # Only the SFT path packs rows; these pad each batch (TRL 1.16 has padding-free off here).
        "padding_free": False,
    }


def sft_arguments(run_plan: Plan, out: Path, *, has_eval: bool) -> dict[str, Any]:
    """The ``trl.SFTConfig`` arguments of a plan (before the user's ``training_args``)."""
    opts, where = run_plan.options, run_plan.placement
    eval_steps = run_plan.eval_steps
    return dict(
        output_dir=str(out / CHECKPOINTS),
        num_train_epochs=opts.epochs,
        per_device_train_batch_size=run_plan.rows_per_forward,
        # Evaluation keeps no activations (and its loss goes by chunks), so twice the rows per
        # forward fit; bigger matmuls run faster per token on CPU (5.8 -> 5.0 s for 40 rows here).
        per_device_eval_batch_size=2 * opts.batch_size,
        gradient_accumulation_steps=run_plan.accumulation_steps,
        learning_rate=run_plan.lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        weight_decay=0.0,
        optim=run_plan.optimizer,
        seed=opts.seed,
        data_seed=opts.seed,
        logging_steps=max(1, min(10, eval_steps)),
        logging_first_step=True,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=2,
        eval_strategy="steps" if has_eval else "no",
        # The base's eval loss, so metrics and the card show what training changed.
        eval_on_start=has_eval,
        eval_steps=eval_steps if has_eval else None,
        load_best_model_at_end=has_eval,
        metric_for_best_model="eval_loss" if has_eval else None,
        greater_is_better=False if has_eval else None,
        # bf16 on CPU is ~100x slower than fp32 here (DESIGN §3): only use it on a GPU.
        bf16=where.is_cuda and where.dtype_name == "bfloat16",
        fp16=where.is_cuda and where.dtype_name == "float16",
        use_cpu=not where.is_cuda,
        activation_checkpointing=run_plan.gradient_checkpointing,
        # Rows are already tokenized and length-checked (templates.encode_all), so TRL must not
        # truncate; batches are flattened without padding (position_ids mark the rows).
        max_length=None,
        packing=False,
        padding_free=True,
        prediction_loss_only=True,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=True,
        save_only_model=False,
    )


# -- stage 5: train and save -----------------------------------------------------------------------
def train_and_save(trainer, prepared: PreparedData, run_plan: Plan, out: Path, *, adapter: bool):
    """Train (resuming when asked), write the output folder and its records on the main process,
    push when asked, and return the :class:`tunekit.result.TuneResult`."""
    from .result import TuneResult

    opts = run_plan.options
    resume_from = resume_point(out, main=trainer.is_world_process_zero()) if opts.resume else None
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    wall = time.perf_counter() - start
    trainer.save_model(str(out))  # writes on the main process only
    # Under data parallelism (tunekit train --nproc, accelerate launch) every process gets
    # here; only the main one writes the output folder and pushes.
    main = trainer.is_world_process_zero()
    if main:
        _save_folder(trainer, prepared, run_plan, out, adapter=adapter, wall=wall)
    trainer.accelerator.wait_for_everyone()  # the other processes read back what the main one wrote
    result = TuneResult.from_dir(out)
    if main and opts.push_to:
        result.push(opts.push_to, private=opts.private)
    if main and opts.push_space:
        result.push_space(opts.push_space, private=opts.private)
    return result


def _save_folder(trainer, prepared: PreparedData, run_plan: Plan, out: Path, *, adapter: bool,
                 wall: float) -> None:
    # save_model also pickles the TrainingArguments; the output folder ships safetensors only
    # (the checkpoints keep their copy for resuming).
    (out / "training_args.bin").unlink(missing_ok=True)
    prepared.tokenizer.save_pretrained(str(out))
    base = prepared.base
    if adapter:
        _fix_adapter_base_name(out, base.name if not base.embedded else models.EMBEDDED_ID)
    run_info = run_record(prepared, run_plan, adapter=adapter)
    metrics = run_metrics(trainer, prepared, run_plan, wall)
    run_info.save(out)
    metrics.save(out)
    if (warning := displacement_warning(metrics, run_plan)) is not None:
        log.warning(warning)
    card.plot_loss(trainer.state.log_history, out / "loss.png")
    card.write_card(out, run_info, metrics)


def run_record(prepared: PreparedData, run_plan: Plan, *, adapter: bool) -> RunInfo:
    """The run's ``tunekit.json`` record."""
    from .version import __version__

    base, report, tpl = prepared.base, prepared.report, prepared.template
    tokens, trained = token_counts(prepared.train_enc)
    return RunInfo(
        base=base.name,
        method=run_plan.method,
        adapter=adapter,
        objective=prepared.objective,
        preference=None if run_plan.objective == "sft" else {
            "beta": run_plan.beta, "reference": reference_kind(prepared, run_plan),
            **({"loss": list(run_plan.dpo_loss)} if run_plan.dpo_loss else {})},
        tunekit_version=__version__,
        base_path=str(base.path) if not base.embedded and Path(base.name).is_dir() else None,
        embedded_base=base.embedded,
        base_license=base.license,
        method_choice=run_plan.method_choice,  # how method="auto" decided; None when the method was given
        template=TemplateInfo(name=tpl.name, sha256=tpl.sha256, eos=tpl.eos, tools=templates.tool_style(tpl)),
        train_on=run_plan.options.train_on,
        options=_jsonable(vars(run_plan.options)),
        data=DataInfo(
            source=report.source, format=report.format, rows=report.rows,
            train_rows=len(prepared.train_enc), eval_rows=len(prepared.eval_enc),
            skipped=prepared.skipped_rows,
            hub_dataset=report.hub_dataset, train_tokens=tokens, trained_tokens=trained,
            tools=distinct_tools(prepared.train_rows, MAX_RECORDED_TOOLS) or None,
        ),
        # Held-out prompts travel with the run, for the Space's examples and the card's snippet.
        example_prompts=_example_prompts(prepared.eval_rows or prepared.train_rows),
        created=datetime.now().isoformat(timespec="seconds"),
    )


def run_metrics(trainer, prepared: PreparedData, run_plan: Plan, wall: float) -> Metrics:
    """The run's ``metrics.json`` record, from the trainer's log history and the clock."""
    state = trainer.state
    epochs = state.epoch or run_plan.options.epochs
    train_losses = [h["loss"] for h in state.log_history if "loss" in h]
    eval_losses = [h["eval_loss"] for h in state.log_history if "eval_loss" in h]
    tokens, trained = token_counts(prepared.train_enc)
    peak, kind = peak_memory(run_plan.placement)
    trainable, total = methods.trainable_parameters(trainer.model)
    return Metrics(
        train_loss_first=train_losses[0] if train_losses else None,
        train_loss_last=train_losses[-1] if train_losses else None,
        eval_loss_first=eval_losses[0] if eval_losses else None,
        eval_loss_best=min(eval_losses) if eval_losses else None,
        eval_loss_last=eval_losses[-1] if eval_losses else None,
        best_checkpoint=state.best_model_checkpoint,
        epochs=round(float(epochs), 3),
        steps=state.global_step,
        train_rows=len(prepared.train_enc),
        eval_rows=len(prepared.eval_enc),
        skipped_rows=prepared.skipped_rows,
        tokens_per_epoch=tokens,
        trained_tokens_per_epoch=trained,
        tokens_per_second=round(tokens * epochs / wall, 2) if wall > 0 else None,
        trained_tokens_per_second=round(trained * epochs / wall, 2) if wall > 0 else None,
        wall_seconds=round(wall, 2),
        device=run_plan.placement.device,
        dtype=run_plan.placement.dtype_name,
        peak_memory_bytes=peak,
        peak_memory_kind=kind,
        trainable_params=trainable,
        total_params=total,
        rows_per_forward=run_plan.rows_per_forward,
        # Only method="auto" estimates before training; the peak of the forwards that ran.
        estimated_peak_memory_bytes=run_plan.peak_bytes if run_plan.method_choice else None,
        **preference_metrics(state.log_history),
    )


# metrics.json's preference fields and the eval metrics TRL's DPO/KTO trainers log them under.
PREFERENCE_METRICS = {"reward_accuracy": "eval_rewards/accuracies", "reward_margin": "eval_rewards/margins",
                      "logps_chosen": "eval_logps/chosen", "logps_rejected": "eval_logps/rejected"}


def preference_metrics(log_history: list[dict]) -> dict[str, float]:
    """The reward accuracy, margin and chosen/rejected log-probs of the first evaluation (before
    training: ``eval_on_start``) and the last, as :class:`~tunekit.record.Metrics` fields.
    Empty for SFT runs and runs without an eval split. KTO logs no accuracy."""
    out = {}
    for name, key in PREFERENCE_METRICS.items():
        values = [h[key] for h in log_history if key in h]
        if values:
            out[f"{name}_first"], out[f"{name}_last"] = round(values[0], 4), round(values[-1], 4)
    return out


def displacement_warning(metrics: Metrics, run_plan: Plan) -> str | None:
    """DPO/KTO can separate the two sides by making both less likely; when the preferred
    replies end less likely than the base found them, generation tends to degenerate while the
    reward metrics look perfect (measured on the TL;DR pairs: lr 1e-3 x 126 updates took the
    chosen log-prob from -112 to -159 at margin 17.7, and every held-out reply looped
    "TL;TL;TL:..."; at 2e-4 it rose to -78). None when that did not happen or was not measured."""
    first, last = metrics.logps_chosen_first, metrics.logps_chosen_last
    # 5% of slack: a chosen reply's log-prob may drift down a little in a healthy run.
    if run_plan.objective == "sft" or first is None or last is None or last >= first * 1.05:
        return None
    margin = "" if metrics.reward_margin_last is None else f" at a reward margin of {metrics.reward_margin_last:g}"
    remedies = [f"a lower learning rate (this run: {run_plan.lr:g})", "fewer epochs"]
    if run_plan.objective == "dpo" and "sft" not in (run_plan.dpo_loss or ()):
        remedies.append("TRL's SFT term on the chosen replies, the default "
                        "(training_args={'loss_type': ['sigmoid', 'sft']})")
    return (f"the preferred replies became less likely during {run_plan.objective.upper()} training: their "
            f"eval log-prob went from {first:.1f} to {last:.1f} per reply{margin}. Training pushed both sides "
            "down, and such a model's replies often degenerate; read a few (result.chat). "
            f"{', '.join(remedies[:-1]).capitalize()} or {remedies[-1]} keep them likely.")


def reference_kind(prepared: PreparedData, run_plan: Plan) -> str:
    """How a DPO/KTO run scores its reference, in the record's words."""
    if prepared.start is not None:
        return "the starting adapter"
    return "base (adapter off)" if methods.get(run_plan.method).peft else "a frozen copy"


def _example_prompts(rows: list[dict], n: int = 4) -> list[str]:
    prompts = []
    for row in rows:
        messages = row.get("messages") or row.get("prompt") or []
        user = next((m["content"] for m in messages if m["role"] == "user"), None)
        if user in prompts:  # KTO rows share prompts
            continue
        if user:
            prompts.append(user)
        if len(prompts) == n:
            break
    return prompts


def token_counts(encoded: list[dict]) -> tuple[int, int]:
    """``(tokens, trained tokens)`` of encoded rows: all positions, and those carrying loss (for
    a DPO pair, both sequences and both replies)."""
    from .templates.pairs import sequence_lengths, trained_tokens

    tokens = sum(sum(sequence_lengths(r)) for r in encoded)
    trained = sum(trained_tokens(r) for r in encoded)
    return tokens, trained


def peak_memory(where) -> tuple[int, str]:
    """``(bytes, kind)``: CUDA's ``max_memory_allocated`` on a GPU, else this process's peak RSS."""
    if where.is_cuda:
        import torch

        return int(torch.cuda.max_memory_allocated()), "cuda_max_allocated"
    return peak_rss_bytes(), "rss"


def peak_rss_bytes() -> int:
    """This process's peak resident set since it started its program.

    Linux's ``VmHWM`` when readable: ``ru_maxrss`` survives ``exec``, so a child started from a
    large parent (compare's spawned runs, a benchmark's children) would report the parent's size
    at the fork instead of its own peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def resume_point(out: Path, *, main: bool = True) -> Path | None:
    """The checkpoint a resumed run starts from: the newest complete one under
    ``out/checkpoints``, or None (start from the beginning) when there is none.

    The main process deletes the incomplete checkpoints newer than it (a run killed while
    saving leaves one), so the resumed run never writes into a half-written folder.
    """
    folder = out / CHECKPOINTS
    resume_from = checkpoints.last_complete(folder)
    if main:
        for gone in checkpoints.discard_after(folder, resume_from):
            log.warning("deleted %s: it was not completely written", gone)
    if resume_from is None:
        log.warning("resume=True but %s has no complete checkpoint yet; starting from the beginning", out)
    else:
        log.info("resuming from %s", resume_from)
    return resume_from


def _fix_adapter_base_name(out: Path, name: str) -> None:
    """PEFT records the local folder the base was loaded from; record the Hub name instead, so
    the adapter resolves its base on another machine."""
    path = out / "adapter_config.json"
    if path.exists():
        cfg = json.loads(path.read_text())
        cfg["base_model_name_or_path"] = name
        path.write_text(json.dumps(cfg, indent=2, sort_keys=True))


def _jsonable(d: dict) -> dict:
    return {k: (v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v)) for k, v in d.items()}
