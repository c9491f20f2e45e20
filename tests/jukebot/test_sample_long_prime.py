"""`jukebot sample --mode=primed` decodes only the prompt of a long `--audio_file`, not the whole file.

An hour of audio is about 600 MB of float samples per copy and the whole decode held several; the
prompt is its first seconds. The prompt must stay exactly what a whole decode starts with.
"""

from __future__ import annotations

import math
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest
import soundfile

from jukebot.commands.sample import _prompts
from sampler import audio
from sampler.audio import SAMPLE_RATE, SilentAudio, decode_audio
from sampler.jukebox.windows import prompt_length_samples
from tests.jukebot.test_sample_cli import codes, model_dir, sample, single_thread
from tests.sampler.audio_fixtures import FIXTURE_FORMATS, encode, fixture_bytes

__all__ = ["model_dir", "single_thread"]  # fixtures shared with the end-to-end tests

LONG_SECONDS = 600  # ten minutes: 106 MB of float samples when decoded whole
BIG = 10**9  # a sample length no prompt reaches


def tone_second(rate: int = SAMPLE_RATE) -> np.ndarray:
    """One second of a 441 Hz tone: whole periods, so seconds of it join without a click."""
    return (0.25 * np.sin(2 * np.pi * 441 * np.arange(rate) / rate)).astype(np.float32)


def write_long_flac(
    path: Path, seconds: int = LONG_SECONDS, silent_start: int = 0, file_format: str = "FLAC"
) -> Path:
    """A long mono FLAC (or `file_format`) written a second at a time (never the whole file in memory):
    `silent_start` seconds of digital silence, then the tone."""
    tone, silence = tone_second(), np.zeros(SAMPLE_RATE, np.float32)
    with soundfile.SoundFile(path, "w", SAMPLE_RATE, 1, "PCM_16", format=file_format) as out:
        for second in range(seconds):
            out.write(silence if second < silent_start else tone)
    return path


