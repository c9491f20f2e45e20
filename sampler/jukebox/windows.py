"""Window arithmetic of Jukebox's sampler (spec §4): where each window starts and what it samples.

Pure integer logic shared by the cascade, progress reporting and ETA estimates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sampler.jukebox.registry import MAX_SONG_SECONDS, SAMPLE_RATE

TOP_HOP = 128  # raw samples per top-level token; audio lengths are multiples of it


def window_starts(total_tokens: int, n_ctx: int, hop: int) -> list[int]:
    """Starts of the full windows covering `total_tokens` (needs total_tokens >= n_ctx).

    Starts advance by `hop`; the first window that would reach the end is moved back to end
    exactly at `total_tokens`, and the list stops there.
    """
    if hop <= 0:
        raise ValueError(f"hop must be positive, got {hop}")
    starts = []
    start = 0
    while True:
        if start + n_ctx >= total_tokens:
            starts.append(total_tokens - n_ctx)
            return starts
        starts.append(start)
        start += hop


@dataclass(frozen=True)
class Window:
    """One window at one level: tokens [start, start + sample_tokens); the last `new_tokens` are new."""

    level: int
    index: int
    start: int
    sample_tokens: int
    new_tokens: int

    @property
    def end(self) -> int:
        return self.start + self.sample_tokens


def cond_span(window: Window, n_ctx: int, cond_downsample: int) -> tuple[int, int]:
    """The codes of the level above that an upsampler window is conditioned on: [first, end).

    A lower level's window can start once the level above holds `end` codes (levels may overlap).
    """
    return window.start // cond_downsample, (window.start + n_ctx) // cond_downsample


def plan_level(
    level: int,
    current_tokens: int,
    total_tokens: int,
    n_ctx: int,
    hop: int,
    *,
    reference_partial: bool = False,
) -> list[Window]:
    """The windows that bring a level from `current_tokens` known codes to `total_tokens`.

    Full windows follow `window_starts`; windows whose tokens are all known are dropped. A level
    shorter than one window is sampled as one partial window up to `total_tokens`. The reference's
    partial window (`reference_partial`, for parity) samples `total` tokens after the known ones
    instead: `current + total` tokens in all, or a full window ending `total` tokens after them, so a
    short continuation or primed song came out longer than asked, and longer than its own request.
    """
    windows: list[Window] = []
    if total_tokens >= n_ctx:
        known = current_tokens
        for index, start in enumerate(window_starts(total_tokens, n_ctx, hop)):
            end = start + n_ctx
            new = end - max(min(known, end), start)
            if new > 0:
                windows.append(Window(level, index, start, n_ctx, new))
                known = max(known, end)
        return windows
    if not reference_partial:
        new = total_tokens - current_tokens
        return [Window(level, 0, 0, total_tokens, new)] if new > 0 else []
    if current_tokens < n_ctx - total_tokens:
        sample_tokens, start = current_tokens + total_tokens, 0
    else:
        sample_tokens, start = n_ctx, current_tokens - n_ctx + total_tokens
    known_in_window = min(current_tokens, start + n_ctx) - start
    new = sample_tokens - known_in_window
    return [Window(level, 0, start, sample_tokens, new)] if new > 0 else []


def prompt_length_samples(prompt_seconds: float, sr: int = SAMPLE_RATE) -> int:
    """Prompt length in raw samples, rounded down to a multiple of the top hop as the reference does."""
    return (int(prompt_seconds * sr) // TOP_HOP) * TOP_HOP


def sample_length_samples(seconds: float, sr: int = SAMPLE_RATE) -> int:
    """A duration in raw samples, rounded down to a multiple of the top hop."""
    return (int(seconds * sr) // TOP_HOP) * TOP_HOP


def longest_song_samples(max_seconds: float = MAX_SONG_SECONDS, sr: int = SAMPLE_RATE) -> int:
    """The longest song, in raw samples (a multiple of the top hop), of a top prior that takes songs
    shorter than `max_seconds`."""
    return ((math.ceil(max_seconds * sr) - 1) // TOP_HOP) * TOP_HOP
