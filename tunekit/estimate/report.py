"""The estimate as a record (:class:`Estimate`) and as text: one breakdown, or several side by
side. Units are decimal (1 GB = 10**9 bytes), like the seed figures ("full ≈ 1.4 TB") they are
checked against."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..methods import MethodName
from ..units import format_bytes, format_seconds


@dataclass
class Estimate:
    """Peak-memory and speed estimate of one fine-tuning configuration.

    Attributes:
        base: the base model's name (hub id, folder, or the config's ``name_or_path``).
        method: ``"full"``, ``"lora"`` or ``"qlora"``.
        device: ``"cpu"`` or ``"cuda:N"``.
        dtype: compute dtype (``"float32"``, ``"bfloat16"``, ``"float16"``).
        params_total: parameters of the base model (tied embeddings counted once).
        params_trainable: parameters the optimizer updates (all for full, adapters otherwise).
        weights_bytes: every weight in its stored dtype. Full fine-tuning in 16-bit counts the
            16-bit working copy plus the fp32 master copy (mixed precision); QLoRA counts 4-bit
            packed codes plus quantisation constants for the quantised linear layers, with
            embeddings, norms and the lm_head in compute dtype; adapters in fp32.
        gradients_bytes: gradients of the trainable parameters.
        optimizer_bytes: optimizer states of the trainable parameters.
        activations_bytes: activations kept for the backward pass at the given batch and sequence
            length, with the configured ``gradient_checkpointing``, logits/loss included.
        activations_checkpointed_bytes: the same with gradient checkpointing on, for comparison.
        overhead_bytes: runtime memory that is not the model's tensors (CUDA context, or the
            Python/torch process on CPU, plus CPU-specific leftovers).
        total_bytes: the estimated peak.
        gradient_checkpointing: whether the estimate assumes gradient checkpointing.
        tokens_per_second: estimated training throughput, None when the device's speed is
            unknown (e.g. planning for a GPU this machine does not have).
        seconds_per_epoch: ``tokens_per_epoch / tokens_per_second`` when both are known.
        seq_len: tokens per sequence assumed (the ``max_length`` it was estimated at; the field
            keeps its name because ``to_dict()`` is ``tunekit estimate --json``'s output).
        batch_size: sequences per micro-batch assumed.
        grad_accum: gradient-accumulation steps assumed.
        objective: ``"sft"``, ``"dpo"`` or ``"kto"``. Preference rows put two sequences through
            each forward (``batch_size`` counts rows, so the activations are those of twice as
            many sequences) and score them under the reference too.
        reference_bytes: the reference model's weights: a frozen copy for full fine-tuning with
            DPO/KTO; 0 with LoRA/QLoRA (the reference is the base with the adapter switched off).
    """

    base: str
    method: MethodName
    device: str
    dtype: str
    params_total: int
    params_trainable: int
    weights_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    activations_checkpointed_bytes: int
    overhead_bytes: int
    total_bytes: int
    gradient_checkpointing: bool
    tokens_per_second: float | None = None
    seconds_per_epoch: float | None = None
    seq_len: int = 512
    batch_size: int = 4
    grad_accum: int = 1
    objective: str = "sft"
    reference_bytes: int = 0

    @property
    def max_length(self) -> int:
        """Tokens per sequence assumed, under the option's name (same as ``seq_len``)."""
        return self.seq_len

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    def table(self) -> str:
        """An aligned, human-readable breakdown of the estimate.

        Example:
            >>> print(estimate("HuggingFaceTB/SmolLM2-135M-Instruct", "lora").table())  # doctest: +SKIP
        """
        pct = 100 * self.params_trainable / self.params_total if self.params_total else 0.0
        head = (
            f"{self.method} fine-tuning of {self.base} on {self.device} ({self.dtype}), "
            f"batch {self.batch_size} x {self.seq_len} tokens\n"
            f"parameters: {self.params_total:,} total, {self.params_trainable:,} trainable "
            f"({pct:.2f}%)"
        )
        rows = self._rows()
        width = max(len(k) for k, _ in rows)
        vwidth = max(len(v) for _, v in rows)
        lines = [f"  {k:<{width}}  {v:>{vwidth}}" for k, v in rows]
        return head + "\n" + "\n".join(lines)

    def _rows(self) -> list[tuple[str, str]]:
        ckpt = "on" if self.gradient_checkpointing else "off"
        rows = [
            ("weights", format_bytes(self.weights_bytes)),
            ("gradients", format_bytes(self.gradients_bytes)),
            ("optimizer states", format_bytes(self.optimizer_bytes)),
            (f"activations (checkpointing {ckpt})", format_bytes(self.activations_bytes)),
        ]
        if self.objective != "sft":
            rows.insert(1, (f"{self.objective} reference", format_bytes(self.reference_bytes) if self.reference_bytes
                            else "adapter off (no copy)"))
        if not self.gradient_checkpointing:
            rows.append(("  with checkpointing on", format_bytes(self.activations_checkpointed_bytes)))
        rows += [
            ("runtime overhead", format_bytes(self.overhead_bytes)),
            ("peak total", format_bytes(self.total_bytes)),
        ]
        if self.tokens_per_second:
            rows.append(("throughput", f"{self.tokens_per_second:,.0f} tokens/s"))
        if self.seconds_per_epoch:
            rows.append(("time per epoch", format_seconds(self.seconds_per_epoch)))
        return rows


_COMPARED = [
    ("trainable params", lambda e: f"{e.params_trainable:,}"),
    ("weights", lambda e: format_bytes(e.weights_bytes)),
    ("gradients", lambda e: format_bytes(e.gradients_bytes)),
    ("optimizer states", lambda e: format_bytes(e.optimizer_bytes)),
    ("activations", lambda e: format_bytes(e.activations_bytes)),
    ("grad. checkpointing", lambda e: "on" if e.gradient_checkpointing else "off"),
    ("runtime overhead", lambda e: format_bytes(e.overhead_bytes)),
    ("peak total", lambda e: format_bytes(e.total_bytes)),
]


def comparison_table(estimates: dict[str, Estimate] | list[Estimate]) -> str:
    """Side-by-side breakdown of several estimates (one column per method).

    Args:
        estimates: estimates to compare, e.g. the third value returned by :func:`choose_method`.

    Returns:
        An aligned multi-line table, in decimal GB/MB.
    """
    ests = list(estimates.values()) if isinstance(estimates, dict) else list(estimates)
    header = [""] + [e.method for e in ests]
    body = [[name] + [f(e) for e in ests] for name, f in _COMPARED]
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
    lines = []
    for row in [header] + body:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  " + "  ".join(cells))
    return "\n".join(lines)
