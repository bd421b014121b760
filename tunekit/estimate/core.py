""":func:`estimate`: check the options, then compose the parts — the architecture's shape, its
memory breakdown and its throughput — into one :class:`~tunekit.estimate.Estimate`."""

from __future__ import annotations

from typing import Any

from .. import methods
from ..errors import ConfigError
from ..methods import METHODS, MethodName
from ..placement import DTYPE_BYTES, normalise_device, normalise_dtype
from . import memory, speed
from .aliases import accepts_old_names
from .report import Estimate
from .shapes import Shape, load_config, lora_parameters, shape_of, targeted

OBJECTIVES = ("sft", "dpo", "kto")


@accepts_old_names("estimate()")
def estimate(
    base: Any,
    method: MethodName = "lora",
    *,
    max_length: int = 512,
    batch_size: int = 4,
    grad_accum: int = 1,
    r: int = 16,
    target_modules: str | list[str] = "all-linear",
    dropout: float = 0.05,
    optimizer: str = "adamw",
    dtype: Any = None,
    device: str | None = None,
    gradient_checkpointing: bool | None = None,
    tokens_per_epoch: int | None = None,
    flops: float | None = None,
    objective: str = "sft",
) -> Estimate:
    """Estimate peak memory and throughput of fine-tuning ``base`` with ``method``.

    Nothing is downloaded but ``config.json``; the model is counted on the meta device.

    Args:
        base: a transformers ``PretrainedConfig``, a local model folder, or a Hub id.
        method: ``"full"``, ``"lora"`` or ``"qlora"`` (4-bit NF4 with double quantisation).
        max_length: tokens per sequence (after padding/packing). Formerly ``seq_len``, which
            still works with a FutureWarning.
        batch_size: sequences per micro-batch.
        grad_accum: gradient-accumulation steps. Above 1, gradients live through the next
            micro-batch's forward pass, so they add to the activations instead of replacing them.
        r: LoRA rank.
        target_modules: ``"all-linear"`` (every linear layer but the lm_head), a list of module
            names such as ``["q_proj", "v_proj"]``, or a regex matched against full names (PEFT's
            rules).
        dropout: LoRA dropout; above 0 each adapter keeps a dropped copy of its input. Formerly
            ``lora_dropout``, which still works with a FutureWarning.
        optimizer: ``"adamw"``, ``"paged_adamw"``, ``"adamw_8bit"``, ``"paged_adamw_8bit"`` or
            ``"sgd"``.
        dtype: compute dtype (``"fp32"``, ``"bf16"``, ``"fp16"`` or a torch dtype). Defaults to
            bf16 on CUDA where supported and fp32 on CPU.
        device: ``"cpu"`` or ``"cuda:N"``; defaults to the first GPU if there is one. A GPU that
            is not present can be planned for; its throughput is then unknown.
        gradient_checkpointing: defaults to on for CUDA (memory is the scarce resource, as in the
            seed recipes) and off for CPU (recompute costs more than memory there, DESIGN §3).
        tokens_per_epoch: trained tokens in one epoch, for ``seconds_per_epoch``.
        flops: the device's matmul FLOP/s; by default measured once with :func:`probe_flops`.
        objective: ``"sft"``, ``"dpo"`` or ``"kto"``. Preference rows put two sequences each
            through a forward (chosen and rejected; KTO's completion and its KL completion), and
            every sequence is also scored by the reference, without gradients: for LoRA/QLoRA the
            base with the adapter off (no memory), for full fine-tuning a frozen copy of the weights.

    Returns:
        An :class:`Estimate`; ``print(est.table())`` shows the breakdown.

    Raises:
        ConfigError: an option is unknown or out of range (all problems reported at once).
        ModelError: the base's config cannot be found or turned into a causal LM.

    Example:
        >>> from transformers import LlamaConfig
        >>> est = estimate(LlamaConfig(), "qlora", device="cuda:0")  # doctest: +SKIP
        >>> print(est.table())  # doctest: +SKIP
    """
    device, dtype_name = check_options(
        method, max_length=max_length, batch_size=batch_size, grad_accum=grad_accum, r=r,
        optimizer=optimizer, dropout=dropout, device=device, dtype=dtype,
    )  # fmt: skip
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    preference = objective != "sft"
    sequences = batch_size * (2 if preference else 1)
    config, name = load_config(base)
    s = shape_of(config)
    cuda = device != "cpu"
    if gradient_checkpointing is None:
        gradient_checkpointing = methods.get(method).gradient_checkpointing(cuda=cuda)
    layers = _targeted_layers(s, method, target_modules, name)
    mem = memory.breakdown(
        s, method=method, a=DTYPE_BYTES[dtype_name], targeted=layers, r=r, dropout=dropout,
        optimizer=optimizer, max_length=max_length, batch_size=sequences, grad_accum=grad_accum,
        gradient_checkpointing=gradient_checkpointing, cuda=cuda,
    )  # fmt: skip
    # The reference copy a full fine-tune scores against lives beside the weights all run long.
    reference = s.params_total * DTYPE_BYTES[dtype_name] if preference and not methods.get(method).peft else 0
    per_token = speed.flops_per_token(
        s, full=not methods.get(method).peft, lora_params=lora_parameters(layers, r),
        max_length=max_length, gradient_checkpointing=gradient_checkpointing,
    )  # fmt: skip
    if preference:
        # The reference's forward of every sequence: 2 FLOPs per matmul weight, no backward.
        per_token += 2 * (s.quantisable_params + s.lm_head_params) + 2 * s.layers * max_length * s.hidden
    tps = speed.tokens_per_second(per_token, device, dtype_name, flops)
    return Estimate(
        base=name, method=method, device=device, dtype=dtype_name,
        params_total=s.params_total, params_trainable=mem.trainable,
        weights_bytes=mem.weights, gradients_bytes=mem.gradients, optimizer_bytes=mem.optimizer,
        activations_bytes=mem.activations, activations_checkpointed_bytes=mem.activations_checkpointed,
        overhead_bytes=mem.overhead, total_bytes=mem.total + reference,
        objective=objective, reference_bytes=reference,
        gradient_checkpointing=gradient_checkpointing, tokens_per_second=tps,
        seconds_per_epoch=tokens_per_epoch / tps if (tps and tokens_per_epoch) else None,
        seq_len=max_length, batch_size=batch_size, grad_accum=grad_accum,
    )  # fmt: skip


