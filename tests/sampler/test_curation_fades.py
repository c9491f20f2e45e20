"""Crossfades around a short clip: each fade takes at most half of the clips on either side of it, so
a short clip between two long ones is still heard, whole and at its own level."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sampler.audio import SAMPLE_RATE
from sampler.curation import CROSSFADE_S, crossfade_concat
from tests.sampler.test_curation import MELODY_A, _crossfade_concat_by_copying, melody


def test_a_short_clip_between_two_long_ones_is_heard_at_its_own_level() -> None:
    long = np.full(10 * SAMPLE_RATE, 0.1, np.float32)
    short = np.full(round(0.3 * SAMPLE_RATE), 1.0, np.float32)
    joined = crossfade_concat([long, short, long.copy()], fade_s=0.5)
    half = short.shape[0] // 2
    # Faded in over its first half and out over its second: never over more than its own length.
    assert joined.shape[0] == 2 * long.shape[0] + short.shape[0] - 2 * half
    assert joined.max() > 0.99, f"the 0.3 s clip at 1.0 peaks at {joined.max():.3f}"
    # Where it sits, nothing of the clip after it yet: the fade in of the third clip starts at its middle.
    middle = long.shape[0] - half + half - 1  # the last sample of its fade in
    assert joined[middle] > 0.99 and np.all(joined[: long.shape[0] - half] == 0.1)
    assert np.all(joined[long.shape[0] - half + short.shape[0] :] == 0.1)


def test_each_fade_takes_at_most_half_of_either_clip_beside_it() -> None:
    sizes = [10 * SAMPLE_RATE, 4_000, 30_000, 100, 10 * SAMPLE_RATE, 7, 2 * SAMPLE_RATE]
    clips = [np.ones(n, np.float32) for n in sizes]
    joined = crossfade_concat(clips, fade_s=CROSSFADE_S)
    fade = round(CROSSFADE_S * SAMPLE_RATE)
    fades = [min(fade, a // 2, b // 2) for a, b in pairwise(sizes)]
    assert joined.shape[0] == sum(sizes) - sum(fades)


@settings(max_examples=80, deadline=None)
@given(
    lengths=st.lists(st.sampled_from([0, 1, 2, 3, 7, 100, 4_000, 30_000, 50_000]), min_size=1, max_size=8),
    fade_s=st.sampled_from([0.0, 0.001, 0.05, CROSSFADE_S, 2.0]),
    seed=st.integers(0, 2**16),
)
def test_crossfade_is_bit_for_bit_the_join_by_join_result(
    lengths: list[int], fade_s: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    clips = [rng.uniform(-1, 1, n).astype(np.float32) for n in lengths]
    joined = crossfade_concat(clips, fade_s=fade_s)
    assert (
        joined.dtype == np.float32
        and joined.tobytes() == _crossfade_concat_by_copying(clips, fade_s, half_of="clip").tobytes()
    )


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.sampled_from([44_100, 50_000, 3 * SAMPLE_RATE]), min_size=1, max_size=6),
    fade_s=st.sampled_from([0.0, 0.001, 0.05, CROSSFADE_S]),
    seed=st.integers(0, 2**16),
)
def test_clips_of_twice_the_fade_or_more_join_as_before(lengths: list[int], fade_s: float, seed: int) -> None:
    # Clips at least twice the fade long were never touched by the limit: the piece is the same, bit for bit.
    rng = np.random.default_rng(seed)
    clips = [rng.uniform(-1, 1, n).astype(np.float32) for n in lengths]
    expected = _crossfade_concat_by_copying(clips, fade_s)
    assert crossfade_concat(clips, fade_s=fade_s).tobytes() == expected.tobytes()


def test_melodies_of_a_second_join_as_before() -> None:
    clips = [melody(MELODY_A, 1.0, seed=i) for i in range(5)]
    expected = _crossfade_concat_by_copying(clips, CROSSFADE_S)
    assert crossfade_concat(clips).tobytes() == expected.tobytes()
