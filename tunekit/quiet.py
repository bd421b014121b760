"""Keeping the libraries' own output quiet while tunekit speaks for them: their per-stage progress
bars (tunekit shows one bar of its own) and bitsandbytes' offline kernel warning. Imports nothing
heavy at the top, so a run can enter it before any data is checked."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Turn off the progress bars of datasets and transformers (dataset maps, weight loading),
    which would otherwise flood the terminal around tunekit's own bar; restored afterwards."""
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


class quiet_bitsandbytes:
    """bitsandbytes on CPU tries to fetch a faster 4-bit kernel from the Hub and logs a scary
    'Failed to load CPU gemm_4bit_forward' when offline; its fallback works, so say it once, calmly."""

    def __enter__(self):
        self._logger = logging.getLogger("bitsandbytes")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self._logger.setLevel(self._level)
        return False
