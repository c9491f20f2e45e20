"""`probe` on a file whose header only guesses its length (an MP3 without a Xing/Info/VBRI frame, a
plain ADTS AAC): the guess refuses nothing, and the decode still refuses a clip really too long,
both in `probe` itself and on the bot's path (the first 64 KiB probed, then the whole file decoded)."""

from __future__ import annotations

import aiohttp
import numpy as np
import pytest

from bot.attachments import PROBE_BYTES, DecodedPrime, fetch_prime
from bot.errors import AttachmentRejected
from bot.requests import Limits
from sampler.audio import SAMPLE_RATE, AudioTooLong, decode_audio, probe
from tests.bot.harness import make_settings
from tests.sampler.audio_fixtures import sine
from tests.sampler.http_fixture import running_file_server
from tests.sampler.test_audio_audit import _encoded, _mp3

LIMITS = Limits.resolve(make_settings())
LIMIT = LIMITS.max_prime_seconds  # 30 s
RATE = 22_050  # MPEG-2: frames as small as 8 kbit/s


def _quiet_start_mp3(loud_seconds: float) -> bytes:
    """10 s at 8 kbit/s, then noise at 64 kbit/s, with no Xing frame: FFmpeg guesses the length from
    the first frames' 8 kbit/s, as for a VBR MP3 that opens on near-silence."""
    return _mp3(10.0, 8_000, rate=RATE) + _mp3(loud_seconds, 64_000, rate=RATE, noise=True)


def _seconds(audio: np.ndarray) -> float:
    return len(audio) / SAMPLE_RATE


@pytest.mark.parametrize("prefix", [True, False], ids=["first-64KiB", "whole-file"])
def test_an_mp3_guessed_far_longer_than_it_is_is_not_refused_by_probe(prefix: bool) -> None:
    data = _quiet_start_mp3(15.0)  # 25 s
    assert len(data) > PROBE_BYTES  # the bot probes only its start
    info = probe(data[:PROBE_BYTES] if prefix else data, max_seconds=LIMIT, prefix=prefix)
    assert info.container == "mp3"
    assert info.duration_seconds is not None and info.duration_seconds > 2 * LIMIT  # the guess, reported
    assert _seconds(decode_audio(data, max_seconds=LIMIT)) == pytest.approx(25.0, abs=0.2)


def test_a_plain_aac_guessed_far_longer_than_it_is_is_not_refused_by_probe() -> None:
    noise = (np.random.default_rng(0).standard_normal(15 * RATE) * 0.3).astype(np.float32)
    data = _encoded("adts", "aac", sine(10.0, sample_rate=RATE), RATE, 16_000) + _encoded(
        "adts", "aac", noise, RATE, 128_000
    )
    info = probe(data, max_seconds=LIMIT)
    assert info.container == "aac"
    assert info.duration_seconds is not None and info.duration_seconds > 2 * LIMIT  # the guess
    assert _seconds(decode_audio(data, max_seconds=LIMIT)) == pytest.approx(25.0, abs=0.2)


def test_an_exact_header_is_still_refused_from_the_first_bytes() -> None:
    tagged = _mp3(2 * LIMIT, 32_000, tagged=True)  # LAME's Info frame states the frame count
    assert len(tagged) > PROBE_BYTES
    with pytest.raises(AudioTooLong, match=rf"^The audio is {2 * LIMIT:.1f} s long") as caught:
        probe(tagged[:PROBE_BYTES], max_seconds=LIMIT, prefix=True)
    assert not caught.value.at_least


async def _fetch(data: bytes) -> tuple[DecodedPrime | AttachmentRejected, list[str | None]]:
    """What `fetch_prime` makes of `data` served as an attachment, and the Range of each GET."""
    with running_file_server() as server:
        server.serve("clip.mp3", data)
        async with aiohttp.ClientSession() as session:
            try:
                result: DecodedPrime | AttachmentRejected = await fetch_prime(
                    session, f"{server.url}/clip.mp3", "clip.mp3", len(data), LIMITS
                )
            except AttachmentRejected as exc:
                result = exc
        return result, [hit.range for hit in server.hits_for("clip.mp3")]


async def test_the_bot_takes_a_clip_whose_first_bytes_guess_it_too_long() -> None:
    data = _quiet_start_mp3(15.0)
    guess = probe(data[:PROBE_BYTES]).duration_seconds
    assert guess is not None and guess > 2 * LIMIT
    prime, ranges = await _fetch(data)
    assert isinstance(prime, DecodedPrime), prime
    assert prime.duration_seconds == pytest.approx(25.0, abs=0.2)
    assert ranges == [f"bytes=0-{PROBE_BYTES - 1}", None]  # the header, then the whole file


async def test_the_bot_still_refuses_a_clip_too_long_whose_header_is_a_guess() -> None:
    data = _quiet_start_mp3(60.0)  # 70 s
    refused, ranges = await _fetch(data)
    assert isinstance(refused, AttachmentRejected)
    # Refused by the decode, which stops once past the limit (plus its slack): not by the guess.
    assert str(refused).startswith(
        f"The attachment 'clip.mp3' is too long: The audio is at least {LIMIT:.0f}."
    )
    assert f"but the limit is {LIMIT:g} s" in str(refused)
    assert ranges == [f"bytes=0-{PROBE_BYTES - 1}", None]
