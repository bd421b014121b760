"""The training plan: every default of a run settled once, before any weights load.

:func:`build` takes the options, the base's folder, the encoded rows and the placement, and
decides the method (``method="auto"``), gradient accumulation, rows per forward pass, gradient
checkpointing, evaluation interval, learning rate, optimizer and fast paths, each with the reason
it was decided so. Training follows the :class:`Plan`; ``compare`` reuses it per method; the dry
run (``tunekit train --dry-run``) prints :meth:`Plan.describe`.

Only the standard library and tunekit's light modules are imported at the top.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import config, methods
from .options import Options
from .placement import Placement
from .units import format_bytes, format_seconds

log = logging.getLogger(__name__)

# Evaluations may take up to this share of the training compute. An evaluation is one forward
# pass over the eval set; a training pass is a forward and a backward (~3x a forward) per epoch.
EVAL_BUDGET = 0.1
MAX_EVALS = 5

# Tokens per forward pass that CPU matmuls want: [M,576]x[576,1536] ran at 205 GFLOP/s for
# M = 78, 274 at 312, 295 at 624; a 16-row update of ~78-token rows took 1.05-1.17x as long in
# 4 forwards of 4 rows as in one of 16, and 1.13-1.18x as long as in 2 of 8
# (benchmarks/micro_batches.py): beyond ~1k tokens there is nothing more to gain.
TOKENS_PER_FORWARD = 1024

# DPO/KTO's beta when not given: TRL's default (the DPO paper's 0.1).
DEFAULT_BETA = 0.1

# DPO's loss when training_args gives no loss_type: TRL's sigmoid (the DPO paper's) plus the NLL of
# the chosen replies (TRL's "sft" term; RPO). Measured on the TL;DR pairs (LoRA, 280 x 2, lr
# 2e-4): sigmoid alone opened all 40 held-out replies with the summary and then looped on 37
# ("TL;DR: ..." again and again; the chosen replies' log-prob went -112 -> -78); with the NLL
# term none looped and it went -112 -> -33 (docs/preferences.md).
DPO_LOSS = ("sigmoid", "sft")


@dataclass(frozen=True)
class Plan:
    """How a run will train: each setting with the reason it has its value.

    Attributes:
        options: the run's options with ``method``, ``grad_accum`` and (when ``method="auto"``
            turned it on) ``gradient_checkpointing`` filled in: what ``tunekit.json`` records.
        method: ``"full"``, ``"lora"`` or ``"qlora"``; ``method_reason`` says why.
        method_choice: how ``method="auto"`` decided (the record's ``method_choice``); None when
            the method was given.
        grad_accum: micro-batches per update; ``grad_accum_reason``.
        rows_per_forward: rows in one forward pass (``batch_size``, or more on CPU when they
            fit); ``rows_per_forward_reason``.
        gradient_checkpointing: whether activations are recomputed; ``gradient_checkpointing_reason``.
        eval_steps: updates between evaluations and checkpoints; ``eval_steps_reason``.
        lr: the learning rate; ``lr_reason``.
        optimizer: the ``transformers`` optimizer name.
        placement: device and compute dtype.
        fastpath: whether tunekit's fast paths run (see :mod:`tunekit.fastpath`).
        attention: how padding-free batches attend (:func:`decide_fast_paths`): ``"varlen"``
            (torch's flash varlen kernel over the rows' boundaries, CUDA), ``"rows"`` (SDPA on
            each row) or ``"sdpa"`` (transformers' SDPA with its block-diagonal mask);
            ``attention_reason``.
        loss: ``"trained"`` (tunekit's loss at trained positions) or ``"trl"`` (TRL's fused,
            chunked LM head: ``SFTTrainer.compute_loss``); ``loss_reason``.
        liger: whether Liger's Triton kernels (RMSNorm, SwiGLU) are applied; ``liger_reason``.
        objective: ``"sft"``, ``"dpo"`` or ``"kto"`` (the data's shape, or ``objective=``);
            ``objective_reason``. ``beta``: DPO/KTO's beta (None for SFT).
        train_rows / eval_rows: encoded rows; ``train_tokens``: tokens per epoch;
            ``longest_row``: the longest row in tokens.
        updates: optimizer updates the run will make (before early stopping).
        estimate: the memory estimate at the user's micro-batches (``method="auto"``'s, or one
            made for the dry run and compare); None when not estimated.
        forward_estimate: the estimate at ``rows_per_forward`` rows, when larger forwards were
            decided on it.
    """

    options: Options
    method: str
    method_reason: str
    method_choice: dict[str, Any] | None
    grad_accum: int
    grad_accum_reason: str
    rows_per_forward: int
    rows_per_forward_reason: str
    gradient_checkpointing: bool
    gradient_checkpointing_reason: str
    eval_steps: int
    eval_steps_reason: str
    lr: float
    lr_reason: str
    optimizer: str
    placement: Placement
    fastpath: bool
    train_rows: int
    eval_rows: int
    train_tokens: int
    longest_row: int
    updates: int
    estimate: Any = None  # tunekit.estimate.Estimate
    forward_estimate: Any = None
    attention: str = "rows"
    attention_reason: str = ""
    loss: str = "trained"
    loss_reason: str = ""
    liger: bool = False
    liger_reason: str = ""
    objective: str = "sft"
    objective_reason: str = ""
    beta: float | None = None
    dpo_loss: tuple[str, ...] | None = None  # TRL's loss_type(s) for DPO; None for SFT/KTO
    dpo_loss_reason: str = ""

    @property
    def trainer_fast_paths(self) -> dict[str, Any]:
        """The keywords of :class:`tunekit.trainer.Trainer` that carry this plan's fast paths."""
        return {"fastpath": self.fastpath, "attention": self.attention, "loss": self.loss, "liger": self.liger}

    @property
    def peak_bytes(self) -> int | None:
        """The estimated peak of what will run: at the merged forwards when there are any."""
        est = self.forward_estimate or self.estimate
        return est.total_bytes if est is not None else None

    @property
    def accumulation_steps(self) -> int:
        """Forward passes per update, as the Trainer's ``gradient_accumulation_steps``."""
        return self.options.batch_size * self.grad_accum // self.rows_per_forward

    def fast_paths_line(self) -> str:
        """The attention, loss and Liger decisions in one line, each with its reason."""
        liger = "on" if self.liger else "off"
        return (f"attention {self.attention} ({self.attention_reason}); loss {self.loss} ({self.loss_reason}); "
                f"liger {liger} ({self.liger_reason})")

    def describe(self) -> str:
        """The plan as a few aligned lines: setting, value, why.

        Example:
            >>> print(tunekit.train.plan("train.jsonl", method="auto").describe())  # doctest: +SKIP
        """
        o = self.options
        ckpt = "on" if self.gradient_checkpointing else "off"
        rows = [
            ("data", f"{self.train_rows} train / {self.eval_rows} eval rows",
             f"{self.train_tokens:,} tokens per epoch, longest row {self.longest_row}"),
            ("objective", self.objective, self.objective_reason),
        ]
        if self.beta is not None:
            rows.append(("beta", f"{self.beta:g}", "given" if o.beta is not None else "default"))
        if self.dpo_loss is not None:
            rows.append(("dpo loss", " + ".join(self.dpo_loss), self.dpo_loss_reason))
        rows += [
            ("method", self.method, self.method_reason),
            ("learning rate", f"{self.lr:g}", self.lr_reason),
            ("batch", f"{o.batch_size} x {self.grad_accum} grad_accum", self.grad_accum_reason),
            ("updates", str(self.updates), f"{o.epochs:g} epoch(s)"),
            ("rows per forward", str(self.rows_per_forward), self.rows_per_forward_reason),
            ("gradient checkpointing", ckpt, self.gradient_checkpointing_reason),
            ("eval_steps", str(self.eval_steps), self.eval_steps_reason),
            ("optimizer", self.optimizer, f"{methods.get(self.method).label} on {self.placement.device}"),
            ("placement", f"{self.placement.device} ({self.placement.dtype_name})",
             "fp32 on CPU (bf16 matmul is ~100x slower there)" if not self.placement.is_cuda
             else "bf16 where the GPU supports it, else fp16"),
            ("fastpath", "on" if self.fastpath else "off",
             ("given" if o.fastpath is not None else "default (TUNEKIT_FASTPATH)") + "; " + self.fast_paths_line()),
        ]
        est = self.forward_estimate or self.estimate
        if est is not None:
            speed = ""
            if est.tokens_per_second:
                speed = f"; ~{est.tokens_per_second:,.0f} tokens/s"
                if est.seconds_per_epoch:
                    speed += f", {format_seconds(est.seconds_per_epoch)} per epoch"
            rows.append(("peak memory (est.)", format_bytes(est.total_bytes),
                         f"{est.batch_size} rows x {est.seq_len} tokens per forward{speed}"))
        else:
            rows.append(("peak memory (est.)", "-", "no estimate for this architecture"))
        width = max(len(name) for name, _, _ in rows)
        vwidth = max(len(value) for _, value, _ in rows)
        return "\n".join(f"{name:<{width}}  {value:<{vwidth}}  {why}".rstrip() for name, value, why in rows)


def build(opts: Options, base_path: Path, train_enc: list[dict], eval_enc: list[dict], where: Placement,
          *, estimate: bool = False, objective: str = "sft", objective_reason: str = "") -> Plan:
    """Settle every default of a run from its options and encoded rows, loading no weights.

    Args:
        opts: validated options (``method`` may be ``"auto"``).
        base_path: the base's local folder (its ``config.json`` is all that is read).
        train_enc / eval_enc: rows from :func:`tunekit.templates.encode_all`.
        where: device and dtype, from :func:`tunekit.placement.placement`.
        estimate: also estimate the memory of a given method (``method="auto"`` always has one).
        objective: ``"sft"``, ``"dpo"`` or ``"kto"``; ``objective_reason`` says why.

    Returns:
        The :class:`Plan`.

    Raises:
        ResourceError: ``method="auto"`` and no method fits (the message holds the breakdown).
    """
    grad_accum, accum_why = decide_grad_accum(opts, len(train_enc))
    opts = dataclasses.replace(opts, grad_accum=grad_accum)
    choice, est = None, None
    if opts.method == "auto":
        # Decided from the base's config before any weights load: a run that cannot fit fails
        # in seconds with the breakdown, not minutes later with an out-of-memory error.
        choice, est = _auto(opts, base_path, train_enc, where, objective)
        opts = dataclasses.replace(opts, method=choice["method"], gradient_checkpointing=choice["gradient_checkpointing"])
        method_why = f"auto: {choice['reason']}"
    else:
        method_why = "given"
    method = methods.get(opts.method)
    checkpointing = default_checkpointing(opts, where)
    if opts.gradient_checkpointing is None:
        ckpt_why = f"default for {method.label} on {'CUDA' if where.is_cuda else 'CPU'}"
    elif choice and choice["gradient_checkpointing"]:
        ckpt_why = "turned on by method='auto' so that it fits"
    else:
        ckpt_why = "given"
    if estimate and est is None:
        est = memory_estimate(opts, base_path, train_enc, where, gradient_checkpointing=checkpointing,
                              objective=objective)
    rows, forward_est = rows_per_forward(opts, base_path, train_enc, where, objective)
    rows_why = (f"{rows // opts.batch_size} micro-batches of {opts.batch_size} in one forward (~{TOKENS_PER_FORWARD} "
                "tokens fit; the same update)" if rows != opts.batch_size else "batch_size")
    updates = max(1, math.ceil(math.ceil(len(train_enc) / (opts.batch_size * grad_accum)) * opts.epochs))
    eval_steps, eval_why = decide_eval_steps(opts, updates, train_enc, eval_enc)
    lengths = sequence_lengths(train_enc)
    fastpath = config.fastpath() if opts.fastpath is None else bool(opts.fastpath)
    paths = decide_fast_paths(where, fastpath=fastpath)
    if objective != "sft" and fastpath:
        # TRL's preference trainers pad each batch and compute their own loss (its fused LM head
        # scores only the replies' positions); the fused LoRA forward still applies.
        paths = {**paths, "attention": "sdpa", "attention_reason": f"TRL's {objective} batches are padded",
                 "loss": "trl", "loss_reason": f"TRL's {objective} loss; its LM head scores the replies only"}
    return Plan(
        options=opts, method=method.name, method_reason=method_why, method_choice=choice,
        grad_accum=grad_accum, grad_accum_reason=accum_why,
        rows_per_forward=rows, rows_per_forward_reason=rows_why,
        gradient_checkpointing=checkpointing, gradient_checkpointing_reason=ckpt_why,
        eval_steps=eval_steps, eval_steps_reason=eval_why,
        lr=opts.lr or method.lr(objective),
        lr_reason="given" if opts.lr else f"{method.label}'s default" + ("" if objective == "sft" else f" for {objective}"),
        optimizer=method.optimizer(cuda=where.is_cuda), placement=where,
        fastpath=fastpath,
        train_rows=len(train_enc), eval_rows=len(eval_enc), train_tokens=sum(lengths),
        longest_row=max(lengths, default=0), updates=updates, estimate=est, forward_estimate=forward_est,
        objective=objective, objective_reason=objective_reason or "given",
        beta=None if objective == "sft" else (opts.beta or DEFAULT_BETA),
        **decide_dpo_loss(opts, objective),
        **paths,
    )


def decide_dpo_loss(opts: Options, objective: str) -> dict[str, Any]:
    """DPO's loss: ``training_args["loss_type"]`` when given, else :data:`DPO_LOSS`."""
    if objective != "dpo":
        return {}
    given = (opts.training_args or {}).get("loss_type")
    if given:
        return {"dpo_loss": (given,) if isinstance(given, str) else tuple(given),
                "dpo_loss_reason": "given (training_args)"}
    return {"dpo_loss": DPO_LOSS,
            "dpo_loss_reason": "default: DPO plus the chosen replies' NLL, so they stay likely (measured)"}


def sequence_lengths(encoded: list[dict]) -> list[int]:
    """Tokens of every sequence the rows put through the model per epoch: one per chat, two per
    DPO pair (prompt + chosen, prompt + rejected), one per KTO completion."""
    from .templates.pairs import sequence_lengths as lengths_of

    return [n for row in encoded for n in lengths_of(row)]


# Sequences a row puts through the model in one forward (DPO: chosen and rejected; KTO: the
# completion and its mismatched KL completion), for the memory estimate's batch.
SEQUENCES_PER_ROW = {"sft": 1, "dpo": 2, "kto": 2}


def decide_fast_paths(where: Placement, *, fastpath: bool, capability: tuple[int, int] | None = None) -> dict[str, Any]:
    """How a run attends, computes its loss and whether Liger's kernels run, each with its reason.

    On CPU tunekit's own paths (measured in docs/performance.md). On CUDA the libraries' own fast
    paths where they exist: torch's flash varlen kernel over the rows' boundaries that TRL's
    padding-free collator derives from ``position_ids`` (one kernel per layer instead of a masked
    or per-row SDPA), TRL's fused LM head for the loss (it scores only labelled positions, in
    chunks, with a Triton kernel; off Triton devices it scores every position, hence tunekit's
    loss on CPU), and Liger's RMSNorm and SwiGLU kernels when ``liger-kernel`` is installed
    (``tunekit[liger]``). With ``fastpath`` off: the reference code everywhere.

    Args:
        where: device and dtype.
        fastpath: tunekit's switch (``fastpath=`` / ``TUNEKIT_FASTPATH``).
        capability: the GPU's compute capability; None reads it from torch.

    Returns:
        ``attention``, ``loss``, ``liger`` and their ``*_reason`` (the :class:`Plan`'s fields).
    """
    if not fastpath:
        return {"attention": "sdpa", "attention_reason": "transformers' own, block-diagonal mask",
                "loss": "trl", "loss_reason": "SFTTrainer.compute_loss", "liger": False, "liger_reason": "fastpath off"}
    if not where.is_cuda:
        return {"attention": "rows", "attention_reason": "SDPA on each row",
                "loss": "trained", "loss_reason": "lm_head at trained positions only; TRL's fused head scores "
                                                  "every position off CUDA",
                "liger": False, "liger_reason": "CUDA only"}
    attention, attention_why = cuda_attention(where, capability)
    liger = importlib.util.find_spec("liger_kernel") is not None
    return {"attention": attention, "attention_reason": attention_why,
            "loss": "trl", "loss_reason": "TRL's fused LM head: labelled positions only, in chunks, Triton",
            "liger": liger,
            "liger_reason": "liger-kernel installed: RMSNorm, SwiGLU" if liger
            else "not installed: pip install 'tunekit[liger]'"}


def cuda_attention(where: Placement, capability: tuple[int, int] | None = None) -> tuple[str, str]:
    """``("varlen" | "rows", why)``: torch's flash varlen kernel needs a bf16/fp16 compute dtype,
    an Ampere or newer GPU (compute capability 8.0: not a T4) and a torch that has it (2.9+).
    ``capability`` None reads the GPU's from torch."""
    import torch

    if where.dtype_name not in ("bfloat16", "float16"):
        return "rows", f"SDPA on each row: flash varlen needs bf16/fp16, not {where.dtype_name}"
    major, minor = capability or torch.cuda.get_device_capability(where.device)
    if major < 8:
        return "rows", f"SDPA on each row: flash varlen needs compute capability 8.0+, this GPU has {major}.{minor}"
    if importlib.util.find_spec("torch.nn.attention.varlen") is None:
        return "rows", f"SDPA on each row: torch {torch.__version__} has no flash varlen kernel"
    return "varlen", "torch's flash varlen kernel over the rows' boundaries"


def decide_grad_accum(opts: Options, train_rows: int) -> tuple[int, str]:
    """``(grad_accum, why)``: the user's value, else :func:`tunekit.methods.default_grad_accum`."""
    if opts.grad_accum is not None:
        return opts.grad_accum, "given"
    accum = methods.default_grad_accum(train_rows, opts.batch_size, opts.epochs)
    if accum == 4:
        return accum, "default: the seeds' 16-row updates"
    return accum, (f"default: lowered from 4 so {train_rows} rows x {opts.epochs:g} epoch(s) still get "
                   f"~{methods.MIN_UPDATES} updates")


def decide_eval_steps(opts: Options, updates: int, train_enc: list[dict], eval_enc: list[dict]) -> tuple[int, str]:
    """``(eval_steps, why)``: the user's value, else :func:`default_eval_steps`."""
    if opts.eval_steps:
        return opts.eval_steps, "given"
    if not eval_enc:
        return default_eval_steps(updates, train_enc, eval_enc, opts.epochs), \
            f"default: checkpoints about {MAX_EVALS} times (no eval rows)"
    return default_eval_steps(updates, train_enc, eval_enc, opts.epochs), \
        f"default: up to {MAX_EVALS} evaluations, within {EVAL_BUDGET:.0%} of the training compute"


def with_grad_accum(opts: Options, train_rows: int) -> Options:
    """``opts`` with ``grad_accum`` decided: the user's value, else :func:`methods.default_grad_accum`
    for this many training rows."""
    return dataclasses.replace(opts, grad_accum=decide_grad_accum(opts, train_rows)[0])


def auto_method(opts: Options, base_path: Path, train_enc: list[dict], where: Placement) -> dict[str, Any]:
    """Resolve ``method="auto"`` with :func:`tunekit.estimate.choose_method` from the base's
    config, the encoded rows and the device's free memory, and log the reason in one line.

    Returns:
        The record's ``method_choice``: ``requested``, ``method``, ``reason``,
        ``estimated_peak_bytes`` (and per method), ``gradient_checkpointing``.

    Raises:
        ResourceError: no method fits; the message holds the side-by-side breakdown.
    """
    return _auto(opts, base_path, train_enc, where)[0]


def _auto(opts: Options, base_path: Path, train_enc: list[dict], where: Placement,
          objective: str = "sft") -> tuple[dict[str, Any], Any]:
    # The choice and the chosen method's estimate (None when the architecture has none).
    from .errors import ModelError
    from .estimate import choose_method, free_memory

    lengths = sequence_lengths(train_enc)
    try:
        method, reason, ests = choose_method(
            str(base_path), n_examples=len(train_enc), device=where.device, dtype=str(where.dtype),
            free_bytes=free_memory(where.device),
            # Batches are padding-free, so the longest row times the batch bounds a micro-batch.
            max_length=max(lengths), batch_size=opts.batch_size, r=opts.r,
            grad_accum=with_grad_accum(opts, len(train_enc)).grad_accum,
            target_modules=opts.target_module_list(), dropout=opts.dropout,
            gradient_checkpointing=opts.gradient_checkpointing, tokens_per_epoch=sum(lengths),
            objective=objective,
        )
    except ModelError as e:
        # An architecture the estimator cannot build from its config (custom model code): LoRA,
        # the seeds' default, is the safe bet; refusing to train would help no one.
        log.warning("method='auto': cannot estimate memory for %s (%s); using lora", base_path, e)
        return {"requested": "auto", "method": "lora", "reason": f"lora: no estimate ({e})",
                "estimated_peak_bytes": None, "gradient_checkpointing": opts.gradient_checkpointing}, None
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
    }, chosen


def memory_estimate(opts: Options, base_path: Path, train_enc: list[dict], where: Placement, *,
                    gradient_checkpointing: bool, objective: str = "sft"):
    """:func:`tunekit.estimate.estimate` of ``opts.method`` at the user's micro-batches and the
    longest row; None (logged) for an architecture the estimator cannot count."""
    from .errors import ConfigError, ModelError
    from .estimate import estimate

    lengths = sequence_lengths(train_enc)
    try:
        return estimate(
            str(base_path), opts.method, device=where.device, dtype=str(where.dtype),
            # Batches are padding-free: the longest row times the batch bounds a micro-batch.
            max_length=max(lengths), batch_size=opts.batch_size, grad_accum=opts.grad_accum, r=opts.r,
            target_modules=opts.target_module_list(), dropout=opts.dropout,
            gradient_checkpointing=gradient_checkpointing, tokens_per_epoch=sum(lengths),
            objective=objective,
        )
    except (ModelError, ConfigError) as e:
        log.warning("no memory estimate for %s: %s", opts.method, e)
        return None


def default_eval_steps(total_updates: int, train_enc: list[dict], eval_enc: list[dict], epochs: float) -> int:
    """About five evaluations (and checkpoints) per run, fewer when the eval set is large next to
    the training set: with 200 rows x 2 epochs and 40 eval rows, five evaluations plus the one on
    start would cost a fifth of the run; the budget allows the start and two more."""
    eval_tokens = sum(sequence_lengths(eval_enc))
    if not eval_tokens:
        return max(1, round(total_updates / MAX_EVALS))
    train_cost = 3 * epochs * sum(sequence_lengths(train_enc))
    affordable = math.floor(EVAL_BUDGET * train_cost / eval_tokens) - 1  # the first is the one on start
    evals = min(MAX_EVALS, max(1, affordable))
    return max(1, math.ceil(total_updates / evals))


def rows_per_forward(opts: Options, base_path: Path, train_enc: list[dict], where: Placement,
                     objective: str = "sft") -> tuple[int, Any]:
    """``(rows per forward pass, estimate)``: ``batch_size``, or on CPU more of an update's
    ``batch_size x grad_accum`` rows at once (up to about :data:`TOKENS_PER_FORWARD` tokens) when
    the memory estimate says they fit, with that estimate (None for ``batch_size``).

    The update is the same (the same rows, the loss summed over them and divided by their trained
    tokens, as accumulation does); only the matmuls are larger, which this CPU runs faster per
    token. Not with gradient checkpointing (memory mode: activations are what it saves) nor on
    CUDA (not measured there), nor for DPO/KTO (TRL's preference trainers pad each batch, so
    larger forwards pad more).
    """
    from .estimate import estimate, fits, free_memory

    if opts.grad_accum == 1 or where.is_cuda or default_checkpointing(opts, where) or objective != "sft":
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
        est = estimate(str(base_path), opts.method, max_length=max(lengths), batch_size=rows, r=opts.r,
                       target_modules=opts.target_module_list(), dropout=opts.dropout, device="cpu",
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
    return rows, est


def default_checkpointing(opts: Options, where: Placement) -> bool:
    """The user's ``gradient_checkpointing``, else the method's default on this device."""
    if opts.gradient_checkpointing is not None:
        return opts.gradient_checkpointing
    return methods.get(opts.method).gradient_checkpointing(cuda=where.is_cuda)
