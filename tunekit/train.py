"""The one training path: data → template → SFTTrainer → output folder.

Full, LoRA and QLoRA differ only in how the model is loaded and wrapped (``methods.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from . import card, data, methods, models, templates
from .errors import ConfigError, TrainingError
from .options import Options

log = logging.getLogger(__name__)

RUN_FILE = "tunekit.json"  # what tunekit.load() needs to reopen a run


def finetune(data_source: Any, **options: Any):
    """Fine-tune a chat model on your data.

    Args:
        data_source: a path (.jsonl/.json/.csv/.parquet or a folder), a Hub dataset id, a
            ``datasets.Dataset``/``DatasetDict`` or a list of dicts, in any common chat format
            (OpenAI messages, ShareGPT, Alpaca, prompt/completion, plain text).
        **options: see :class:`tunekit.options.Options` — e.g. ``base``, ``method``
            ("full" | "lora" | "qlora"), ``epochs``, ``lr``, ``r``, ``output_dir``, ``resume``.

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
    opts = Options.from_kwargs(options)
    with _quiet_libraries():
        return _Run(data_source, opts).execute()


@contextlib.contextmanager
def _quiet_libraries():
    """Our own progress bar replaces the per-stage bars of datasets and transformers (dataset
    maps, weight loading), which otherwise flood the terminal; restored afterwards."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets_bars = datasets.is_progress_bar_enabled()
    hf_bars = hf_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if datasets_bars:
            datasets.enable_progress_bars()
        if hf_bars:
            hf_logging.enable_progress_bar()


def prepare_tokenizer(base_name: str | None, template_name: str | None):
    """Resolve the base and its tokenizer with the chat template set. Returns the base, the
    tokenizer, the template and the template tokens that had to be added to the vocabulary."""
    base = models.resolve_base(base_name)
    tokenizer = models.load_tokenizer(base.path)
    template = templates.resolve_template(tokenizer, template_name)
    missing = templates.apply_template(tokenizer, template)
    if missing:
        # Tokens the template needs but the vocabulary lacks: add them (the model is resized and
        # the new embeddings trained), rather than letting them split into ordinary pieces.
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    return base, tokenizer, template, missing


def preview(data_source: Any, *, base: str | None = None, template: str | None = None, n: int = 3,
            train_on: str = "assistant", color: bool = False) -> str:
    """Show how rows will be rendered with the chat template, trained spans marked.

    Args:
        data_source: anything ``finetune`` accepts.
        base: the base whose tokenizer and template to use (default: the embedded model).
        template: a template name to use instead of the base's own.
        n: how many rows to show.
        train_on: "assistant" or "all", as in ``finetune``.
        color: mark trained spans with ANSI green instead of brackets.

    Returns:
        The rendered text.
    """
    rows, _ = data.read_examples(data_source)
    _, tokenizer, _, _ = prepare_tokenizer(base, template)
    return templates.preview(rows[:n], tokenizer, n=n, train_on=train_on, color=color)


class _Run:
    def __init__(self, data_source: Any, opts: Options):
        self.data_source = data_source
        self.opts = opts

    # -- preparation -------------------------------------------------------------------------
    def execute(self):
        opts = self.opts
        train_rows, report = data.read_examples(self.data_source, on_bad_rows=opts.on_bad_rows)
        if opts.eval_data is not None:
            eval_rows, _ = data.read_examples(opts.eval_data, on_bad_rows=opts.on_bad_rows)
        else:
            train_rows, eval_rows = data.split_examples(train_rows, opts.eval_split, seed=opts.seed)
        self.report = report

        base, tokenizer, template, missing = prepare_tokenizer(opts.base, opts.template)
        train_enc, skipped = templates.encode_all(
            train_rows, tokenizer, train_on=opts.train_on, max_length=opts.max_length,
            on_bad_rows=opts.on_bad_rows, source=report.source,
        )
        eval_enc, eval_skipped = templates.encode_all(
            eval_rows, tokenizer, train_on=opts.train_on, max_length=opts.max_length,
            on_bad_rows=opts.on_bad_rows, source=str(opts.eval_data or report.source),
        )
        if not train_enc:
            raise TrainingError("no training rows are left after validation; nothing to train on")

        opts = self.opts = with_grad_accum(opts, len(train_enc))
        where = models.placement(opts.device)
        choice = None
        if opts.method == "auto":
            # Decided from the base's config before any weights load: a run that cannot fit fails
            # in seconds with the breakdown, not minutes later with an out-of-memory error.
            choice = _choose_method(opts, base.path, train_enc, where)
            opts = self.opts = dataclasses.replace(
                opts, method=choice["method"], gradient_checkpointing=choice["gradient_checkpointing"])
        # After the choice, so the default folder name says which method ran.
        out = self._output_dir()
        # Before the weights load, like the method choice: the estimate counts them.
        self.rows_per_forward, merged_peak = _rows_per_forward(opts, base.path, train_enc, where)
        model = models.load_model(
            base.path, where=where, quantize_4bit=methods.quantized(opts.method),
            trust_remote_code=opts.trust_remote_code,
        )
        new_token_ids = []
        if missing:
            model.resize_token_embeddings(len(tokenizer))
            new_token_ids = tokenizer.convert_tokens_to_ids(missing)
        checkpointing = _default_checkpointing(opts, where)
        if not where.is_cuda:
            models.tune_cpu_runtime()
        peft_config = None
        if methods.uses_peft(opts.method):
            peft_config = methods.lora_config(
                r=opts.r, alpha=opts.alpha, dropout=opts.dropout,
                target_modules=opts.target_module_list(), use_dora=opts.use_dora, use_rslora=opts.use_rslora,
            )
            if new_token_ids:
                peft_config.trainable_token_indices = {"embed_tokens": new_token_ids}
        if methods.quantized(opts.method):
            model = methods.prepare_for_kbit(model, gradient_checkpointing=checkpointing)

        stats = _token_stats(train_enc)
        trainer = self._trainer(model, tokenizer, peft_config, train_enc, eval_enc, out, where, checkpointing)
        resume_from = _last_checkpoint(out) if opts.resume else None
        if opts.resume and resume_from is None:
            log.warning("resume=True but %s has no checkpoint yet; starting from the beginning", out)

        start = time.perf_counter()
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        wall = time.perf_counter() - start
        trainer.save_model(str(out))  # writes on the main process only
        # Under data parallelism (tunekit train --nproc, accelerate launch) every process gets
        # here; only the main one writes the output folder and pushes.
        main = trainer.is_world_process_zero()
        if main:
            # save_model also pickles the TrainingArguments; the output folder ships safetensors
            # only (the checkpoints keep their copy for resuming).
            (out / "training_args.bin").unlink(missing_ok=True)
            tokenizer.save_pretrained(str(out))
            if peft_config is not None:
                _fix_adapter_base_name(out, base.name if not base.embedded else models.EMBEDDED_ID)

        epochs_done = trainer.state.epoch or opts.epochs
        metrics = _metrics(trainer, stats, epochs_done, wall, where, report, len(train_enc), len(eval_enc),
                           skipped + eval_skipped)
        trainable, total = methods.trainable_parameters(trainer.model)
        metrics.update(trainable_params=trainable, total_params=total, rows_per_forward=self.rows_per_forward)
        if choice:
            # The choice was estimated at the user's micro-batches; larger forwards have their own.
            metrics["estimated_peak_memory_bytes"] = merged_peak or choice["estimated_peak_bytes"]
        run_info = {
            "tunekit_version": _version(),
            "base": base.name,
            "base_path": str(base.path) if not base.embedded and Path(base.name).is_dir() else None,
            "embedded_base": base.embedded,
            "base_license": base.license,
            "method": opts.method,
            "method_choice": choice,  # how method="auto" decided; None when the method was given
            "adapter": peft_config is not None,
            "template": {"name": template.name, "sha256": template.sha256, "eos": template.eos},
            "train_on": opts.train_on,
            "options": _jsonable(vars(opts)),
            "data": {
                "source": report.source, "format": report.format, "rows": report.rows,
                "train_rows": len(train_enc), "eval_rows": len(eval_enc),
                "skipped": len(report.skipped) + len(skipped) + len(eval_skipped),
                "hub_dataset": report.hub_dataset,
                "train_tokens": stats["tokens"], "trained_tokens": stats["trained"],
            },
            # Held-out prompts travel with the run, for the Space's examples and the card's snippet.
            "example_prompts": _example_prompts(eval_rows or train_rows),
            "created": datetime.now().isoformat(timespec="seconds"),
        }
        if main:
            (out / RUN_FILE).write_text(json.dumps(run_info, indent=2))
            (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
            card.plot_loss(trainer.state.log_history, out / "loss.png")
            card.write_card(out, run_info, metrics)
        trainer.accelerator.wait_for_everyone()  # the other processes read back what the main one wrote

        from .result import TuneResult

        result = TuneResult.from_dir(out)
        if main and opts.push_to:
            result.push(opts.push_to, private=opts.private)
        if main and opts.push_space:
            result.push_space(opts.push_space, private=opts.private)
        return result

    def _output_dir(self) -> Path:
        opts = self.opts
        if opts.output_dir:
            out = Path(opts.output_dir).expanduser()
            # Only the main process checks: in a multi-process run the others may look after it
            # has started writing checkpoints there.
            if out.exists() and any(out.iterdir()) and not opts.resume and os.environ.get("RANK", "0") == "0":
                raise ConfigError(
                    f"output_dir {out} already exists and is not empty; tunekit never overwrites a run. "
                    "Pass resume=True to continue it, or choose another output_dir."
                )
        else:
            base = (opts.base or models.EMBEDDED_ID).rstrip("/").split("/")[-1]
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            out = Path("runs") / f"{base}-{opts.method}-{stamp}"
            n = 1
            while out.exists():
                n += 1
                out = Path("runs") / f"{base}-{opts.method}-{stamp}-{n}"
        out.mkdir(parents=True, exist_ok=True)
        return out

    def _trainer(self, model, tokenizer, peft_config, train_enc, eval_enc, out: Path, where, checkpointing: bool):
        from datasets import Dataset
        from transformers import EarlyStoppingCallback
        from trl import SFTConfig

        opts = self.opts
        has_eval = len(eval_enc) > 0
        updates_per_epoch = math.ceil(len(train_enc) / (opts.batch_size * opts.grad_accum))
        total_updates = max(1, math.ceil(updates_per_epoch * opts.epochs))
        eval_steps = opts.eval_steps or _default_eval_steps(total_updates, train_enc, eval_enc, opts.epochs)
        args: dict[str, Any] = dict(
            output_dir=str(out / "checkpoints"),
            num_train_epochs=opts.epochs,
            per_device_train_batch_size=self.rows_per_forward,
            # Evaluation keeps no activations (and its loss goes by chunks), so twice the rows per
            # forward fit; bigger matmuls run faster per token on CPU (5.8 -> 5.0 s for 40 rows here).
            per_device_eval_batch_size=2 * opts.batch_size,
            gradient_accumulation_steps=opts.batch_size * opts.grad_accum // self.rows_per_forward,
            learning_rate=opts.lr or methods.default_lr(opts.method),
            lr_scheduler_type="cosine",
            warmup_steps=0.05,
            weight_decay=0.0,
            optim=methods.optimizer_name(opts.method, cuda=where.is_cuda),
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
            bf16=where.is_cuda and str(where.dtype) == "torch.bfloat16",
            fp16=where.is_cuda and str(where.dtype) == "torch.float16",
            use_cpu=not where.is_cuda,
            activation_checkpointing=checkpointing,
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
        args.update(opts.training_args or {})
        config = SFTConfig(**args)
        callbacks = []
        if has_eval and opts.early_stopping:
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=opts.early_stopping))
        if opts.progress:
            from .progress import ProgressBar

            callbacks.append(ProgressBar())
        columns = ("input_ids", "labels")
        train_ds = Dataset.from_list([{k: r[k] for k in columns} for r in train_enc])
        eval_ds = Dataset.from_list([{k: r[k] for k in columns} for r in eval_enc]) if has_eval else None
        from .trainer import Trainer

        return Trainer(
            model=model,
            args=config,
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=callbacks,
            compute_dtype=where.dtype,
        )


def with_grad_accum(opts: Options, train_rows: int) -> Options:
    """``opts`` with ``grad_accum`` decided: the user's value, else :func:`methods.default_grad_accum`
    for this many training rows."""
    if opts.grad_accum is not None:
        return opts
    return dataclasses.replace(opts, grad_accum=methods.default_grad_accum(train_rows, opts.batch_size, opts.epochs))


def _choose_method(opts: Options, base_path: Path, train_enc: list[dict], where) -> dict[str, Any]:
    """Resolve ``method="auto"`` with :func:`tunekit.estimate.choose_method` from the base's
    config, the encoded rows and the device's free memory, and log the reason in one line.

    Raises:
        ResourceError: no method fits; the message holds the side-by-side breakdown.
    """
    from .errors import ModelError
    from .estimate import choose_method

    lengths = [len(r["input_ids"]) for r in train_enc]
    try:
        method, reason, ests = choose_method(
            str(base_path), n_examples=len(train_enc), device=where.device, dtype=str(where.dtype),
            # Batches are padding-free, so the longest row times the batch bounds a micro-batch.
            seq_len=max(lengths), batch_size=opts.batch_size, r=opts.r,
            grad_accum=with_grad_accum(opts, len(train_enc)).grad_accum,
            target_modules=opts.target_module_list(), lora_dropout=opts.dropout,
            gradient_checkpointing=opts.gradient_checkpointing, tokens_per_epoch=sum(lengths),
        )
    except ModelError as e:
        # An architecture the estimator cannot build from its config (custom model code): LoRA,
        # the seeds' default, is the safe bet; refusing to train would help no one.
        log.warning("method='auto': cannot estimate memory for %s (%s); using lora", base_path, e)
        return {"requested": "auto", "method": "lora", "reason": f"lora: no estimate ({e})",
                "estimated_peak_bytes": None, "gradient_checkpointing": opts.gradient_checkpointing}
    log.info("method='auto' chose %s", reason)
    chosen = ests[method]
    return {
        "requested": "auto",
        "method": method,
        "reason": reason,
        "estimated_peak_bytes": chosen.total_bytes,
        "estimated_peak_bytes_per_method": {m: e.total_bytes for m, e in ests.items()},
        # choose_method may have turned checkpointing on to make a method fit; training must then
        # use it too. Otherwise the user's setting (or training's own default) stays.
        "gradient_checkpointing": True if chosen.gradient_checkpointing and opts.gradient_checkpointing is None
        else opts.gradient_checkpointing,
    }


# Evaluations may take up to this share of the training compute. An evaluation is one forward
# pass over the eval set; a training pass is a forward and a backward (~3x a forward) per epoch.
EVAL_BUDGET = 0.1
MAX_EVALS = 5


def _default_eval_steps(total_updates: int, train_enc: list[dict], eval_enc: list[dict], epochs: float) -> int:
    """About five evaluations (and checkpoints) per run, fewer when the eval set is large next to
    the training set: with 200 rows x 2 epochs and 40 eval rows, five evaluations plus the one on
    start would cost a fifth of the run; the budget allows the start and two more."""
    eval_tokens = sum(len(r["input_ids"]) for r in eval_enc)
    if not eval_tokens:
        return max(1, round(total_updates / MAX_EVALS))
    train_cost = 3 * epochs * sum(len(r["input_ids"]) for r in train_enc)
    affordable = math.floor(EVAL_BUDGET * train_cost / eval_tokens) - 1  # the first is the one on start
    evals = min(MAX_EVALS, max(1, affordable))
    return max(1, math.ceil(total_updates / evals))


# Tokens per forward pass that CPU matmuls want: [M,576]x[576,1536] ran at 205 GFLOP/s for
# M = 78, 274 at 312, 295 at 624; a 16-row update of ~78-token rows took 1.05-1.17x as long in
# 4 forwards of 4 rows as in one of 16, and 1.13-1.18x as long as in 2 of 8
# (benchmarks/micro_batches.py): beyond ~1k tokens there is nothing more to gain.
TOKENS_PER_FORWARD = 1024


def _rows_per_forward(opts: Options, base_path: Path, train_enc: list[dict], where) -> tuple[int, int | None]:
    """``(rows per forward pass, estimated peak bytes)``: ``batch_size``, or on CPU more of an
    update's ``batch_size x grad_accum`` rows at once (up to about :data:`TOKENS_PER_FORWARD`
    tokens) when the memory estimate says they fit, with that estimate (None for ``batch_size``).

    The update is the same (the same rows, the loss summed over them and divided by their trained
    tokens, as accumulation does); only the matmuls are larger, which this CPU runs faster per
    token. Not with gradient checkpointing (memory mode: activations are what it saves) nor on
    CUDA (not measured there).
    """
    from .estimate import estimate, fits, free_memory

    if opts.grad_accum == 1 or where.is_cuda or _default_checkpointing(opts, where):
        return opts.batch_size, None
    update = opts.batch_size * opts.grad_accum
    lengths = [len(r["input_ids"]) for r in train_enc]
    mean = sum(lengths) / len(lengths)
    # A divisor of the update, so that every forward of a full update has the same rows.
    rows = max([d for d in range(opts.batch_size, update + 1) if update % d == 0 and d * mean <= TOKENS_PER_FORWARD],
               default=opts.batch_size)
    if rows == opts.batch_size:
        return rows, None
    try:
        est = estimate(str(base_path), opts.method, seq_len=max(lengths), batch_size=rows, r=opts.r,
                       target_modules=opts.target_module_list(), lora_dropout=opts.dropout, device="cpu",
                       dtype=str(where.dtype), grad_accum=update // rows, gradient_checkpointing=False,
                       flops=0)  # memory only: no speed probe
    except Exception as e:  # noqa: BLE001 - a speed-up must never stop a run: keep the user's batches
        log.info("keeping forwards of %d rows: no memory estimate for larger ones (%s)", opts.batch_size, e)
        return opts.batch_size, None
    # Processes of one data-parallel run share the machine's memory.
    if not fits(est, free_memory("cpu") // int(os.environ.get("WORLD_SIZE", "1"))):
        return opts.batch_size, None
    log.info("updates of %d rows run as %d forward(s) of %d rows instead of %d of %d (same update, larger "
             "matmuls)", update, update // rows, rows, opts.grad_accum, opts.batch_size)
    return rows, est.total_bytes


def _default_checkpointing(opts: Options, where) -> bool:
    if opts.gradient_checkpointing is not None:
        return opts.gradient_checkpointing
    return methods.default_gradient_checkpointing(opts.method, cuda=where.is_cuda)


def _example_prompts(rows: list[dict], n: int = 4) -> list[str]:
    prompts = []
    for row in rows:
        user = next((m["content"] for m in row.get("messages", []) if m["role"] == "user"), None)
        if user:
            prompts.append(user)
        if len(prompts) == n:
            break
    return prompts


def _token_stats(encoded: list[dict]) -> dict[str, int]:
    tokens = sum(len(r["input_ids"]) for r in encoded)
    trained = sum(sum(1 for t in r["labels"] if t != -100) for r in encoded)
    return {"tokens": tokens, "trained": trained}


def _metrics(trainer, stats, epochs, wall, where, report, n_train, n_eval, skipped) -> dict[str, Any]:
    history = trainer.state.log_history
    train_losses = [h["loss"] for h in history if "loss" in h]
    eval_losses = [h["eval_loss"] for h in history if "eval_loss" in h]
    tokens_seen = stats["tokens"] * epochs
    metrics: dict[str, Any] = {
        "train_loss_first": train_losses[0] if train_losses else None,
        "train_loss_last": train_losses[-1] if train_losses else None,
        "eval_loss_first": eval_losses[0] if eval_losses else None,
        "eval_loss_best": min(eval_losses) if eval_losses else None,
        "eval_loss_last": eval_losses[-1] if eval_losses else None,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "epochs": round(float(epochs), 3),
        "steps": trainer.state.global_step,
        "train_rows": n_train,
        "eval_rows": n_eval,
        "skipped_rows": len(report.skipped) + len(skipped),
        "tokens_per_epoch": stats["tokens"],
        "trained_tokens_per_epoch": stats["trained"],
        "tokens_per_second": round(tokens_seen / wall, 2) if wall > 0 else None,
        "trained_tokens_per_second": round(stats["trained"] * epochs / wall, 2) if wall > 0 else None,
        "wall_seconds": round(wall, 2),
        "device": where.device,
        "dtype": str(where.dtype).replace("torch.", ""),
    }
    metrics.update(_peak_memory(where))
    return metrics


def _peak_memory(where) -> dict[str, Any]:
    if where.is_cuda:
        import torch

        return {"peak_memory_bytes": int(torch.cuda.max_memory_allocated()), "peak_memory_kind": "cuda_max_allocated"}
    return {"peak_memory_bytes": peak_rss_bytes(), "peak_memory_kind": "rss"}


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


def _last_checkpoint(out: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    folder = out / "checkpoints"
    if not folder.is_dir():
        return None
    last = get_last_checkpoint(str(folder))
    return Path(last) if last else None


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


def _version() -> str:
    from . import __version__

    return __version__
