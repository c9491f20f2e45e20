"""A job whose levels sample at once: each level timed on its own (at given clock times), each shown."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from types import SimpleNamespace

import pytest

from sampler.worker.contract import LevelProgress
from sampler.worker.runtime import LevelTimer, WorkerConfig, _Reporter, _Run
from storage import LevelWindow


def levels(one: int, zero: int, *, one_total: int = 100, zero_total: int = 400) -> list[LevelProgress]:
    """Levels 1 and 0 of an upsample job with `one` and `zero` tokens done (window numbers unused)."""
    return [
        LevelProgress(1, 1, 4, one, one_total, one < one_total),
        LevelProgress(0, 1, 8, zero, zero_total, 0 < zero < zero_total),
    ]


def remaining(progress: list[LevelProgress]) -> int:
    return sum(p.tokens_total - p.tokens_done for p in progress)


def test_overlapping_levels_end_with_the_slowest() -> None:
    timer = LevelTimer()
    assert timer.estimate(levels(0, 0), 500, now=0.0) == (None, None)
    # 10 s in, both levels did 50 tokens: 10 tokens/s together, but level 0 has 350 left at 5/s
    rate, seconds = timer.estimate(now_levels := levels(50, 50), remaining(now_levels), now=10.0)
    assert rate == pytest.approx(10.0) and seconds == pytest.approx(70.0)
    # negative control: timing the job as a whole would say 40 s
    assert remaining(now_levels) / rate == pytest.approx(40.0)


def test_a_finished_level_no_longer_counts() -> None:
    timer = LevelTimer()
    timer.estimate(levels(0, 0), 500, now=0.0)
    timer.estimate(levels(100, 100), 300, now=10.0)
    # level 1 is done; level 0 went on to 200 at 10 tokens/s over the 20 s
    rate, seconds = timer.estimate(done := levels(100, 200), remaining(done), now=20.0)
    assert rate == pytest.approx(10.0) and seconds == pytest.approx(20.0)


def test_one_level_at_a_time_is_timed_as_the_whole_job() -> None:
    timer = LevelTimer()
    timer.estimate(levels(0, 0), 500, now=0.0)
    # level 1 alone at 5 tokens/s: the 450 tokens left of both levels at that rate
    rate, seconds = timer.estimate(alone := levels(50, 0), remaining(alone), now=10.0)
    assert rate == pytest.approx(5.0) and seconds == pytest.approx(90.0)


def test_a_report_keeps_the_windows_of_the_levels_sampling_now() -> None:
    worker = SimpleNamespace(config=WorkerConfig())
    run = _Run(job=None)  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    try:
        reporter = _Reporter(worker, run, loop)  # type: ignore[arg-type]
        both = [LevelProgress(1, 3, 4, 150, 256, True), LevelProgress(0, 2, 8, 70, 512, True)]
        reporter.progress("upsampling", 0, 2, 8, 220, 768, levels=both)
        assert run.latest is not None and run.latest.level_windows == (
            LevelWindow(1, 3, 4),
            LevelWindow(0, 2, 8),
        )
        waiting = [replace(both[0], sampling=False), both[1]]
        reporter.progress("upsampling", 0, 2, 8, 230, 768, levels=waiting)
        assert run.latest.level_windows == (LevelWindow(0, 2, 8),)
        reporter.progress("upsampling", 0, 2, 8, 240, 768)  # a runner that does not say
        assert run.latest.level_windows == ()
    finally:
        loop.close()
