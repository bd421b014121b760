"""Training throughput: matmul FLOPs per trained token, and the device's matmul speed."""

from __future__ import annotations

import logging
import time

from ..errors import ResourceError
from ..placement import normalise_device, normalise_dtype
from .shapes import Shape

log = logging.getLogger(__name__)

# Achieved fraction of the matmul probe's FLOP/s in a real training step (kernels smaller than
# 1024^2, elementwise ops, softmax over the vocabulary, optimizer). SmolLM2-135M, batch 4 x 128,
# fp32 on this 2-core CPU (benchmarks/measure_peak.py): LoRA r16 all-linear 136 tokens/s and full
# 89 tokens/s, against 207 and 146 tokens/s of pure matmul at the ~120 GFLOP/s the probe reads
# here, i.e. 0.61-0.66; TRL's loop measured ~100-110 tokens/s (DESIGN §3). 0.6 puts LoRA at ~125
# tokens/s and full at ~88, between the plain loop and TRL.
_EFFICIENCY = 0.6


def flops_per_token(
    s: Shape, *, full: bool, lora_params: int, max_length: int, gradient_checkpointing: bool
) -> int:
    """Matmul FLOPs per trained token of one training step.

    Forward is 2 FLOPs per weight; backward is 2 for the input gradient plus 2 for the weight
    gradient, the latter skipped for frozen weights (LoRA/QLoRA: ≈ 4·N). The lm_head runs on
    every position even when tied. Attention scores add 2·2·seq·h per layer forward (halved by
    the causal mask), x3 with backward.
    """
    matmul_params = s.quantisable_params + s.lm_head_params
    per_token = (6 if full else 4) * matmul_params + 6 * lora_params
    per_token += 3 * 2 * s.layers * max_length * s.hidden
    if gradient_checkpointing:
        per_token += 2 * matmul_params  # the recomputed forward of every layer
    return per_token


def tokens_per_second(per_token: int, device: str, dtype: str, flops: float | None) -> float | None:
    """Estimated training tokens/s at ``flops`` (probed when None; 0 means "don't ask").

    Returns None when the speed is unknown: ``flops=0``, or a device this machine does not have.
    """
    if flops is None:
        try:
            flops = probe_flops(device, dtype)
        except ResourceError:
            log.info("throughput unknown: %s is not available to probe", device)
    if not flops:
        return None
    return flops * _EFFICIENCY / per_token


_FLOPS_CACHE: dict[tuple[str, str], float] = {}


def probe_flops(device: str = "cpu", dtype: str | None = None) -> float:
    """Measure the device's matmul speed in FLOP/s (cached per process).

    Times a 1024 x 1024 matmul (fp32 on CPU, bf16 on CUDA unless ``dtype`` says otherwise) a
    few times and keeps the best run, which is what sustained GEMMs reach.

    Args:
        device: ``"cpu"`` or ``"cuda:N"``.
        dtype: matmul dtype; defaults to the training default for the device.

    Returns:
        Floating-point operations per second.

    Raises:
        ResourceError: the device is not available on this machine.
    """
    import torch

    device = normalise_device(device)
    dtype = normalise_dtype(dtype, device)
    key = (device, dtype)
    if key in _FLOPS_CACHE:
        return _FLOPS_CACHE[key]
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ResourceError(f"cannot probe {device}: no CUDA device is visible")
    n = 1024
    tdtype = getattr(torch, dtype)
    a = torch.randn(n, n, device=device).to(tdtype)
    b = torch.randn(n, n, device=device).to(tdtype)
    reps = 3 if device == "cpu" else 20

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)

    torch.mm(a, b)  # warm-up: thread pool / cuBLAS handle
    sync()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        sync()
        best = min(best, (time.perf_counter() - t0) / reps)
    flops = 2 * n**3 / best
    _FLOPS_CACHE[key] = flops
    log.debug("probe_flops(%s, %s) = %.1f GFLOP/s", device, dtype, flops / 1e9)
    return flops
