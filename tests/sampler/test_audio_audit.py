"""Regressions from an audit of decoding: guessed header lengths, joined MP3s with tags, the curate
command on a decompression bomb, and clips trimmed to exactly the limit."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
from click.testing import CliRunner

from bot.attachments import PROBE_BYTES
from jukebot.cli import main
from sampler.audio import SAMPLE_RATE, AudioTooLong, CorruptAudio, NotAudio, decode_audio, probe, wav_bytes
from sampler.curation import MAX_PIECE_SECONDS
from tests.sampler.audio_fixtures import sine


def _encoded(
    container_format: str,
    codec: str,
    audio: np.ndarray,
    rate: int,
    bit_rate: int | None = None,
    *,
    metadata: dict[str, str] | None = None,
    **options: str,
) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container_format, options=options) as container:
        container.metadata.update(metadata or {})
        stream = container.add_stream(codec, rate=rate, layout="mono")
        assert isinstance(stream, av.AudioStream)
        if bit_rate is not None:
            stream.bit_rate = bit_rate
        for start in range(0, len(audio), 4096):
            frame = av.AudioFrame.from_ndarray(audio[None, start : start + 4096], format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def _mp3(
    seconds: float, bitrate: int, *, rate: int = 44_100, noise: bool = False, tagged: bool = False
) -> bytes:
    """An MP3 at a constant `bitrate`; `tagged` gives it the ID3v2 tag and Xing/Info frame encoders
    write by default, else it has neither (so FFmpeg guesses its length from its size)."""
    if noise:
        audio = (np.random.default_rng(0).standard_normal(round(seconds * rate)) * 0.3).astype(np.float32)
    else:
        audio = sine(seconds, sample_rate=rate)
    xing, id3 = ("1", "4") if tagged else ("0", "0")
    return _encoded("mp3", "libmp3lame", audio, rate, bitrate, write_xing=xing, id3v2_version=id3)


def _adts(seconds: float, rate: int) -> bytes:
    """A plain ADTS .aac: its header has no length, FFmpeg guesses one from the bitrate."""
    return _encoded("adts", "aac", sine(seconds, sample_rate=rate), rate)


def _header_seconds(data: bytes) -> float:
    seconds = probe(data).duration_seconds
    assert seconds is not None
    return seconds


def _seconds(audio: np.ndarray) -> float:
    return len(audio) / SAMPLE_RATE


# --- 1. a guessed header length is no reason to refuse ---------------------------------------------


def test_an_mp3_joined_at_two_bitrates_is_judged_by_its_decoded_length() -> None:
    data = _mp3(5.0, 32_000) + _mp3(20.0, 320_000, noise=True)  # no Xing: the length is a guess
    assert _header_seconds(data) > 200  # the guess, from the first frame's 32 kbit/s
    assert _seconds(decode_audio(data, max_seconds=30)) == pytest.approx(25.0, abs=0.2)


def test_a_plain_aac_shorter_than_the_limit_is_accepted() -> None:
    data = _adts(29.5, 22_050)
    assert _header_seconds(data) > 30  # the guess
    assert _seconds(decode_audio(data, max_seconds=30)) == pytest.approx(29.5, abs=0.1)


def test_an_mp3_longer_than_its_guess_is_still_stopped_at_the_limit() -> None:
    data = _mp3(20.0, 320_000, noise=True) + _mp3(60.0, 32_000)  # guessed at about 26 s, decodes to 80
    assert _header_seconds(data) < 30
    with pytest.raises(AudioTooLong, match="at least 30"):
        decode_audio(data, max_seconds=30)


def test_an_exact_header_is_still_refused_before_decoding() -> None:
    flac = io.BytesIO()
    soundfile.write(flac, np.zeros(4_000 * 3_600, np.int16), 4_000, format="FLAC")
    with pytest.raises(AudioTooLong, match=r"^The audio is 3600\.0 s long, but the limit is 60 s"):
        decode_audio(flac.getvalue(), max_seconds=60)


# --- 2. MP3s joined with `cat`, tags and all ------------------------------------------------------


def test_two_tagged_mp3s_joined_with_cat_decode_to_both() -> None:
    one = _mp3(3.0, 128_000, tagged=True)
    alone = _seconds(decode_audio(one))
    assert _seconds(decode_audio(one + one)) == pytest.approx(2 * alone, abs=0.1)


def test_three_tagged_mp3s_of_different_rates_joined_decode_to_all() -> None:
    parts = [_mp3(2.0, 128_000, tagged=True), _mp3(2.0, 64_000, rate=22_050, tagged=True)] * 2
    assert _seconds(decode_audio(b"".join(parts))) == pytest.approx(8.0, abs=0.3)


def test_an_mp3_with_garbage_through_it_is_still_refused() -> None:
    one = _mp3(3.0, 128_000)
    rng = np.random.default_rng(1)
    garbled = bytearray(one)
    for start in range(2_000, len(garbled) - 500, 1_500):  # every few frames overwritten
        garbled[start : start + 400] = rng.integers(0, 256, 400, dtype=np.uint8).tobytes()
    with pytest.raises(CorruptAudio):
        decode_audio(bytes(garbled))


# --- 3. `jukebot curate` on a small file that decodes to hours -------------------------------------


def _silent_flac(path: Path, seconds: int, rate: int = 4_000) -> None:
    with soundfile.SoundFile(path, "w", rate, 1, format="FLAC", subtype="PCM_16") as out:
        block = np.zeros(rate * 600, np.int16)
        for _ in range(seconds // 600):
            out.write(block)


def test_curate_refuses_a_clip_that_decodes_to_hours_by_name(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.flac"
    _silent_flac(bomb, 3 * 3600)
    assert bomb.stat().st_size < 200_000
    other = tmp_path / "a.wav"
    other.write_bytes(wav_bytes(sine(3.0)))
    result = CliRunner().invoke(main, ["curate", str(other), str(bomb), "-o", str(tmp_path / "out.ogg")])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert f"Error: {bomb}: " in result.output
    assert (
        f"it is 10800.0 s long, and the clips joined may last at most 30 min ({MAX_PIECE_SECONDS} s) "
        "together (those before it last 3.0 s)." in result.output
    )
    assert not (tmp_path / "out.ogg").exists()


def test_curate_refuses_clips_longer_than_the_limit_together(tmp_path: Path) -> None:
    names = []
    for index in range(4):
        path = tmp_path / f"{index}.flac"
        _silent_flac(path, 600)  # 10 min each: the fourth passes 30 min together
        names.append(str(path))
    result = CliRunner().invoke(main, ["curate", *names, "-o", str(tmp_path / "out.ogg")])
    assert result.exit_code == 1, result.output
    assert f"Error: {names[3]}: " in result.output
    assert "(those before it last 1800.0 s)" in result.output


# --- 4. a clip trimmed to exactly the limit --------------------------------------------------------


@pytest.mark.parametrize("rate", [8_000, 11_025, 16_000, 22_050, 44_100])
def test_an_mp3_trimmed_to_exactly_the_limit_is_accepted(rate: int) -> None:
    audio = decode_audio(_mp3(60.0, 32_000, rate=rate), max_seconds=60)
    assert 60.0 <= _seconds(audio) < 60.3


@pytest.mark.parametrize("rate", [8_000, 16_000, 22_050])
def test_an_aac_trimmed_to_exactly_the_limit_is_accepted(rate: int) -> None:
    audio = decode_audio(_adts(60.0, rate), max_seconds=60)
    assert 60.0 <= _seconds(audio) < 60.3


def test_a_clip_a_second_over_the_limit_is_still_refused() -> None:
    with pytest.raises(AudioTooLong, match="limit is 60 s"):
        decode_audio(_mp3(61.0, 32_000, rate=8_000), max_seconds=60)


def test_a_wma_or_older_quicktime_file_whose_header_outgrows_the_probe_is_not_called_not_audio() -> None:
    """A prime over 64 KiB is first probed by its first 64 KiB (`PROBE_BYTES`): a header cut there is
    inconclusive (`CorruptAudio`: the whole file decides), while `NotAudio` refuses it at once. A WMA
    with 100 kB of tags, and a QuickTime file starting with a `free` atom (its `moov` at the end),
    were not recognised as audio by their first bytes, so valid files were refused as "not audio"."""
    wma = _encoded("asf", "wmav2", sine(20.0), SAMPLE_RATE, 128_000, metadata={"comment": "x" * 100_000})
    mov = _encoded("mov", "aac", sine(20.0), SAMPLE_RATE, 128_000)
    assert mov[4:8] == b"ftyp"
    older_mov = mov[:4] + b"free" + mov[8:]  # as older QuickTime writers begin (a skipped atom)
    for name, data in (("wma", wma), ("mov", older_mov)):
        assert len(data) > PROBE_BYTES, name
        with pytest.raises(CorruptAudio):
            probe(data[:PROBE_BYTES], prefix=True, max_seconds=60)
        assert abs(_seconds(decode_audio(data, max_seconds=60)) - 20.0) < 0.2, name


@pytest.mark.parametrize("first_line", ["I'm free, free fallin'", "Set free the birds", "Go", "Gone"])
def test_lyrics_whose_first_bytes_spell_a_container_sign_are_still_a_text_file(first_line: str) -> None:
    """Bytes 4 to 8 of "I'm free" spell a QuickTime atom, and a text starting with "G" with a "G" at
    byte 188 spells an MPEG transport stream: such lyrics were called a damaged MP4, or a video."""
    text = (first_line + "\n" + "la " * 60 + "\n") * 4
    text = text[:188] + "G" + text[189:] if first_line.startswith("G") else text
    with pytest.raises(NotAudio, match=r"it looks like a text file"):
        probe(text.encode())


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-8-sig", "utf-16"])
def test_a_text_file_with_a_byte_order_mark_is_told_a_text_file(encoding: str) -> None:
    """Notepad's "Unicode" text starts with FF FE, which reads as an MPEG frame sync: lyrics attached
    as the prime were called "a damaged MP3"; a UTF-8 byte-order mark hid the "text file" hint."""
    text = "Verse one\nla la la, ünïcödé\n" * 10
    data = text.encode(encoding)
    if encoding in ("utf-16-le", "utf-16-be"):
        data = ("\ufeff" + text).encode(encoding)
    with pytest.raises(NotAudio, match=r"it looks like a text file"):
        probe(data)


def test_sound_in_a_container_not_taken_is_named_so_that_its_sound_is_exported() -> None:
    """An AVI music video was told just "This file is not audio", though it holds sound."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="avi") as container:
        stream = container.add_stream("pcm_s16le", rate=SAMPLE_RATE, layout="mono")
        assert isinstance(stream, av.AudioStream)
        audio = (sine(1.0) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(audio[None, :], format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, 0, Fraction(1, SAMPLE_RATE)
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(NotAudio, match=r"\(it looks like an AVI video\)"):
        probe(buffer.getvalue())
    midi = b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0MTrk\x00\x00\x00\x04\x00\xff\x2f\x00"
    with pytest.raises(NotAudio, match=r"\(it looks like a MIDI file \(notes, not recorded sound\)\)"):
        probe(midi)