@pytest.fixture(scope="module")
def long_flac(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_long_flac(tmp_path_factory.mktemp("long") / "ten_minutes.flac")


@pytest.fixture
def decoded_seconds(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Seconds of source audio the decoder has handed over, counted as it hands them."""
    counted = [0.0]
    frames = audio._frames

    def counting(container: Any, stream: Any) -> Iterator[Any]:
        for frame in frames(container, stream):
            counted[0] += frame.samples / frame.sample_rate
            yield frame

    monkeypatch.setattr(audio, "_frames", counting)
    return counted


def test_a_long_file_is_decoded_only_as_far_as_the_prompt(
    long_flac: Path, decoded_seconds: list[float]
) -> None:
    prompt = _prompts([long_flac], 2.0, 1, BIG)
    assert prompt.shape == (1, prompt_length_samples(2.0))
    assert decoded_seconds[0] < 3, f"decoded {decoded_seconds[0]:.0f} s of a {LONG_SECONDS} s file"


def test_the_prompt_of_a_long_file_takes_a_fraction_of_its_whole_decode_in_memory(long_flac: Path) -> None:
    whole_float_bytes = LONG_SECONDS * SAMPLE_RATE * 4
    tracemalloc.start()  # numpy reports its arrays to tracemalloc
    try:
        prompt = _prompts([long_flac], 2.0, 2, BIG)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert prompt.shape == (2, prompt_length_samples(2.0))
    assert peak < whole_float_bytes / 4, f"peak {peak / 2**20:.0f} MiB while decoding a 2 s prompt"


def traced_peak(run: Callable[[], object]) -> int:
    """The most memory Python and numpy held at once while `run` ran, in bytes."""
    tracemalloc.start()  # numpy reports its arrays to tracemalloc
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_long_wav_is_read_only_as_far_as_the_prompt(tmp_path: Path) -> None:
    # Uncompressed, the file itself is 53 MB: reading it whole to decode its first 2 s was the cost.
    wav = write_long_flac(tmp_path / "ten_minutes.wav", file_format="WAV")
    assert wav.stat().st_size > LONG_SECONDS * SAMPLE_RATE * 2
    peak = traced_peak(lambda: _prompts([wav], 2.0, 1, BIG))
    assert peak < wav.stat().st_size / 8, f"peak {peak / 2**20:.0f} MiB while reading a 2 s prompt"


def test_a_silent_start_is_looked_past_without_keeping_the_rest(
    tmp_path: Path, decoded_seconds: list[float]
) -> None:
    # Nine minutes of silence, then the tone: the file is not silent, so its silent start is a prompt.
    late = write_long_flac(tmp_path / "late_tone.flac", silent_start=LONG_SECONDS - 60)
    prompts: list[Any] = []
    peak = traced_peak(lambda: prompts.append(_prompts([late], 2.0, 1, BIG)))
    assert prompts[0].shape == (1, prompt_length_samples(2.0)) and not prompts[0].any()
    assert peak < LONG_SECONDS * SAMPLE_RATE * 4 / 8, f"peak {peak / 2**20:.0f} MiB"
    # The search stops at the first sound instead of decoding the rest.
    decoded_seconds[0] = 0.0
    early = write_long_flac(tmp_path / "early_tone.flac", silent_start=5)
    assert not _prompts([early], 2.0, 1, BIG).any()
    assert decoded_seconds[0] < 10, f"decoded {decoded_seconds[0]:.0f} s to find sound at 5 s"


@pytest.mark.usefixtures("single_thread")
def test_a_long_file_primes_as_its_start_alone_does(
    model_dir: Path, tmp_path: Path, long_flac: Path, decoded_seconds: list[float]
) -> None:
    start = tmp_path / "start.wav"
    with soundfile.SoundFile(long_flac) as source:
        soundfile.write(start, source.read(SAMPLE_RATE, dtype="float32"), SAMPLE_RATE, "PCM_16")
    prompt = "--prompt_length_in_seconds=0.012"
    alone = sample(model_dir, tmp_path / "alone", "--mode=primed", f"--audio_file={start}", prompt)
    assert alone.exit_code == 0, alone.output
    decoded_seconds[0] = 0.0
    long = sample(model_dir, tmp_path / "long", "--mode=primed", f"--audio_file={long_flac}", prompt)
    assert long.exit_code == 0, long.output
    assert decoded_seconds[0] < 1, f"decoded {decoded_seconds[0]:.0f} s for a 0.012 s prompt"
    for level in (0, 1, 2):
        for ours, theirs in zip(
            codes(tmp_path / "long" / f"level_{level}" / "data.pth.tar"),
            codes(tmp_path / "alone" / f"level_{level}" / "data.pth.tar"),
            strict=True,
        ):
            assert ours.equal(theirs)


@pytest.mark.parametrize("rate,channels", [(44_100, 2), (48_000, 1), (22_050, 2)])
@pytest.mark.parametrize("fmt", FIXTURE_FORMATS)
@pytest.mark.parametrize("seconds", [0.5, 2.9])  # the clips are 3 s: a short prompt, and most of it
def test_the_prompt_is_exactly_the_start_of_the_whole_decode(
    tmp_path: Path, fmt: str, rate: int, channels: int, seconds: float
) -> None:
    path = tmp_path / f"clip.{fmt}"
    path.write_bytes(fixture_bytes("noise", fmt, rate, channels))
    whole = decode_audio(path, max_seconds=None, max_bytes=None)
    prompt = _prompts([path], seconds, 1, BIG)[0].numpy()
    assert np.array_equal(prompt, whole[: prompt_length_samples(seconds)])


def test_first_seconds_returns_that_many_samples_or_the_whole_shorter_file(tmp_path: Path) -> None:
    data = fixture_bytes("noise", "flac")  # 3 s
    whole = decode_audio(data)
    for seconds in (0.01, 1.0, 2.999):
        start = decode_audio(data, first_seconds=seconds)
        assert np.array_equal(start, whole[: math.ceil(seconds * SAMPLE_RATE)])
    assert np.array_equal(decode_audio(data, first_seconds=10.0), whole)
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="first_seconds"):
            decode_audio(data, first_seconds=bad)


def test_a_file_shorter_than_the_prompt_is_refused_by_its_length(tmp_path: Path) -> None:
    clip = tmp_path / "short.wav"
    clip.write_bytes(encode(tone_second()[:300], SAMPLE_RATE, "wav"))  # under the 512-sample prompt
    result = sample(
        tmp_path / "no-models",
        tmp_path / "out",
        "--mode=primed",
        f"--audio_file={clip}",
        "--prompt_length_in_seconds=0.012",
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"Error: {clip} is 0.01 s long, shorter than the 0.012 s prompt" in result.output


def test_a_silent_start_still_primes_from_a_file_that_is_not_silent(tmp_path: Path) -> None:
    quiet_start = write_long_flac(tmp_path / "quiet_start.flac", seconds=4, silent_start=2)
    prompt = _prompts([quiet_start], 1.0, 1, BIG)  # a silent prompt, as the whole file always gave
    assert prompt.shape == (1, prompt_length_samples(1.0)) and not prompt.any()


def test_a_silent_file_is_still_refused_as_silent(tmp_path: Path) -> None:
    silent = write_long_flac(tmp_path / "silent.flac", seconds=3, silent_start=3)
    with pytest.raises(SilentAudio):
        decode_audio(silent, max_seconds=None)
    with pytest.raises(click.ClickException, match=r"^--audio_file .*silent\.flac: The audio is silent"):
        _prompts([silent], 1.0, 1, BIG)
