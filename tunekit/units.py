"""Sizes and durations, parsed and printed in one place.

Units are explicit: ``GB`` is 10**9 bytes (what memory estimates and vendors' tables use), ``GiB``
is 2**30 (what operating systems and file limits often mean). A bare prefix such as ``5G`` is
ambiguous, so it is refused with the two spellings to choose from. A plain number is bytes.
"""

from __future__ import annotations

import re

from .errors import ConfigError

_DECIMAL = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_BINARY = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_UNITS = {"": 1, **_DECIMAL, **_BINARY}
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*")


def parse_size(text: str | int) -> int:
    """Bytes from ``"24GB"``, ``"16GiB"``, ``"500MB"``, ``"2.5e10"`` or an int.

    Raises:
        ConfigError: not a size, or a bare prefix (``5G``) that could mean either unit.

    Example:
        >>> parse_size("5GB"), parse_size("5GiB")
        (5000000000, 5368709120)
    """
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    match = _SIZE.fullmatch(str(text))
    unit = match.group(2).lower() if match else None
    if unit in ("k", "m", "g", "t"):
        up = unit.upper()
        raise ConfigError(f"size {text!r} is ambiguous: write {match.group(1)}{up}B ({_power(up, 10)}) "
                          f"or {match.group(1)}{up}iB ({_power(up, 2)})")
    if not match or unit not in _UNITS:
        raise ConfigError(f"expected a size such as 24GB, 16GiB or 500MB, got {text!r}")
    return int(float(match.group(1)) * _UNITS[unit])


def _power(prefix: str, base: int) -> str:
    exp = "KMGT".index(prefix) + 1
    return f"10^{3 * exp} bytes" if base == 10 else f"2^{10 * exp} bytes"


def format_bytes(n: float) -> str:
    """Decimal units, as the estimates' tables print them: ``1.4 TB``, ``540 MB``."""
    if n >= 1e12:
        return f"{n / 1e12:.2f} TB"
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.0f} MB"
    if n >= 1e3:
        return f"{n / 1e3:.0f} kB"
    return f"{int(n)} B"


def format_seconds(s: float) -> str:
    """``45 s``, ``12 min``, ``3.5 h``."""
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"
