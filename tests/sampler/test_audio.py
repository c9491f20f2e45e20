"""sampler/audio.py against real files in every format, generated in code (tests/sampler/audio_fixtures.py)."""

from __future__ import annotations

import io
import itertools
import struct
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile

from sampler import audio
from sampler.audio import (
    SAMPLE_RATE,
    AudioError,
    AudioTooLarge,
    AudioTooLong,
    CorruptAudio,
    DoesNotFit,
    EmptyAudio,
    NotAudio,
    SilentAudio,
    UnsupportedAudio,
    decode_audio,
    encode_audio,
    encode_to_fit,
    probe,
    split_to_fit,
    to_int16_pcm,
    wav_bytes,
)
from tests.sampler.audio_fixtures import (
    FIXTURE_FORMATS,
    click_track,
    detect_onsets,
    encode,
    fixture_bytes,
    joined_mp3_mono_then_stereo,
    peak_frequency,
    png_bytes,
    signal,
    sine,
    wav_with_header,
    wav_with_zero_frames,
    white_noise,
)

VARIANTS = [(44_100, 1), (44_100, 2), (48_000, 1), (22_050, 1)]
# Formats whose decoded length is exact. Vorbis and AAC (in MP4) do not record the end padding of
# their last block, so they may decode up to one codec frame long: AAC frames are 1024 samples and a
# Vorbis long block adds at most 1024 per packet; we allow 1152 source samples (an MP3 frame, the
# largest of the three), scaled to 44.1 kHz. MP3 (LAME's gapless Info tag) and Opus (granule
# positions) come back exact; resampling can round by one sample.
EXACT_FORMATS = {"wav", "flac", "mp3", "ogg_opus"}
PADDING_SOURCE_SAMPLES = 1152


def expected_length(name: str, rate: int) -> float:
    return signal(name, rate).size * SAMPLE_RATE / rate


def length_tolerance(fmt: str, rate: int) -> float:
    return 1.0 if fmt in EXACT_FORMATS else PADDING_SOURCE_SAMPLES * SAMPLE_RATE / rate


