"""Sizes and durations: parsed once at the edge, formatted for humans. Pure, no imports of note.

Sizes follow the kernel's and systemd's convention: K, M, G, T are powers of 1024 (``512M`` is
what ``echo 512M > memory.max`` means). ``Ki``/``Mi``/``Gi``/``Ti`` are accepted as the same, and
``max`` means "no limit" and is returned as ``None``.
"""

from __future__ import annotations

# `re` and `math` are imported, and the patterns compiled (re caches them), on first parse:
# `oomguard status` only formats sizes, and compiling these two patterns (IGNORECASE makes the
# first one dear) plus loading math cost it over a millisecond of CPU per start.
# [0-9], not \d: \d also matches other scripts' digits ("٣"), which float() would accept.
_SIZE_PATTERN = r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTP]i?)?[Bb]?\s*$"
_MULT = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_DUR_PATTERN = r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(us|ms|s|m|h|d)?\s*$"
_DUR_MULT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

#: Sizes are bytes below 2**63: the kernel's page counters hold at most LONG_MAX bytes
#: (PAGE_COUNTER_MAX pages), and a TOML integer is a signed 64-bit number.
SIZE_LIMIT = 2**63
#: No duration may reach this (a year): callers bound their own fields far lower, but the parser
#: must never hand out a float that overflows a deadline or an epoll timeout.
DURATION_LIMIT = 365 * 86400.0

#: The kernel's "max" as it is written to and read from limit files.
MAX = "max"


def parse_size(value: str | int) -> int | None:
    """``"512M"`` -> 536870912, ``"max"`` -> None, ``4096`` -> 4096. Raises ValueError."""
    import math
    import re

    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size; use e.g. 512M")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} is negative; a size is bytes >= 0, or e.g. 512M")
        if value >= SIZE_LIMIT:
            raise ValueError(_too_large(value))
        return value
    if value.strip().lower() in ("max", "infinity"):
        return None
    m = re.match(_SIZE_PATTERN, value, re.IGNORECASE | re.ASCII)
    if not m:
        raise ValueError(f"{value!r} is not a size; use e.g. 512M, 1.5G, 64Ki, max or plain bytes")
    number, unit = m.group(1), (m.group(2) or "")
    mult = _MULT[unit[:1].upper()]
    result = float(number) * mult
    if not math.isfinite(result) or result >= SIZE_LIMIT:
        raise ValueError(_too_large(value))
    # The kernel rounds limits down to a page anyway; keep bytes exact for what the user wrote.
    return int(result)


def _too_large(value: str | int) -> str:
    shown = repr(value) if isinstance(value, str) else _short_int(value)
    return f'{shown} is too large: a size is below 2**63 bytes (8 EiB); use "max" for no limit'


def _short_int(value: int) -> str:
    text = str(value) if value.bit_length() < 200 else f"a {value.bit_length()}-bit number"
    return text if len(text) <= 40 else text[:37] + "..."


def format_size(value: int | None) -> str:
    """536870912 -> ``"512M"``; None -> ``"max"``. Exact for whole units, else one decimal."""
    if value is None:
        return MAX
    for unit in ("T", "G", "M", "K"):
        mult = _MULT[unit]
        if value >= mult:
            if value % mult == 0:
                return f"{value // mult}{unit}"
            return f"{value / mult:.1f}{unit}"
    return str(value)


def parse_duration(value: str | int | float) -> float:
    """``"100ms"`` -> 0.1, ``"30s"`` -> 30.0, ``"5m"`` -> 300.0, ``2`` -> 2.0 (seconds)."""
    import math
    import re

    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; use e.g. 100ms, 30s or 5m")
    if isinstance(value, int):
        # Compared as an int first: float() of a huge TOML integer raises OverflowError.
        if value < 0:
            raise ValueError(f"{_short_int(value)} is not a duration >= 0")
        if value >= DURATION_LIMIT:
            raise ValueError(f"{_short_int(value)} is too long; no duration may reach a year")
        return float(value)
    if isinstance(value, float):
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"{value!r} is not a duration >= 0")
        if value >= DURATION_LIMIT:
            raise ValueError(f"{value!r} is too long; no duration may reach a year")
        return value
    m = re.match(_DUR_PATTERN, value, re.ASCII)
    if not m:
        raise ValueError(f"{value!r} is not a duration; use e.g. 100ms, 30s, 5m or 1h")
    seconds = float(m.group(1)) * _DUR_MULT[m.group(2)]
    if not math.isfinite(seconds) or seconds >= DURATION_LIMIT:
        raise ValueError(f"{value!r} is too long; no duration may reach a year")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.3g}s" if seconds != int(seconds) else f"{int(seconds)}s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.3g}m"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.3g}h"
    return f"{seconds / 86400:.3g}d"