def check_options(
    method: str,
    *,
    max_length: Any,
    batch_size: Any,
    grad_accum: Any,
    r: Any,
    optimizer: str,
    dropout: float,
    device: str | None,
    dtype: Any,
) -> tuple[str, str]:
    """Check :func:`estimate`'s options, reporting every problem at once.

    Returns:
        ``(device, dtype name)``, normalised.

    Raises:
        ConfigError: one or more options are unknown or out of range.
    """
    problems = []
    if method not in METHODS:
        problems.append(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    for name, value in (("max_length", max_length), ("batch_size", batch_size), ("grad_accum", grad_accum)):
        if not isinstance(value, int) or value < 1:
            problems.append(f"{name} must be a positive integer, got {value!r}")
    if method != "full" and (not isinstance(r, int) or r < 1):
        problems.append(f"r must be a positive integer, got {r!r}")
    if optimizer not in memory.OPTIMIZER_BYTES:
        problems.append(f"optimizer must be one of {', '.join(memory.OPTIMIZER_BYTES)}, got {optimizer!r}")
    if not 0 <= dropout < 1:
        problems.append(f"dropout must be in [0, 1), got {dropout!r}")
    try:
        device = normalise_device(device)
        dtype_name = normalise_dtype(dtype, device)
    except ConfigError as e:
        problems.extend(e.problems)
    if problems:
        raise ConfigError(problems)
    return device, dtype_name


def _targeted_layers(s: Shape, method: str, target_modules, name: str) -> list[tuple[str, int, int]]:
    """The linears LoRA wraps (none for full fine-tuning).

    Raises:
        ConfigError: ``target_modules`` matches no linear layer.
    """
    if not methods.get(method).peft:
        return []
    layers = targeted(s.linears, target_modules)
    if not layers:
        raise ConfigError(f"target_modules={target_modules!r} matches no linear layer of {name}")
    return layers
