"""Where a model runs and in which dtype: the one place that decides it, for training, serving
and the memory estimate alike.

CUDA computes in bf16 where the GPU supports it (fp16 otherwise); CPU in fp32, because bf16
matmul on CPU is about 100x slower than fp32 (DESIGN §3). Only :func:`placement` imports torch:
the estimate plans for devices this machine may not have, by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, ResourceError

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_DTYPE_ALIASES = {
    "fp32": "float32", "float32": "float32", "float": "float32",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
    "fp16": "float16", "float16": "float16", "half": "float16",
}


@dataclass(frozen=True)
class Placement:
    """Where and in which dtype a model runs.

    Attributes:
        device: ``"cpu"`` or ``"cuda"`` / ``"cuda:N"``.
        dtype: the compute dtype as a ``torch.dtype``.
    """

    device: str
    dtype: "torch.dtype"  # noqa: F821

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def dtype_name(self) -> str:
        """``"float32"``, ``"bfloat16"`` or ``"float16"``."""
        return str(self.dtype).removeprefix("torch.")


def placement(device: str | None = None) -> Placement:
    """Choose device and dtype on this machine: CUDA when available (bf16, or fp16 where bf16 is
    not supported), else CPU with fp32.

    Raises:
        ResourceError: ``device="cuda"`` was asked for but torch sees no GPU.
    """
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ResourceError("device='cuda' was asked for but torch sees no CUDA GPU")
        return Placement(device, getattr(torch, default_dtype(device)))
    return Placement("cpu", torch.float32)


def normalise_device(device: str | None) -> str:
    """``"cpu"`` or ``"cuda:N"`` for a device name; None is this machine's default.

    Raises:
        ConfigError: not a device name.
    """
    if device is None:
        import torch

        return "cuda:0" if torch.cuda.is_available() else "cpu"
    device = str(device)
    if device == "cuda":
        return "cuda:0"
    if device != "cpu" and not re.fullmatch(r"cuda:\d+", device):
        raise ConfigError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    return device


def default_dtype(device: str) -> str:
    """The compute dtype training uses on ``device``, by name."""
    if device == "cpu":
        return "float32"
    import torch

    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16"  # planning for a GPU we cannot see: assume a current one


def normalise_dtype(dtype: Any, device: str) -> str:
    """A dtype name (``"float32"``, ``"bfloat16"``, ``"float16"``) from ``fp32``/``bf16``/``fp16``,
    a torch dtype, or None (the device's default).

    Raises:
        ConfigError: not one of those dtypes.
    """
    if dtype is None:
        return default_dtype(device)
    key = str(dtype).removeprefix("torch.")
    if key not in _DTYPE_ALIASES:
        raise ConfigError(f"dtype must be one of fp32, bf16, fp16 (or a torch dtype), got {dtype!r}")
    return _DTYPE_ALIASES[key]
