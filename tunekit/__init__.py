"""tunekit: fine-tune an open chat model in a few lines and publish it on the Hub.

>>> import tunekit
>>> result = tunekit.finetune("train.jsonl", method="qlora")
>>> result.chat("Summarise this episode: ...")

Heavy libraries (torch, transformers, TRL) are imported on first use, so ``import tunekit`` is fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    ConfigError,
    DataError,
    HubError,
    ModelError,
    ResourceError,
    TemplateError,
    TrainingError,
    TunekitError,
)

# `estimate` and `compare` share their names with the submodules that define them. Importing a
# submodule sets it as an attribute of the package, so a lazily resolved function would be
# replaced by its module as soon as anything ran `from .estimate import …` (training does).
# Both modules import only the standard library at the top, so binding them here costs nothing
# and keeps `tunekit.estimate(...)` and `tunekit.compare(...)` callable.
from .compare import compare
from .estimate import estimate

from .version import __version__

__all__ = [
    "finetune",
    "load",
    "preview",
    "estimate",
    "compare",
    "TuneResult",
    "AdapterPool",
    "Options",
    "TunekitError",
    "ConfigError",
    "DataError",
    "TemplateError",
    "ModelError",
    "ResourceError",
    "HubError",
    "TrainingError",
    "__version__",
]

_LAZY = {
    "finetune": ("train", "finetune"),
    "load": ("result", "load"),
    "TuneResult": ("result", "TuneResult"),
    "AdapterPool": ("serve", "AdapterPool"),
    "Options": ("options", "Options"),
    "preview": ("train", "preview"),
}

if TYPE_CHECKING:  # pragma: no cover
    from .train import preview
    from .options import Options
    from .result import TuneResult, load
    from .serve import AdapterPool
    from .train import finetune


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tunekit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
