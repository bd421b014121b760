"""Memory and time estimates per fine-tuning method, and the choice ``method="auto"`` makes.

The estimate is built from the model's config alone: the model is instantiated on PyTorch's
``meta`` device (no weights, no download beyond ``config.json``), so any causal-LM architecture
transformers knows can be counted. Memory is split the way people reason about it (weights,
gradients, optimizer states, activations, runtime overhead) so a user can see *why* a method
does not fit and which knob (checkpointing, batch, sequence length, QLoRA) helps.

Units in :meth:`Estimate.table` are decimal (1 GB = 10**9 bytes), like the seed figures
("full ≈ 1.4 TB") they are checked against.

Calibration (see ``tests/test_estimate.py`` and ``benchmarks/measure_peak.py``): the tensor
accounting is mechanistic; three constants were fitted on this machine's CPU measurements of
SmolLM2-135M and a tiny Llama with SmolLM2's 49k vocabulary (batch 4 x 128, fp32, AdamW):
``memory._CPU_OVERHEAD_BYTES``, ``memory._CPU_HEAP_RETENTION`` and ``speed._EFFICIENCY``. Each
says where it came from.

The parts, one job each: :mod:`.shapes` (config → parameter and layer counts on the meta device),
:mod:`.memory` (bytes per part, :func:`fits`, :func:`free_memory`), :mod:`.speed` (FLOPs per
token, :func:`probe_flops`), :mod:`.report` (:class:`Estimate` and its tables), :mod:`.core`
(:func:`estimate`, their composition) and :mod:`.choose` (:func:`choose_method`). Every module
imports only the standard library and tunekit's light modules at the top; torch, transformers and
accelerate are imported inside the functions that need them, so ``import tunekit`` stays fast.
"""

from __future__ import annotations

from ..methods import METHODS
from .choose import FULL_MIN_EXAMPLES, choose_method
from .core import estimate
from .memory import fits, free_memory
from .report import Estimate, comparison_table
from .speed import probe_flops

__all__ = [
    "estimate",
    "Estimate",
    "choose_method",
    "fits",
    "free_memory",
    "probe_flops",
    "comparison_table",
    "FULL_MIN_EXAMPLES",
    "METHODS",
]

