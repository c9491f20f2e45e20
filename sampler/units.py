"""Sizes and counts as people read them, and whole numbers as code takes them. Torch-free: the bot, the
CLI and the model-file manager share it."""

from __future__ import annotations

import operator

import numpy as np

_UNITS = ("KiB", "MiB", "GiB", "TiB")


def format_bytes(n: int | float) -> str:
    """`512 B`, `172.3 KiB`, `24.0 MiB`, `9.7 GiB`: binary units, one decimal above bytes (a size that
    rounds to 1024.0 of a unit is 1.0 of the next)."""
    if abs(n) < 1024:
        return f"{int(n)} B"
    value = float(n)
    for unit in _UNITS:
        value /= 1024
        if abs(round(value, 1)) < 1024 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def format_bytes_pair(first: int, second: int) -> tuple[str, str]:
    """Two sizes as `format_bytes` writes them, or in exact bytes where those read the same (a size
    300 bytes over a 25 MiB budget is not "25.0 MiB" against "25.0 MiB")."""
    shown = format_bytes(first), format_bytes(second)
    return shown if shown[0] != shown[1] else (f"{first:,} bytes", f"{second:,} bytes")


def format_bytes_apart(size: int, limit: int) -> tuple[str, str]:
    """`size` and `limit` for "is {size}, larger than the {limit} limit" (`format_bytes_pair`: a file a
    byte over 25 MiB is "26,214,401 bytes, larger than the 26,214,400-byte limit")."""
    shown, limit_shown = format_bytes_pair(size, limit)
    return shown, limit_shown.replace(" bytes", "-byte") if limit_shown.endswith(" bytes") else limit_shown


def format_duration(seconds: float) -> str:
    """`45 s`, `12 min`, `3.5 h`: a quiet or silent stretch as an operator reads it."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def count_of(count: int, word: str) -> str:
    """`1 sample`, `3 samples`: a count and a regular English noun."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def whole_number(value: object) -> int | None:
    """`value` as an int when it is a whole number (an int or a numpy integer; not a bool, and not a
    float however whole), else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    # A tensor or array answers operator.index for one element of any shape, and for a bool dtype too.
    if getattr(value, "ndim", 0) != 0 or str(getattr(value, "dtype", "")) in ("bool", "torch.bool"):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None
