"""The defaults and bounds the README gives for the Discord commands are the code's (each fact is
defined once, in the code; the README repeats it for people, and this keeps the two together)."""

from __future__ import annotations

import inspect
from pathlib import Path

from bot.exts.jukebox import MODAL_LYRICS_CHARS
from bot.exts.samples import Samples
from bot.requests import DEFAULT_CONTINUE_SECONDS, DEFAULT_LENGTH_SECONDS, MAX_SEED
from sampler.jobspec import DEFAULT_SAMPLES, DEFAULT_TEMPERATURE, MAX_LYRICS_CHARS

README = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())


def test_jukebox_and_continue_defaults() -> None:
    assert f"including the prime; {DEFAULT_LENGTH_SECONDS:g} by default)" in README
    assert f"`samples` (1–16; {DEFAULT_SAMPLES} by default," in README
    assert f"`temperature` (0.1–2, {DEFAULT_TEMPERATURE:g} by default)" in README
    assert f"`seed` (0 to {MAX_SEED:,}, random by default)" in README
    assert f"extend a sample by at least 1 s, {DEFAULT_CONTINUE_SECONDS:g} by default" in README
    assert f"`lyrics` (up to {MAX_LYRICS_CHARS:,} characters;" in README
    assert f"a large text box of up to {MODAL_LYRICS_CHARS:,}," in README


def test_top_period_default() -> None:
    default = inspect.signature(Samples.top.callback).parameters["period"].default
    assert f"`{default}` (the default)" in README
