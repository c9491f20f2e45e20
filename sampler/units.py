"""Sizes and counts as people read them, and whole numbers as code takes them. Torch-free: the bot, the
CLI and the model-file manager share it."""

from __future__ import annotations

import operator

import numpy as np

_UNITS = ("KiB", "MiB", "GiB", "TiB")


def format_bytes(n: int | float) -> str:
    """`512 B`, `172.3 KiB`, `24.0 MiB`, `9.7 GiB`: binary units, one decimal above bytes."""
    if abs(n) < 1024:
        return f"{int(n)} B"
    value = float(n)
    for unit in _UNITS:
        value /= 1024
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def count_of(count: int, word: str) -> str:
    """`1 sample`, `3 samples`: a count and a regular English noun."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def whole_number(value: object) -> int | None:
    """`value` as an int when it is a whole number (an int or a numpy integer; not a bool, and not a
    float however whole), else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None
