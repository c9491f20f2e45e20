"""How many samples the cascade samples at once per level: the one default and the one parser.

Torch-free: the settings, the worker's runner and the offline `jukebot sample` read them.
"""

from __future__ import annotations

BatchSizes = tuple[int, int, int]  # levels 0, 1, 2

DEFAULT_MAX_BATCH_SIZE: BatchSizes = (16, 16, 3)


def parse_batch_sizes(text: str) -> BatchSizes:
    """`16,16,3` (levels 0, 1, 2) or one number for all three; ValueError saying what to write."""
    try:
        sizes = [int(part) for part in text.replace(",", " ").split()]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 3) or min(sizes) < 1:
        example = format_batch_sizes(DEFAULT_MAX_BATCH_SIZE)
        raise ValueError(f"use one positive number or three (levels 0, 1, 2), e.g. {example}")
    if len(sizes) == 1:
        sizes *= 3
    return (sizes[0], sizes[1], sizes[2])


def format_batch_sizes(sizes: BatchSizes) -> str:
    return ",".join(map(str, sizes))
