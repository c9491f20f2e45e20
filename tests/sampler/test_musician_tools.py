"""Curation as musicians use it: short loops and one-shots are compared like longer clips."""

from __future__ import annotations

import pytest

from sampler.curation import Clip, curate, fingerprint
from tests.sampler.test_curation import MELODY_A, MELODY_B, melody

pytest.importorskip("chromaprint")


@pytest.mark.parametrize("seconds", [1.0, 2.0, 3.0])
def test_short_clips_are_ordered_by_how_they_sound(seconds: float) -> None:
    # Chromaprint gives no item for a clip under ~3.3 s: every pair scored 0.5 and the "order" was
    # the order the clips were given in.
    clips = [
        Clip("a1", melody(MELODY_A, seconds, seed=1)),
        Clip("b1", melody(MELODY_B, seconds, seed=2)),
        Clip("a2", melody(MELODY_A, seconds, seed=3)),
        Clip("b2", melody(MELODY_B, seconds, seed=4)),
    ]
    assert fingerprint(clips[0].audio).size < 4  # what made them incomparable
    result = curate(clips)
    names = [clips[i].name for i in result.order]
    assert {frozenset(names[:2]), frozenset(names[2:])} == {frozenset({"a1", "a2"}), frozenset({"b1", "b2"})}
    same, across, other = result.join_scores
    assert same > 0.9 and other > 0.9 and across < same
    # the piece is still the clips themselves, not their loops
    assert result.duration_seconds == pytest.approx(4 * seconds - 3 * min(0.5, seconds / 2), abs=0.01)