# ----------------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("rate,channels", VARIANTS)
@pytest.mark.parametrize("fmt", FIXTURE_FORMATS)
def test_sine_decodes_to_right_length_and_pitch(fmt: str, rate: int, channels: int) -> None:
    decoded = decode_audio(fixture_bytes("sine", fmt, rate, channels))
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    expected = expected_length("sine", rate)
    assert abs(decoded.size - expected) <= length_tolerance(fmt, rate), (decoded.size, expected)
    assert expected <= decoded.size + 1  # padding only ever adds
    # 3 s gives 0.4 Hz FFT bins (on the middle two thirds); the peak must land on 440 Hz.
    assert peak_frequency(decoded, SAMPLE_RATE) == pytest.approx(440.0, abs=0.8)
    # Mono keeps the 0.5 amplitude; stereo (left x, right x/2) averages to 0.75 * 0.5.
    # Measured away from the edges, where lossy codecs ring on the tone's abrupt start.
    expected_peak = 0.5 if channels == 1 else 0.375
    middle = decoded[SAMPLE_RATE // 2 : -SAMPLE_RATE // 2]
    assert float(np.max(np.abs(middle))) == pytest.approx(expected_peak, rel=0.06)
    assert float(np.max(np.abs(decoded))) <= 1.0


@pytest.mark.parametrize("fmt", FIXTURE_FORMATS)
def test_noise_decodes_with_its_energy(fmt: str) -> None:
    decoded = decode_audio(fixture_bytes("noise", fmt))
    original = white_noise()
    assert abs(decoded.size - original.size) <= length_tolerance(fmt, SAMPLE_RATE)
    rms = float(np.sqrt(np.mean(decoded**2)))
    assert rms == pytest.approx(float(np.sqrt(np.mean(original**2))), rel=0.2)


@pytest.mark.parametrize("rate", [44_100, 48_000, 22_050])
@pytest.mark.parametrize("fmt", FIXTURE_FORMATS)
def test_click_track_onsets_land_on_the_beat(fmt: str, rate: int) -> None:
    decoded = decode_audio(fixture_bytes("clicks", fmt, rate))
    onsets = detect_onsets(decoded, SAMPLE_RATE)
    expected = click_track().onsets_seconds
    assert len(onsets) == len(expected) == 8
    # 140 BPM: one beat every 0.4286 s. Codec delay, if mishandled, would shift every onset by >= 5 ms.
    assert np.max(np.abs(np.array(onsets) - np.array(expected))) < 0.002


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_stereo_downmix_is_the_channel_average(fmt: str) -> None:
    left = sine()
    # Left only: the average halves it.
    left_only = decode_audio(encode(np.stack([left, np.zeros_like(left)]), SAMPLE_RATE, fmt))
    np.testing.assert_allclose(left_only, 0.5 * left, atol=2 / 32768)
    # Opposite phase cancels out: a plain average, not a centre-weighted or one-channel downmix.
    with pytest.raises(SilentAudio):
        decode_audio(encode(np.stack([left, -left]), SAMPLE_RATE, fmt))


@pytest.mark.parametrize("rate", [44_100, 48_000])
def test_layout_change_midstream_decodes(rate: int) -> None:
    decoded = decode_audio(joined_mp3_mono_then_stereo(rate))
    # Two 1 s streams without gapless tags: each keeps LAME's delay (1105 samples) and its padding to a
    # whole 1152-sample frame, so each comes back less than two frames long.
    assert 2 * SAMPLE_RATE <= decoded.size <= 2 * SAMPLE_RATE + 4 * 1152 * SAMPLE_RATE / rate
    assert peak_frequency(decoded, SAMPLE_RATE) == pytest.approx(440.0, abs=1.0)


@pytest.mark.parametrize("fmt", FIXTURE_FORMATS)
def test_a_path_decodes_as_its_bytes_do(fmt: str, tmp_path: Path) -> None:
    # A path is read as decoding goes, and the checks beside it (an Ogg file's last page, an MP3
    # header's length) read the same file: none of them may move FFmpeg's place in it.
    path = tmp_path / "clip"
    path.write_bytes(fixture_bytes("noise", fmt, 48_000, 2))
    assert np.array_equal(decode_audio(path), decode_audio(path.read_bytes()))
    assert probe(path) == probe(path.read_bytes())


def test_decode_from_path_and_resample_rate(tmp_path: Path) -> None:
    path = tmp_path / "clip.flac"
    path.write_bytes(fixture_bytes("sine", "flac", 48_000))
    at_native = decode_audio(path, sample_rate=48_000)
    assert at_native.size == 3 * 48_000
    at_22k = decode_audio(str(path), sample_rate=22_050)
    assert at_22k.size == 3 * 22_050
    assert peak_frequency(at_22k, 22_050) == pytest.approx(440.0, abs=0.8)


@pytest.mark.parametrize(
    "fmt,codec,container",
    [
        ("wav", "pcm_s16le", "wav"),
        ("flac", "flac", "flac"),
        ("ogg_vorbis", "vorbis", "ogg"),
        ("ogg_opus", "opus", "ogg"),
        ("mp3", "mp3", "mp3"),
        ("m4a", "aac", "mp4"),
    ],
)
def test_probe_reads_the_header(fmt: str, codec: str, container: str) -> None:
    info = probe(fixture_bytes("sine", fmt, 22_050, 2))
    assert info.codec == codec and info.container == container
    assert info.channels == 2
    assert info.sample_rate == (48_000 if fmt == "ogg_opus" else 22_050)
    assert info.duration_seconds == pytest.approx(3.0, abs=0.02)


def test_probe_works_from_the_first_bytes() -> None:
    # MP3 (LAME Info tag) and FLAC (STREAMINFO) state their length up front.
    for fmt in ("mp3", "flac"):
        head = fixture_bytes("sine", fmt)[:4096]
        info = probe(head)
        assert info.duration_seconds == pytest.approx(3.0, abs=0.01)
        assert (info.sample_rate, info.channels) == (SAMPLE_RATE, 1)
    info = probe(fixture_bytes("sine", "wav", 48_000, 2)[:4096])
    assert (info.sample_rate, info.channels, info.codec) == (48_000, 2, "pcm_s16le")


# -------------------------------------------------------------------------------------- bad inputs


def flac_claiming(data: bytes, total_samples: int) -> bytes:
    """Rewrite the 36-bit total-samples field of FLAC's STREAMINFO (bytes 18-25 of the file)."""
    assert data[:4] == b"fLaC"
    packed = int.from_bytes(data[18:26], "big")
    packed = (packed & ~((1 << 36) - 1)) | total_samples
    return data[:18] + packed.to_bytes(8, "big") + data[26:]


def test_png_is_not_audio() -> None:
    with pytest.raises(NotAudio, match="PNG image"):
        decode_audio(png_bytes())
    with pytest.raises(NotAudio, match="not audio"):
        probe(png_bytes())


def test_text_is_not_audio() -> None:
    with pytest.raises(NotAudio, match=r"not audio.*text file"):
        decode_audio(b"Never gonna give you up, never gonna let you down.\n" * 40)


def test_random_bytes_are_not_audio() -> None:
    noise = np.random.default_rng(7).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    assert noise[0] != 0xFF  # an MPEG sync byte would make it look like a broken MP3
    with pytest.raises(NotAudio, match="not audio"):
        decode_audio(noise)


@pytest.mark.parametrize("from_path", [False, True], ids=["bytes", "path"])
@pytest.mark.parametrize("fmt", ["mp3", "ogg_vorbis", "ogg_opus", "flac", "m4a"])
def test_truncated_file_is_corrupt(fmt: str, from_path: bool, tmp_path: Path) -> None:
    data = fixture_bytes("noise", fmt)
    cut = tmp_path / "cut"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptAudio, match=r"truncated|damaged"):
        decode_audio(cut if from_path else cut.read_bytes())


