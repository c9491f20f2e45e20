from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sampler.jukebox.windows import plan_level, prompt_length_samples, sample_length_samples, window_starts


def test_one_minute_matches_the_spec_cost_table() -> None:
    # jukebox-spec §7: one minute = 2 645 888 samples.
    samples = sample_length_samples(60)
    assert samples == 2_645_888
    top = plan_level(2, 0, samples // 128, 8192, 1024)
    assert len(top) == 14
    assert top[-1].start == 12_479 and top[-1].new_tokens == 191
    assert len(plan_level(2, 0, samples // 128, 6144, 768)) == 20
    assert len(plan_level(1, 0, samples // 32, 8192, 4096)) == 20
    assert len(plan_level(0, 0, samples // 8, 8192, 4096)) == 80


@given(
    total=st.integers(1, 5000),
    n_ctx=st.sampled_from([16, 64, 100]),
    hop_fraction=st.sampled_from([0.125, 0.25, 0.5, 1.0]),
    current=st.integers(0, 200),
    reference=st.booleans(),
)
def test_windows_cover_every_token_once(
    total: int, n_ctx: int, hop_fraction: float, current: int, reference: bool
) -> None:
    hop = max(1, int(hop_fraction * n_ctx))
    current = min(current, total) if total >= n_ctx or not reference else current
    windows = plan_level(0, current, total, n_ctx, hop, reference_partial=reference)
    known = current
    for window in windows:
        assert window.sample_tokens <= n_ctx
        assert window.start <= known  # every window is conditioned on what precedes it
        assert window.end - window.new_tokens == max(known, window.start)
        known = window.end
    if total >= n_ctx:
        assert known == max(total, current)
        assert window_starts(total, n_ctx, hop)[-1] == total - n_ctx
    elif reference:
        # A short level samples `total` new tokens after what is known (the reference's partial window).
        assert sum(w.new_tokens for w in windows) == total
    else:  # a short level ends at `total`, as a long one does
        assert known == total


def test_a_short_continuation_ends_at_the_length_asked_unless_the_reference_is_followed() -> None:
    """32 codes known, a song of 48: one window of 48 (16 new), where the reference samples 48 more."""
    (window,) = plan_level(2, 32, 48, 64, 32)
    assert (window.start, window.sample_tokens, window.new_tokens) == (0, 48, 16)
    (quirk,) = plan_level(2, 32, 48, 64, 32, reference_partial=True)
    assert (quirk.start, quirk.end, quirk.new_tokens) == (16, 80, 48)
    assert plan_level(2, 48, 48, 64, 32) == []


def test_prompt_length_is_rounded_down_to_the_top_hop() -> None:
    assert prompt_length_samples(1.0) == 44_032
    assert prompt_length_samples(0.001) == 0
    assert prompt_length_samples(12.0) % 128 == 0
