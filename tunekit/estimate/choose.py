"""The choice ``method="auto"`` makes: full, LoRA or QLoRA for this base, data size and machine."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError, ResourceError
from ..methods import FULL_MIN_EXAMPLES, METHODS
from ..placement import normalise_device
from ..units import format_bytes
from .aliases import accepts_old_names
from .core import estimate
from .memory import fits, free_memory
from .report import Estimate, comparison_table


@accepts_old_names("choose_method()")
def choose_method(
    base: Any,
    *,
    n_examples: int,
    device: str | None = None,
    free_bytes: int | None = None,
    margin: float = 0.2,
    **kw: Any,
) -> tuple[str, str, dict[str, Estimate]]:
    """Pick full, LoRA or QLoRA for this base, data size and machine (``method="auto"``).

    The seeds' advice: LoRA when it fits free memory with a margin; QLoRA when only it fits;
    full fine-tuning only for large data sets (at least 20,000 examples) and when it fits.
    When gradient checkpointing is left to the default and a method does not fit without it,
    that method is re-estimated with checkpointing on before giving up on it.

    Args:
        base: as for :func:`estimate`.
        n_examples: training examples in the data set.
        device: as for :func:`estimate`.
        free_bytes: memory available; measured with :func:`free_memory` when None.
        margin: reserve kept free, as a fraction of each estimate (see :func:`fits`).
        **kw: passed to :func:`estimate` (``max_length``, ``batch_size``, ``r``, ...).

    Returns:
        ``(method, reason, estimates)``: the method, a one-line reason, and the estimate per
        method that the decision used.

    Raises:
        ResourceError: no method fits; ``breakdown`` holds the estimates and the message the
            side-by-side table.
    """
    if "method" in kw:
        raise ConfigError("choose_method picks the method; do not pass method=")
    device = normalise_device(device)
    if free_bytes is None:
        free_bytes = free_memory(device)
    ests = _estimates(base, device, free_bytes, margin, kw)
    return _decide(ests, n_examples=n_examples, device=device, free_bytes=free_bytes, margin=margin)


def _estimates(base: Any, device: str, free_bytes: int, margin: float, kw: dict) -> dict[str, Estimate]:
    """One estimate per method; with checkpointing on where only that makes it fit (unless the
    caller set ``gradient_checkpointing``)."""
    auto_ckpt = kw.get("gradient_checkpointing") is None
    ests: dict[str, Estimate] = {}
    for m in METHODS:
        est = estimate(base, m, device=device, **kw)
        if not fits(est, free_bytes, margin) and auto_ckpt and not est.gradient_checkpointing:
            est = estimate(base, m, device=device, **{**kw, "gradient_checkpointing": True})
        ests[m] = est
    return ests


def _decide(
    ests: dict[str, Estimate], *, n_examples: int, device: str, free_bytes: int, margin: float
) -> tuple[str, str, dict[str, Estimate]]:
    ok = {m: fits(e, free_bytes, margin) for m, e in ests.items()}

    def need(m: str) -> str:
        e = ests[m]
        ck = ", gradient checkpointing on" if e.gradient_checkpointing else ""
        return f"needs ~{format_bytes(e.total_bytes)} of {format_bytes(free_bytes)} free{ck}"

    big = n_examples >= FULL_MIN_EXAMPLES
    if big and ok["full"]:
        return "full", f"full: {n_examples:,} examples is enough data and it {need('full')}", ests
    why_not_full = (
        "full fine-tuning does not fit"
        if big
        else f"full fine-tuning pays off from {FULL_MIN_EXAMPLES:,} examples ({n_examples:,} given)"
    )
    if ok["lora"]:
        return "lora", f"lora: it {need('lora')}; {why_not_full}", ests
    if ok["qlora"]:
        return "qlora", f"qlora: only the 4-bit base fits; it {need('qlora')}", ests
    raise ResourceError(
        f"no fine-tuning method fits in {format_bytes(free_bytes)} free on {device} (keeping a "
        f"{margin:.0%} margin); even QLoRA {need('qlora')}.\n{comparison_table(ests)}\n"
        "Reduce max_length or batch_size (raise grad_accum to keep the effective batch), lower r, "
        "or use a smaller base or a bigger device.",
        breakdown=ests,
    )