@pytest.mark.parametrize("fmt", ["mp3", "ogg_vorbis", "ogg_opus", "flac"])
def test_garbage_after_a_valid_header_is_corrupt(fmt: str) -> None:
    data = fixture_bytes("sine", fmt)
    garbage = np.random.default_rng(3).integers(0, 256, len(data) - 300, dtype=np.uint8).tobytes()
    with pytest.raises(CorruptAudio, match=r"damaged|truncated"):
        decode_audio(data[:300] + garbage)


def test_wav_with_zero_frames_is_empty() -> None:
    with pytest.raises(EmptyAudio, match="no samples"):
        decode_audio(wav_with_zero_frames())
    with pytest.raises(EmptyAudio, match="0 bytes"):
        decode_audio(b"")


def test_silence_is_refused_with_the_threshold() -> None:
    with pytest.raises(SilentAudio, match=r"silent.*-inf dBFS.*-60 dBFS"):
        decode_audio(encode(np.zeros(SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE, "wav"))
    quiet = sine(amplitude=10 ** (-70 / 20))  # -70 dBFS
    with pytest.raises(SilentAudio, match=r"-70\.\d dBFS, below the -60 dBFS"):
        decode_audio(encode(quiet, SAMPLE_RATE, "flac"))
    assert decode_audio(encode(quiet, SAMPLE_RATE, "flac"), silence_threshold_db=-80).size == 3 * SAMPLE_RATE
    assert (
        decode_audio(encode(np.zeros(100, np.float32), SAMPLE_RATE, "wav"), silence_threshold_db=None).size
        == 100
    )


def float_wav(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A 32-bit float WAV of (samples,) or (channels, samples) audio: the format that can hold NaN and inf."""
    planar = np.atleast_2d(np.asarray(audio, dtype=np.float32))
    buffer = io.BytesIO()
    soundfile.write(buffer, planar.T, sample_rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def test_nan_or_infinite_samples_make_the_file_damaged() -> None:
    loud = sine(amplitude=0.5)
    one_nan = loud.copy()
    one_nan[30_000] = np.nan  # at 0.68 s: it made the whole clip count as silent
    all_inf = np.full(SAMPLE_RATE, np.inf, np.float32)  # it passed as a full-scale prime
    resampled = sine(sample_rate=48_000)
    resampled[48_000] = np.inf  # at 1 s; resampling turns it into NaN around it
    anti_inf = np.stack([loud, loud])
    anti_inf[0, 100], anti_inf[1, 100] = np.inf, -np.inf  # their mean is NaN
    cases = [(one_nan, SAMPLE_RATE, 0.68), (all_inf, SAMPLE_RATE, 0.0), (resampled, 48_000, 1.0)]
    cases.append((anti_inf, SAMPLE_RATE, 0.0))
    for audio_in, rate, at in cases:
        for threshold in (audio.DEFAULT_SILENCE_DB, None):  # the bot's, and `jukebot curate`'s
            with pytest.raises(CorruptAudio, match=r"invalid samples \(NaN or infinite values\)") as caught:
                decode_audio(float_wav(audio_in, rate), silence_threshold_db=threshold)
            first = float(str(caught.value).split("the first at ")[1].split(" s")[0])
            assert first == pytest.approx(at, abs=0.011)
    assert decode_audio(float_wav(loud)).shape == loud.shape  # finite float WAV still decodes


def test_float_audio_far_past_full_scale_is_scaled_down_not_squared_off() -> None:
    meant = sine(amplitude=0.5)
    for gain in (32_767.0, 1e30):  # int16 values written as floats; a float mix with no limiter
        decoded = decode_audio(float_wav(meant * gain))
        assert np.max(np.abs(decoded)) == pytest.approx(1.0, abs=1e-6)
        assert np.allclose(decoded, meant * 2, atol=1e-5)  # the sine it was, at full scale
    # A little over (a float master's overs, a resampled clip's overshoot): clipped as ever.
    over = decode_audio(float_wav(sine(amplitude=1.5)))
    assert np.max(over) == 1.0 and np.mean(np.abs(over) == 1.0) > 0.2


def test_channels_that_cancel_out_are_told_apart_from_silence() -> None:
    left = sine(amplitude=0.5)
    for fmt in ("wav", "flac"):  # lossless: lossy stereo coding does not keep anti-phase apart
        with pytest.raises(SilentAudio, match=r"channels are mixed to mono: they cancel out") as caught:
            decode_audio(encode(np.stack([left, -left]), SAMPLE_RATE, fmt))
        assert "A channel alone peaks at -6.0 dBFS" in str(caught.value)
    # Channels that are silent themselves get the plain message.
    with pytest.raises(SilentAudio, match=r"^The audio is silent: its loudest sample is digital silence"):
        decode_audio(encode(np.zeros((2, SAMPLE_RATE), np.float32), SAMPLE_RATE, "wav"))
    quiet = sine(amplitude=10 ** (-70 / 20))
    with pytest.raises(SilentAudio, match=r"^The audio is silent: its loudest sample is -\d"):
        decode_audio(encode(np.stack([quiet, -quiet]), SAMPLE_RATE, "wav"))


def test_too_long_from_the_header() -> None:
    with pytest.raises(AudioTooLong) as caught:
        decode_audio(fixture_bytes("sine", "mp3"), max_seconds=2)
    assert not caught.value.at_least and caught.value.actual_seconds == pytest.approx(3.0)
    assert "3.0 s long" in str(caught.value) and "limit is 2 s" in str(caught.value)
    # A header claiming 100 s on a 3 s file is refused on the header alone: decoding would find 3 s.
    claims_100s = flac_claiming(fixture_bytes("sine", "flac"), 100 * SAMPLE_RATE)
    with pytest.raises(AudioTooLong, match=r"100\.0 s long.*limit is 10 s"):
        decode_audio(claims_100s, max_seconds=10)
    with pytest.raises(AudioTooLong, match=r"3\.0 s long.*limit is 1 s"):
        decode_audio(fixture_bytes("sine", "wav"), max_seconds=1)


def test_probe_refuses_by_header_length() -> None:
    head = fixture_bytes("sine", "mp3")[:4096]
    with pytest.raises(AudioTooLong, match=r"3\.0 s long.*limit is 2 s"):
        probe(head, max_seconds=2)
    assert probe(head, max_seconds=3).duration_seconds == pytest.approx(3.0)


def test_probe_of_first_bytes_says_at_least_where_the_length_is_a_lower_bound() -> None:
    # 200 s of Opus at 6 kbit/s: its first 64 KiB hold well over a minute, but not all of it.
    opus = encode_audio(np.zeros(200 * SAMPLE_RATE, np.float32), SAMPLE_RATE, "ogg", 6_000)
    head = opus[: 64 * 1024]
    assert len(opus) > len(head)
    with pytest.raises(AudioTooLong) as caught:
        probe(head, max_seconds=60, prefix=True)
    assert caught.value.at_least and 60 < caught.value.actual_seconds < 200
    assert f"is at least {caught.value.actual_seconds:.1f} s long" in str(caught.value)
    # MP3 with LAME's Info tag (and FLAC) state their length up front: exact even from a prefix.
    with pytest.raises(AudioTooLong, match=r"The audio is 3\.0 s long.*limit is 2 s"):
        probe(fixture_bytes("sine", "mp3")[:4096], max_seconds=2, prefix=True)


def test_too_long_while_decoding_despite_a_lying_header() -> None:
    claims_1s = flac_claiming(fixture_bytes("sine", "flac"), SAMPLE_RATE)
    assert probe(claims_1s).duration_seconds == pytest.approx(1.0)
    with pytest.raises(AudioTooLong) as caught:
        decode_audio(claims_1s, max_seconds=2)
    # Decoding stops at the first frame past the limit (plus slack), long before the real 3 s.
    assert caught.value.at_least and 2.05 < caught.value.actual_seconds < 2.3
    assert f"at least {caught.value.actual_seconds:.1f} s long" in str(caught.value)
    assert "limit is 2 s" in str(caught.value)


def _matroska_pcm_claiming_one_second(seconds: float, rate: int = 4_000) -> bytes:
    """Raw 8-bit PCM in ONE Matroska block (one decoded frame of `seconds`), the Segment's Duration
    patched to 1 s: header and prefix checks pass, and a 24 MB file of this decoded to 7.6 GB."""
    samples = int(seconds * rate)
    tone = (np.sin(2 * np.pi * 440 * np.arange(samples) / rate) * 100 + 128).astype(np.uint8)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as container:
        stream = container.add_stream("pcm_u8", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(tone[None, :], format="u8", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    data = bytearray(buffer.getvalue())
    duration = data.find(b"\x44\x89")  # EBML id of Duration, in milliseconds
    size = {0x88: 8, 0x84: 4}[data[duration + 2]]
    data[duration + 3 : duration + 3 + size] = struct.pack(">d" if size == 8 else ">f", 1000.0)
    return bytes(data)


def test_one_huge_frame_is_refused_before_it_is_resampled(monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = _matroska_pcm_claiming_one_second(600.0)
    assert probe(bomb, max_seconds=60).duration_seconds == pytest.approx(1.0)
    resampled = 0
    real_resampler = av.AudioResampler

    class CountingResampler:
        def __init__(self, **kwargs: object) -> None:
            self._real = real_resampler(**kwargs)

        def resample(self, frame: av.AudioFrame | None) -> list[av.AudioFrame]:
            nonlocal resampled
            resampled += 0 if frame is None else frame.samples
            return self._real.resample(frame)

    monkeypatch.setattr(av, "AudioResampler", CountingResampler)
    with pytest.raises(AudioTooLong, match=r"at least 600\.0 s long, but the limit is 60 s") as caught:
        decode_audio(bomb, max_seconds=60)
    assert caught.value.at_least
    assert resampled == 0  # 600 s of floats at 44.1 kHz were never made


def test_a_playlist_naming_files_on_this_machine_is_not_audio(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FFmpeg's `concat` demuxer would read the files a text attachment names (relative to the bot's
    working directory): only audio demuxers may open a file."""
    (tmp_path / "secret.wav").write_bytes(fixture_bytes("sine", "wav"))
    monkeypatch.chdir(tmp_path)
    playlist = b"ffconcat version 1.0\nfile secret.wav\n"
    for read in (decode_audio, probe):
        with pytest.raises(NotAudio, match=r"This file is not audio \(it looks like a text file\)"):
            read(playlist)


@pytest.mark.parametrize("channels", [65, 512])
def test_more_channels_than_the_resampler_takes_are_refused_by_count(channels: int) -> None:
    pcm = np.zeros((SAMPLE_RATE // 10, channels), dtype="<i2").tobytes()
    data = wav_with_header(SAMPLE_RATE, pcm, channels=channels)
    message = f"This file has {channels} audio channels; I take at most 64. Mix it down"
    for read in (decode_audio, probe):
        with pytest.raises(UnsupportedAudio, match=message):
            read(data)


def test_a_codec_with_no_decoder_is_refused_as_such() -> None:
    data = wav_with_header(SAMPLE_RATE, b"\0" * 1000, bits_per_sample=0)  # no PCM codec has 0 bits
    for read in (decode_audio, probe):
        with pytest.raises(UnsupportedAudio, match="in a codec I cannot decode"):
            read(data)


def test_length_at_the_limit_passes() -> None:
    assert decode_audio(fixture_bytes("sine", "m4a"), max_seconds=3).size >= 3 * SAMPLE_RATE


def test_too_large_is_refused_before_decoding(tmp_path: Path) -> None:
    data = fixture_bytes("sine", "wav")
    with pytest.raises(AudioTooLarge, match=r"258\.4 KiB, larger than the 100\.0 KiB limit"):
        decode_audio(data, max_bytes=100 * 1024)
    path = tmp_path / "big.wav"
    path.write_bytes(data)
    with pytest.raises(AudioTooLarge, match=r"100\.0 KiB limit"):
        decode_audio(path, max_bytes=100 * 1024)
    with pytest.raises(AudioTooLarge):
        probe(path, max_bytes=1000)


def test_every_error_is_an_audio_error_with_a_user_message() -> None:
    for cls in (NotAudio, CorruptAudio, EmptyAudio, SilentAudio, AudioTooLong, AudioTooLarge, DoesNotFit):
        assert issubclass(cls, AudioError)
    error = AudioTooLong(60, 75.25)
    assert (
        error.user_message
        == str(error)
        == ("The audio is 75.2 s long, but the limit is 60 s. Trim it to at most 60 s and try again.")
    )


# ----------------------------------------------------------------------------------------- encoding


@pytest.mark.parametrize("fmt,mime_format", [("ogg", "ogg"), ("mp3", "mp3")])
def test_encode_round_trips(fmt: audio.OutputFormat, mime_format: str) -> None:
    data = encode_audio(sine(), SAMPLE_RATE, fmt, 96_000)
    info = probe(data)
    assert info.container == mime_format and info.channels == 1
    assert info.sample_rate == (48_000 if fmt == "ogg" else SAMPLE_RATE)  # Opus runs at 48 kHz
    decoded = decode_audio(data)
    assert abs(decoded.size - 3 * SAMPLE_RATE) <= 1
    assert peak_frequency(decoded, SAMPLE_RATE) == pytest.approx(440.0, abs=0.8)


def test_encode_to_fit_picks_the_highest_bitrate_that_fits() -> None:
    noise = white_noise(5.0)
    ladder = audio.FORMATS["ogg"].bitrates
    sizes = [len(encode_audio(noise, SAMPLE_RATE, "ogg", b)) for b in ladder]
    assert sizes == sorted(sizes, reverse=True)  # precondition: bigger bitrate, bigger file
    budget = (sizes[3] + sizes[2]) // 2  # fits ladder[3], not ladder[2]
    result = encode_to_fit(noise, SAMPLE_RATE, budget)
    assert (result.format, result.bitrate) == ("ogg", ladder[3])
    assert len(result.data) <= budget < len(encode_audio(noise, SAMPLE_RATE, "ogg", ladder[2]))
    assert (result.mime, result.extension, result.filename("take1")) == ("audio/ogg", "ogg", "take1.ogg")
    assert result.duration_seconds == pytest.approx(5.0)
    assert abs(decode_audio(result.data).size - noise.size) <= 1


def test_encode_to_fit_falls_back_to_the_next_format() -> None:
    noise = white_noise(4.0)
    ogg_size = len(encode_audio(noise, SAMPLE_RATE, "ogg", 192_000))
    mp3_size = len(encode_audio(noise, SAMPLE_RATE, "mp3", 64_000))
    assert mp3_size < ogg_size
    result = encode_to_fit(noise, SAMPLE_RATE, mp3_size, bitrates={"ogg": [192_000], "mp3": [64_000]})
    assert (result.format, result.bitrate, result.mime, result.extension) == (
        "mp3",
        64_000,
        "audio/mpeg",
        "mp3",
    )
    assert len(result.data) <= mp3_size


def test_does_not_fit_reports_the_smallest_size() -> None:
    noise = white_noise(5.0)
    smallest = min(
        len(encode_audio(noise, SAMPLE_RATE, fmt, min(audio.FORMATS[fmt].bitrates))) for fmt in ("ogg", "mp3")
    )
    with pytest.raises(DoesNotFit) as caught:
        encode_to_fit(noise, SAMPLE_RATE, 1024)
    assert caught.value.smallest_bytes == smallest > 1024
    assert "does not fit in 1.0 KiB" in str(caught.value)
    assert caught.value.smallest_bitrate == 32_000


def test_split_to_fit_covers_the_audio_in_fitting_parts() -> None:
    noise = white_noise(12.0)
    budget = 40_000  # 12 s at 64 kbit/s is ~96 kB: at least three parts
    parts = split_to_fit(noise, SAMPLE_RATE, budget, min_bitrate=64_000)
    assert len(parts) >= 3
    assert all(len(p.data) <= budget and p.bitrate >= 64_000 for p in parts)
    assert parts[0].start_seconds == 0.0
    for before, after in itertools.pairwise(parts):
        assert after.start_seconds == pytest.approx(before.start_seconds + before.duration_seconds)
    assert sum(p.duration_seconds for p in parts) == pytest.approx(12.0)
    decoded = np.concatenate([decode_audio(p.data) for p in parts])
    assert abs(decoded.size - noise.size) <= len(parts)
    # Fewest parts: one part fewer does not fit at the acceptable bitrate.
    fewer = np.array_split(noise, len(parts) - 1)
    with pytest.raises(DoesNotFit):
        for piece in fewer:
            encode_to_fit(piece, SAMPLE_RATE, budget, min_bitrate=64_000)


def test_split_to_fit_keeps_whole_audio_that_fits() -> None:
    parts = split_to_fit(sine(2.0), SAMPLE_RATE, 10 * 1024 * 1024)
    assert len(parts) == 1 and parts[0].bitrate == max(audio.FORMATS["ogg"].bitrates)


def test_split_to_fit_gives_up_past_max_parts() -> None:
    with pytest.raises(DoesNotFit):
        split_to_fit(white_noise(4.0), SAMPLE_RATE, 2000, min_bitrate=64_000, max_parts=3)


# ------------------------------------------------------------------------------------ array helpers


def test_int16_pcm_clamps_and_rounds() -> None:
    pcm = to_int16_pcm(np.array([-2.0, -1.0, 0.0, 0.25, 1.0, 2.0, np.nan], dtype=np.float32))
    assert pcm.dtype == np.int16
    assert pcm.tolist() == [-32767, -32767, 0, 8192, 32767, 32767, 0]


def test_wav_bytes_round_trip() -> None:
    tone = sine(0.5)
    data = wav_bytes(np.concatenate([tone, [1.5, -1.5]]), SAMPLE_RATE)
    with wave.open(io.BytesIO(data)) as reader:
        assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate()) == (1, 2, SAMPLE_RATE)
        frames = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
    assert frames[-2:].tolist() == [32767, -32767]
    np.testing.assert_allclose(decode_audio(data)[:-2], tone, atol=1 / 32767)
    stereo = wav_bytes(np.stack([tone, 0.5 * tone]), 22_050)
    assert probe(stereo).channels == 2 and probe(stereo).sample_rate == 22_050


def test_encode_clamps_and_names_bad_formats() -> None:
    loud = encode_audio(3.0 * sine(1.0, freq=880.0), SAMPLE_RATE, "mp3", 128_000)  # clips
    decoded = decode_audio(loud)
    assert peak_frequency(decoded, SAMPLE_RATE) == pytest.approx(880.0, abs=3)
    assert float(np.max(np.abs(decoded))) <= 1.0
    with pytest.raises(ValueError, match="Unknown output format"):
        encode_audio(sine(1.0), SAMPLE_RATE, "wma", 64_000)  # type: ignore[arg-type]
    with pytest.raises(EmptyAudio):
        encode_audio(np.zeros(0, np.float32), SAMPLE_RATE, "ogg", 64_000)
