"""The one training path, in named stages: prepare data → plan → build model → build trainer →
train and save.

Full, LoRA and QLoRA differ only in how the model is loaded and wrapped (``methods.py``); every
default is settled once, before any weights load, in a :class:`tunekit.plan.Plan`.
"""

from __future__ import annotations

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
from .errors import TrainingError
from .folders import check_new, check_resumable, fresh_dir, make_dir, run_name
from .options import Options, renamed
from .placement import placement
from .record import RUN_FILE, DataInfo, Metrics, RunInfo, TemplateInfo

log = logging.getLogger(__name__)

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
        run_plan = build_plan(opts, prepared.base.path, prepared.train_enc, prepared.eval_enc,
                                  placement(opts.device))
        # After the plan, so the default folder name says which method runs.
        out = output_dir(run_plan.options)
        model, peft_config = build_model(prepared, run_plan)
        trainer = build_trainer(model, peft_config, prepared, run_plan, out)
        return train_and_save(trainer, prepared, run_plan, out, adapter=peft_config is not None)


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
        return build_plan(opts, prepared.base.path, prepared.train_enc, prepared.eval_enc,
                              placement(opts.device), estimate=True)


def _data_argument(data: Any, options: dict[str, Any], *, where: str) -> tuple[Any, dict[str, Any]]:
    if "data_source" in options:
        given = {"data": data} if data is not None else {}
        options = renamed({**given, **options}, _DATA_ALIASES, where=where)
        data = options.pop("data")
    if data is None:
        raise TypeError(f"{where}() missing 1 required argument: 'data'")
    return data, options


def prepare_tokenizer(base_name: str | None, template_name: str | None):
    """Resolve the base and its tokenizer with the chat template set. Returns the base, the
    tokenizer, the template and the template tokens that had to be added to the vocabulary."""
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
        train_enc / eval_enc: their encodings (``input_ids``, ``labels``).
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
    reports, eval_report = [report], None
    if opts.eval_data is not None:
        eval_rows, eval_report = data_module.read_rows(opts.eval_data)
        reports.append(eval_report)
    if not train_rows or (eval_report is not None and not eval_rows):
        data_module.settle(reports, opts.on_bad_rows)  # nothing to tokenise: report what there is
    if eval_report is None:
        train_rows, eval_rows = data_module.split_examples(train_rows, opts.eval_split, seed=opts.seed)
    base, tokenizer, template, missing = prepare_tokenizer(opts.base, opts.template)
    kw = dict(train_on=opts.train_on, max_length=opts.max_length)
    train_enc, train_problems = templates.encode_rows(train_rows, tokenizer, **kw, source=report.source,
                                                      unit=report.unit)
    held = eval_report or report
    eval_enc, eval_problems = templates.encode_rows(eval_rows, tokenizer, **kw, source=held.source, unit=held.unit)
    report.add(train_problems)
    held.add(eval_problems)
    data_module.settle(reports, opts.on_bad_rows)
    train_rows, train_enc = _usable(train_rows, train_enc)
    eval_rows, eval_enc = _usable(eval_rows, eval_enc)
    if not train_enc:
        raise TrainingError("no training rows are left after validation; nothing to train on")
    return PreparedData(base, tokenizer, template, missing, report, train_rows, eval_rows, train_enc, eval_enc,
                        eval_report)


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
    missing tokens, and make the LoRA config. Returns ``(model, peft_config or None)``."""
    opts, where = run_plan.options, run_plan.placement
    method = methods.get(run_plan.method)
    model = models.load_model(prepared.base.path, where=where, quantize_4bit=method.quantized,
                              trust_remote_code=opts.trust_remote_code)
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


# -- stage 4: trainer ------------------------------------------------------------------------------
def build_trainer(model, peft_config, prepared: PreparedData, run_plan: Plan, out: Path):
    """The :class:`tunekit.trainer.Trainer` for the plan, with its callbacks and datasets."""
    from datasets import Dataset
    from transformers import EarlyStoppingCallback
    from trl import SFTConfig

    from .trainer import Trainer

    opts = run_plan.options
    has_eval = len(prepared.eval_enc) > 0
    config = SFTConfig(**{**sft_arguments(run_plan, out, has_eval=has_eval), **(opts.training_args or {})})
    callbacks = []
    if has_eval and opts.early_stopping:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=opts.early_stopping))
    if opts.progress:
        from .progress import ProgressBar

        callbacks.append(ProgressBar())
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
        objective="sft",
        tunekit_version=__version__,
        base_path=str(base.path) if not base.embedded and Path(base.name).is_dir() else None,
        embedded_base=base.embedded,
        base_license=base.license,
        method_choice=run_plan.method_choice,  # how method="auto" decided; None when the method was given
        template=TemplateInfo(name=tpl.name, sha256=tpl.sha256, eos=tpl.eos),
        train_on=run_plan.options.train_on,
        options=_jsonable(vars(run_plan.options)),
        data=DataInfo(
            source=report.source, format=report.format, rows=report.rows,
            train_rows=len(prepared.train_enc), eval_rows=len(prepared.eval_enc),
            skipped=prepared.skipped_rows,
            hub_dataset=report.hub_dataset, train_tokens=tokens, trained_tokens=trained,
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
    )


def _example_prompts(rows: list[dict], n: int = 4) -> list[str]:
    prompts = []
    for row in rows:
        user = next((m["content"] for m in row.get("messages", []) if m["role"] == "user"), None)
        if user:
            prompts.append(user)
        if len(prompts) == n:
            break
    return prompts


def token_counts(encoded: list[dict]) -> tuple[int, int]:
    """``(tokens, trained tokens)`` of encoded rows: all positions, and those carrying loss."""
    tokens = sum(len(r["input_ids"]) for r in encoded)
    trained = sum(sum(1 for t in r["labels"] if t != templates.IGNORE_INDEX) for r in encoded)
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
