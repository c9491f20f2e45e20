"""Test audio generated in code: signals, and those signals encoded in every format a user may attach.

No binary files are committed. Encoding deliberately avoids `sampler.audio` (the code under test):
WAV, FLAC, Ogg/Vorbis and MP3 go through libsndfile (soundfile), Ogg/Opus and M4A/AAC through
PyAV's encoders directly. Results are cached, so importing tests share one encode per variant.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import soundfile

SAMPLE_RATE = 44_100
FIXTURE_FORMATS = ("wav", "flac", "ogg_vorbis", "ogg_opus", "mp3", "m4a")
SIGNALS = ("sine", "noise", "clicks")
SINE_HZ = 440.0
SECONDS = 3.0
CLICK_BPM = 140
CLICK_BARS = 2
CLICK_LEAD_IN = 0.25  # silence before the first click, so codec edge effects cannot hide it


def sine(
    seconds: float = SECONDS, freq: float = SINE_HZ, sample_rate: int = SAMPLE_RATE, amplitude: float = 0.5
) -> np.ndarray:
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def white_noise(
    seconds: float = SECONDS, sample_rate: int = SAMPLE_RATE, amplitude: float = 0.3, seed: int = 0
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (amplitude * rng.uniform(-1.0, 1.0, round(seconds * sample_rate))).astype(np.float32)


@dataclass(frozen=True)
class ClickTrack:
    audio: np.ndarray
    onsets_seconds: tuple[float, ...]


def click_track(
    bpm: float = CLICK_BPM, bars: int = CLICK_BARS, beats_per_bar: int = 4, sample_rate: int = SAMPLE_RATE
) -> ClickTrack:
    """Short decaying 2 kHz clicks on every beat (downbeats louder), after a silent lead-in."""
    beat = 60.0 / bpm
    onsets = tuple(CLICK_LEAD_IN + i * beat for i in range(bars * beats_per_bar))
    total = round((onsets[-1] + beat) * sample_rate)
    audio = np.zeros(total, dtype=np.float32)
    click_t = np.arange(round(0.03 * sample_rate)) / sample_rate
    click = np.sin(2 * np.pi * 2000 * click_t) * np.exp(-click_t / 0.005)
    for i, onset in enumerate(onsets):
        start = round(onset * sample_rate)
        gain = 0.8 if i % beats_per_bar == 0 else 0.5
        audio[start : start + click.size] += (gain * click).astype(np.float32)
    return ClickTrack(audio, onsets)


def signal(name: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    if name == "sine":
        return sine(sample_rate=sample_rate)
    if name == "noise":
        return white_noise(sample_rate=sample_rate)
    if name == "clicks":
        return click_track(sample_rate=sample_rate).audio
    raise ValueError(f"unknown signal {name!r}; choose one of {SIGNALS}")


def _soundfile_bytes(audio: np.ndarray, sample_rate: int, fmt: str, subtype: str) -> bytes:
    frames = audio.T  # soundfile wants (frames, channels)
    buffer = io.BytesIO()
    with soundfile.SoundFile(buffer, "w", sample_rate, audio.shape[0], format=fmt, subtype=subtype) as out:
        # One big write of Ogg/Vorbis crashed the interpreter on this machine: write in blocks.
        for start in range(0, frames.shape[0], 8192):
            out.write(frames[start : start + 8192])
    return buffer.getvalue()


def _pyav_bytes(
    audio: np.ndarray, sample_rate: int, container_format: str, codec: str, codec_rate: int, bitrate: int
) -> bytes:
    layout = "mono" if audio.shape[0] == 1 else "stereo"
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as container:
        # FFmpeg's default AAC coder ("twoloop") overshoots to 1.5x on a stereo tone's abrupt start;
        # the "fast" coder keeps levels true, so decoded levels and the downmix can be checked.
        options = {"aac_coder": "fast"} if codec == "aac" else {}
        stream = container.add_stream(codec, rate=codec_rate, layout=layout, options=options)
        assert isinstance(stream, av.AudioStream)
        stream.bit_rate = bitrate
        for start in range(0, audio.shape[1], 8192):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(audio[:, start : start + 8192]), format="fltp", layout=layout
            )
            frame.sample_rate = sample_rate
            frame.pts = start
            frame.time_base = Fraction(1, sample_rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def encode(audio: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """Encode (samples,) mono or (channels, samples) audio into one of FIXTURE_FORMATS."""
    planar = np.asarray(audio, dtype=np.float32)
    if planar.ndim == 1:
        planar = planar[None, :]
    if fmt == "wav":
        return _soundfile_bytes(planar, sample_rate, "WAV", "PCM_16")
    if fmt == "flac":
        return _soundfile_bytes(planar, sample_rate, "FLAC", "PCM_16")
    if fmt == "ogg_vorbis":
        return _soundfile_bytes(planar, sample_rate, "OGG", "VORBIS")
    if fmt == "mp3":
        return _soundfile_bytes(planar, sample_rate, "MP3", "MPEG_LAYER_III")
    if fmt == "ogg_opus":
        return _pyav_bytes(planar, sample_rate, "ogg", "libopus", 48_000, 128_000)
    if fmt == "m4a":
        return _pyav_bytes(planar, sample_rate, "ipod", "aac", sample_rate, 160_000)
    raise ValueError(f"unknown fixture format {fmt!r}; choose one of {FIXTURE_FORMATS}")


@functools.cache
def fixture_bytes(signal_name: str, fmt: str, sample_rate: int = SAMPLE_RATE, channels: int = 1) -> bytes:
    """`signal_name` at `sample_rate` encoded as `fmt`; stereo has the signal on the left and half of it
    on the right, so an average downmix gives 0.75 x the signal. (In phase on purpose: lossy stereo
    coding such as AAC's intensity stereo does not keep anti-phase channels apart.)"""
    mono = signal(signal_name, sample_rate)
    if channels == 1:
        return encode(mono, sample_rate, fmt)
    if channels == 2:
        return encode(np.stack([mono, 0.5 * mono]), sample_rate, fmt)
    raise ValueError("fixtures are mono or stereo")


def joined_mp3_mono_then_stereo(sample_rate: int = 48_000, seconds: float = 1.0) -> bytes:
    """Two tag-less MP3 streams back to back, mono then stereo, as `cat a.mp3 b.mp3` makes: the
    decoder's channel layout changes midway."""
    tone = sine(seconds, sample_rate=sample_rate)
    parts = []
    for planar in (tone[None, :], np.stack([tone, tone])):
        layout = "mono" if planar.shape[0] == 1 else "stereo"
        buffer = io.BytesIO()
        with av.open(
            buffer, mode="w", format="mp3", options={"write_xing": "0", "id3v2_version": "0"}
        ) as container:
            stream = container.add_stream("libmp3lame", rate=sample_rate, layout=layout)
            assert isinstance(stream, av.AudioStream)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planar), format="fltp", layout=layout)
            frame.sample_rate = sample_rate
            frame.pts = 0
            container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        parts.append(buffer.getvalue())
    return b"".join(parts)


