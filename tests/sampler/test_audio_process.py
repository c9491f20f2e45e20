"""Decoding in a child process (sampler/audio_process.py): same results as in-process, errors that
cross the boundary intact, and a decoder that crashes, hangs or dies costs one answer, not the caller."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sampler import audio_process
from sampler.audio import (
    SAMPLE_RATE,
    AudioTooLong,
    CorruptAudio,
    ImpossibleSampleRate,
    NotAudio,
    UnsupportedAudio,
    decode_audio,
    probe,
)
from sampler.audio_process import DecoderFailed, DecodersBusy, decode_in_child, probe_in_child
from tests.sampler.audio_fixtures import fixture_bytes, multichannel, png_bytes, sine, wav_with_header


@pytest.mark.parametrize(("fmt", "channels"), [("flac", 8), ("wav", 8), ("wav", 12)])
async def test_eight_or_more_channels_decode_to_the_channel_mean(fmt: str, channels: int) -> None:
    data, expected = multichannel(fmt, channels)
    decoded = await decode_in_child(data)  # planar resampling segfaulted here (PyAV 14-18)
    assert decoded.shape == expected.shape
    np.testing.assert_allclose(decoded, expected, atol=2e-4)  # 16-bit PCM, then the average
    assert (await probe_in_child(data)).channels == channels


def test_eight_channels_decode_in_process_too() -> None:
    """The fix is in `decode_audio` itself (the CLI decodes in-process): run it in a fresh interpreter,
    so a crash fails this test rather than ending the test run."""
    data, expected = multichannel("flac", 8)
    script = textwrap.dedent(
        """
        import sys
        from sampler.audio import decode_audio
        sys.stdout.buffer.write(decode_audio(sys.stdin.buffer.read()).astype("<f4").tobytes())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], input=data, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    np.testing.assert_allclose(np.frombuffer(done.stdout, "<f4"), expected, atol=2e-4)


async def test_child_decodes_exactly_like_the_parent() -> None:
    data = fixture_bytes("noise", "ogg_vorbis", channels=2)
    np.testing.assert_array_equal(await decode_in_child(data), decode_audio(data))
    assert await probe_in_child(data) == probe(data)


async def test_refusals_cross_the_process_boundary_with_their_class_and_message() -> None:
    with pytest.raises(NotAudio) as in_child:
        await decode_in_child(png_bytes())
    with pytest.raises(NotAudio) as in_process:
        decode_audio(png_bytes())
    assert str(in_child.value) == str(in_process.value)
    long_clip = wav_with_header(SAMPLE_RATE, (sine(3.0) * 32767).astype("<i2").tobytes())
    with pytest.raises(AudioTooLong, match="limit is 2 s"):
        await decode_in_child(long_clip, max_seconds=2.0)


@pytest.mark.parametrize("rate", [2**31 - 1, 1])
async def test_impossible_sample_rates_are_refused_by_header_and_decode(rate: int) -> None:
    data = wav_with_header(rate, (sine(0.1) * 32767).astype("<i2").tobytes())
    expected = f"The file says its sample rate is {rate:,} Hz, which no audio uses"
    with pytest.raises(ImpossibleSampleRate, match=expected):
        probe(data)
    with pytest.raises(ImpossibleSampleRate, match=expected):  # 2**31 - 1 was a MemoryError here
        await decode_in_child(data)
    assert issubclass(ImpossibleSampleRate, CorruptAudio)  # the bot calls the file damaged


async def test_an_unsupported_file_is_refused_by_name_not_as_a_decoder_crash() -> None:
    """65 channels raised inside FFmpeg's resampler: the child exited 1 and the user read "the decoder
    failed"."""
    data = wav_with_header(SAMPLE_RATE, np.zeros((4410, 65), dtype="<i2").tobytes(), channels=65)
    with pytest.raises(UnsupportedAudio, match="This file has 65 audio channels; I take at most 64"):
        await decode_in_child(data)


async def test_the_child_gets_no_secrets_and_a_memory_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child runs FFmpeg on hostile bytes: it must not hold the bot's token or database password,
    and a decoder bomb must meet MemoryError in it, not the machine's OOM killer."""
    monkeypatch.setenv("DISCORD_TOKEN", "secret-token")
    monkeypatch.setenv("DATABASE_URL", "postgresql://jukebot:secret@db/jukebot")
    seen = tmp_path / "seen.json"
    report = f"""
import atexit, json, os, resource
def report():
    limit = resource.getrlimit(resource.RLIMIT_DATA)[0]
    open({str(seen)!r}, "w").write(json.dumps({{"environ": sorted(os.environ), "data_limit": limit}}))
atexit.register(report)
"""
    _dying_interpreter(tmp_path, monkeypatch, textwrap.dedent(report))
    data = fixture_bytes("sine", "wav")
    await decode_in_child(data, max_seconds=60.0)
    child = json.loads(seen.read_text())
    assert "DISCORD_TOKEN" not in child["environ"] and "DATABASE_URL" not in child["environ"]
    assert child["data_limit"] == audio_process.memory_limit_bytes(60.0, len(data))
    assert child["data_limit"] < 3 << 30


def _dying_interpreter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str) -> None:
    """Make every child interpreter run `code` at startup (a sitecustomize on its PYTHONPATH): a real
    process that dies or hangs, without a test hook in the decoder."""
    (tmp_path / "sitecustomize.py").write_text(code)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGKILL])
async def test_a_decoder_killed_by_a_signal_is_one_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sig: signal.Signals
) -> None:
    _dying_interpreter(tmp_path, monkeypatch, f"import os\nos.kill(os.getpid(), {int(sig)})\n")
    with pytest.raises(DecoderFailed) as failed:
        await decode_in_child(fixture_bytes("sine", "wav"))
    assert str(failed.value) == (
        f"The decoder crashed ({sig.name}) on this file. Convert it to a mono or stereo WAV, FLAC or MP3 "
        "and attach it again."
    )


async def test_a_hanging_decoder_is_stopped_at_its_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid_file = tmp_path / "child.pid"
    hang = f"import os, signal\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\nsignal.pause()\n"
    _dying_interpreter(tmp_path, monkeypatch, hang)
    with pytest.raises(DecoderFailed, match="took longer than 1 s, so it was stopped"):
        await decode_in_child(fixture_bytes("sine", "wav"), timeout_s=1.0)
    if pid_file.exists():  # it got as far as hanging (on a loaded machine it may not): killed and reaped
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid_file.read_text()), 0)


async def test_a_burst_of_attachments_runs_a_few_decoders_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hundred attachments at once must not start a hundred interpreters: the rest wait their turn."""
    monkeypatch.setattr(audio_process, "MAX_CONCURRENT_DECODERS", 2)
    start = asyncio.create_subprocess_exec
    live, most = 0, 0

    async def counted(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        nonlocal live, most
        child = await start(*args, **kwargs)
        live += 1
        most = max(most, live)
        wait = child.wait

        async def waited() -> int:
            nonlocal live
            code = await wait()
            if child.returncode is not None and not getattr(child, "counted_out", False):
                child.counted_out = True  # type: ignore[attr-defined]
                live -= 1
            return code

        child.wait = waited  # type: ignore[method-assign]
        return child

    monkeypatch.setattr(audio_process.asyncio, "create_subprocess_exec", counted)
    clip = fixture_bytes("noise", "wav")
    decoded = await asyncio.gather(*(decode_in_child(clip) for _ in range(6)))
    assert len(decoded) == 6 and all(d.shape == decoded[0].shape for d in decoded)
    assert most == 2


async def test_a_clip_waits_for_a_free_decoder_for_a_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files made to take the whole time limit, sent in turn from a few accounts, kept every decoder
    busy while everyone else's clips waited without end (audit). The wait is bounded: the member is
    told the bot is busy, and a decoder that comes free serves the next clip."""
    monkeypatch.setattr(audio_process, "DECODER_WAIT_S", 0.3)
    busy = asyncio.Semaphore(1)
    monkeypatch.setitem(audio_process._decoder_slots, asyncio.get_running_loop(), busy)
    clip = fixture_bytes("sine", "wav")
    await busy.acquire()  # another member's clip holds the only decoder
    with pytest.raises(
        DecodersBusy, match=r"^I am busy decoding other members' clips .* again in a minute\.$"
    ):
        await decode_in_child(clip)
    busy.release()
    assert (await decode_in_child(clip)).shape == (await decode_in_child(clip)).shape
    assert not busy.locked()