def wav_with_zero_frames(sample_rate: int = SAMPLE_RATE) -> bytes:
    return _soundfile_bytes(np.zeros((1, 0), dtype=np.float32), sample_rate, "WAV", "PCM_16")


def png_bytes(width: int = 4, height: int = 4) -> bytes:
    """A valid, tiny grey PNG image, built by hand."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = b"".join(b"\x00" + bytes([128] * width) for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def peak_frequency(audio: np.ndarray, sample_rate: int) -> float:
    """The strongest frequency of the middle of `audio` (edges skipped: codec fades and padding)."""
    middle = audio[audio.size // 6 : audio.size - audio.size // 6]
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(middle.size)))
    return float(np.argmax(spectrum) * sample_rate / middle.size)


def detect_onsets(
    audio: np.ndarray, sample_rate: int, threshold: float = 0.2, gap_seconds: float = 0.15
) -> list[float]:
    """Times where |audio| first crosses `threshold` after at least `gap_seconds` below it."""
    loud = np.flatnonzero(np.abs(audio) >= threshold)
    onsets: list[float] = []
    last = -(10**12)
    for index in loud.tolist():
        if index - last > gap_seconds * sample_rate:
            onsets.append(index / sample_rate)
        last = index
    return onsets


def multichannel(fmt: str, channels: int, seconds: float = 1.0) -> tuple[bytes, np.ndarray]:
    """A `channels`-channel WAV or FLAC (channel k carries the tone at (k + 1) / channels of full
    level) and the mono average a decoder must give. PyAV crashed reading planar frames of >= 8."""
    tone = sine(seconds)
    planar = np.stack([tone * (k + 1) / channels for k in range(channels)])
    container = {"wav": "WAV", "flac": "FLAC"}[fmt]
    return _soundfile_bytes(planar, SAMPLE_RATE, container, "PCM_16"), planar.mean(axis=0)


def wav_with_header(
    sample_rate: int,
    pcm: bytes,
    *,
    claimed_bytes: int | None = None,
    channels: int = 1,
    bits_per_sample: int = 16,
) -> bytes:
    """A PCM WAV (16-bit mono unless told) written by hand, so the header can lie: any sample rate,
    channel count or sample width, and a data chunk claiming `claimed_bytes` (e.g. hours) while
    holding only `pcm`."""
    size = len(pcm) if claimed_bytes is None else claimed_bytes
    block_align = channels * bits_per_sample // 8
    fmt = struct.pack(
        "<HHIIHH",
        1,
        channels,
        sample_rate,
        (sample_rate * block_align) & 0xFFFFFFFF,
        block_align,
        bits_per_sample,
    )
    riff = struct.pack("<I", (36 + size) & 0xFFFFFFFF)
    return (
        b"RIFF" + riff + b"WAVEfmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", size) + pcm
    )
