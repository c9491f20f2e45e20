"""Audio in and out: decode what users attach, encode what the sampler makes, under Discord's limits.

Everything goes through PyAV (FFmpeg's libraries ship inside the wheel), so any common format a
user may attach decodes the same way, with resampling done in the same pass. Jukebox works on
44.1 kHz mono float32 in [-1, 1]; that is what `decode_audio` returns and what the encoders take.

Every bad input raises a subclass of `AudioError` whose `str()` is a sentence a user can act on.
This module imports no torch: the bot uses `probe` to reject a bad attachment early.
"""

from __future__ import annotations

import codecs
import io
import itertools
import math
import os
import wave
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Literal

import av
import av.error
import numpy as np

from sampler.jukebox.registry import SAMPLE_RATE
from sampler.units import format_bytes_apart, format_bytes_pair, whole_number

DEFAULT_MAX_BYTES = 25 * 1024 * 1024
DEFAULT_MAX_SECONDS = 60.0
DEFAULT_SILENCE_DB = -60.0
# How much longer than the limit a clip may decode: a lossless one, a sample or two of rounding. Lossy
# encoders add a delay and pad to whole frames, so a clip cut at exactly the limit comes back longer,
# which should not be refused: up to 1105 samples of delay plus a frame for LAME's MP3, 1024 of
# priming plus a frame for AAC, under `PADDED_FRAMES` frames in all (0.19 s for an MP3 at 8 kHz).
LENGTH_SLACK_SECONDS = 0.05
PADDED_FRAMES = 3
PADDED_CODECS = frozenset({"mp3", "mp3float", "mp2", "mp2float", "aac", "aac_fixed", "opus", "libopus"})
MAX_LENGTH_SLACK_SECONDS = 0.5  # whatever frame size a header states
# How much shorter than its header says a stream may decode before we call it truncated: two codec frames.
TRUNCATION_SLACK_SECONDS = 0.1
# A decoded clip peaking over this (+6 dBFS: float PCM, far past the overshoot of a full-scale clip
# resampled) is scaled down to full scale rather than clipped.
SCALED_DOWN_ABOVE_PEAK = 2.0

# Packets the decoder may refuse before a file is called damaged: some (an ID3 tag between joined
# MP3s), and no more than a small share of those that decode.
BAD_PACKETS_ALLOWED = 4
BAD_PACKET_SHARE = 0.02

# Sample rates real recordings use; a header outside them is damaged or crafted (2**31 - 1 Hz made the
# resampler try to allocate gigabytes).
MIN_SOURCE_RATE, MAX_SOURCE_RATE = 4_000, 768_000
# FFmpeg's resampler takes at most this many channels (SWR_CH_MAX); more is refused by name.
MAX_SOURCE_CHANNELS = 64
# The demuxers (FFmpeg's names) a file may be opened with. Left to itself FFmpeg tries every demuxer it
# has, and some read other files: `concat` turned a 50-byte text attachment into the audio of a file on
# the bot's disk. `mov` reads MP4/M4A, `matroska` WebM, `asf` WMA.
AUDIO_DEMUXERS = "wav,w64,aiff,flac,ogg,mp3,aac,mov,matroska,caf,au,ape,wv,amr,asf,tta"

AudioSource = bytes | bytearray | memoryview | str | os.PathLike[str]
OutputFormat = Literal["ogg", "mp3"]


# --------------------------------------------------------------------------------------------------
# Errors


class AudioError(Exception):
    """Base of every problem with a user's audio; `str()` is a message fit to show the user."""

    @property
    def user_message(self) -> str:
        return str(self)

    @classmethod
    def from_message(cls, message: str) -> AudioError:
        """The error rebuilt from its message alone (it crossed a process boundary); the extra fields
        some subclasses carry are not restored."""
        error = cls.__new__(cls)
        Exception.__init__(error, message)
        return error


class NotAudio(AudioError):
    """The bytes are not an audio file at all (an image, a text, a document...)."""


class CorruptAudio(AudioError):
    """The file claims to be audio but is truncated or garbled."""


class ImpossibleSampleRate(CorruptAudio):
    """The header states a sample rate no recording uses (crafted or damaged)."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        super().__init__(
            f"The file says its sample rate is {sample_rate:,} Hz, which no audio uses "
            f"({MIN_SOURCE_RATE:,} to {MAX_SOURCE_RATE:,} Hz are accepted): the file is damaged. "
            "Export it again and re-attach it."
        )


class UnsupportedAudio(AudioError):
    """Real audio in a shape the decoder cannot take (no decoder for its codec, too many channels)."""


class EmptyAudio(AudioError):
    """The file is valid audio with zero samples."""


class SilentAudio(AudioError):
    """Every sample is below the silence threshold. `channel_peak_db`, when given, is the loudest
    sample of any one channel: louder than the threshold, the channels cancel out in the mono mix."""

    def __init__(self, peak_db: float, threshold_db: float, *, channel_peak_db: float | None = None) -> None:
        self.peak_db = peak_db
        self.threshold_db = threshold_db
        self.channel_peak_db = channel_peak_db
        if channel_peak_db is not None and channel_peak_db >= threshold_db:
            message = (
                "The audio is silent once its channels are mixed to mono: they cancel out (one is the "
                f"other phase-inverted). A channel alone peaks at {_format_db(channel_peak_db)}, the mix "
                f"at {_format_db(peak_db)}, below the {threshold_db:g} dBFS threshold. Invert the "
                "polarity of one channel, or export one channel alone, and attach it again."
            )
        else:
            message = (
                f"The audio is silent: its loudest sample is {_format_db(peak_db)}, below the "
                f"{threshold_db:g} dBFS threshold. Attach a clip with audible sound."
            )
        super().__init__(message)


class AudioTooLong(AudioError):
    """Longer than allowed; `actual_seconds` is a lower bound when `at_least` is set."""

    def __init__(self, limit_seconds: float, actual_seconds: float, *, at_least: bool = False) -> None:
        self.limit_seconds = limit_seconds
        self.actual_seconds = actual_seconds
        self.at_least = at_least
        length = f"at least {actual_seconds:.1f} s long" if at_least else f"{actual_seconds:.1f} s long"
        super().__init__(
            f"The audio is {length}, but the limit is {limit_seconds:g} s. "
            f"Trim it to at most {limit_seconds:g} s and try again."
        )


class AudioTooLarge(AudioError):
    """More bytes than allowed, refused before decoding."""

    def __init__(self, limit_bytes: int, actual_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.actual_bytes = actual_bytes
        size, limit = format_bytes_apart(actual_bytes, limit_bytes)
        super().__init__(
            f"The file is {size}, larger than the {limit} limit. "
            "Attach a shorter clip or a compressed format (OGG, MP3, M4A)."
        )


class DoesNotFit(AudioError):
    """No format and bitrate tried brings the audio under the byte budget."""

    def __init__(
        self, max_bytes: int, smallest_bytes: int, smallest_format: str, smallest_bitrate: int
    ) -> None:
        self.max_bytes = max_bytes
        self.smallest_bytes = smallest_bytes
        self.smallest_format = smallest_format
        self.smallest_bitrate = smallest_bitrate
        budget, smallest = format_bytes_pair(max_bytes, smallest_bytes)
        super().__init__(
            f"The audio does not fit in {budget}: the smallest encoding "
            f"({smallest_format} at {smallest_bitrate // 1000} kbit/s) is {smallest}."
        )


class EncoderUnavailable(AudioError):
    """This PyAV/FFmpeg build lacks the encoder a format needs."""


def _dbfs(peak: float) -> float:
    return 20 * math.log10(peak) if peak > 0 else -math.inf


def _format_db(db: float) -> str:
    return "digital silence (-inf dBFS)" if math.isinf(db) else f"{db:.1f} dBFS"


# --------------------------------------------------------------------------------------------------
# Sniffing: what do the first bytes say the file is?

# Display names of the audio containers `_sniff_audio` recognises: one that fails to open is corrupt.
_AUDIO_NAMES = {
    "wav": "WAV",
    "aiff": "AIFF",
    "flac": "FLAC",
    "ogg": "Ogg",
    "mp3": "MP3",
    "aac": "AAC",
    "mp4": "MP4/M4A",
    "matroska": "Matroska/WebM",
    "caf": "CAF",
    "au": "AU",
    "ape": "Monkey's Audio",
    "wavpack": "WavPack",
    "amr": "AMR",
    "asf": "WMA",
    "w64": "Wave64",
    "tta": "TTA",
}
SNIFF_BYTES = 256  # what the sniffers read: an MPEG transport stream shows itself at byte 188
# QuickTime files may start with any of these atoms rather than `ftyp` (older .mov, a `moov` at the end).
_QUICKTIME_ATOMS = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")
_ASF_GUID = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")
_W64_RIFF_GUID = b"riff" + bytes.fromhex("2e91cf11a5d628db04c10000")
TEXT_FILE = "a text file"  # what `_sniff_other` calls one
# Byte-order marks of text files, and the encoding each announces.
_TEXT_BOMS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))


def _sniff_audio(head: bytes) -> str | None:
    """Name of the audio container the first bytes announce, or None."""
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:3] == b"ID3":
        return "mp3"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) and _is_text(head):
        return None  # UTF-16 text: its byte-order mark reads as an MPEG frame sync
    if len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xF6) == 0xF0:
        return "aac"  # ADTS sync word, layer bits 00
    if len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0 and (head[1] & 0x06) != 0:
        return "mp3"  # MPEG audio frame sync with a valid layer
    if head[4:8] == b"ftyp" or (head[4:8] in _QUICKTIME_ATOMS and not _is_text(head)):
        return "mp4"  # (lyrics may begin "I'm free": bytes 4 to 8 of a text spell an atom now and then)
    if head[:16] == _ASF_GUID:
        return "asf"
    if head[:16] == _W64_RIFF_GUID:
        return "w64"
    if head[:4] == b"TTA1":
        return "tta"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if head[:4] == b"caff":
        return "caf"
    if head[:4] == b".snd":
        return "au"
    if head[:4] == b"MAC ":
        return "ape"
    if head[:4] == b"wvpk":
        return "wavpack"
    if head[:5] == b"#!AMR":
        return "amr"
    return None


def _is_text(head: bytes) -> bool:
    return _sniff_other(head) == TEXT_FILE


def _sniff_other(head: bytes) -> str | None:
    """What a non-audio file looks like, for a friendlier message."""
    signatures = [
        (b"\x89PNG\r\n\x1a\n", "a PNG image"),
        (b"\xff\xd8\xff", "a JPEG image"),
        (b"GIF87a", "a GIF image"),
        (b"GIF89a", "a GIF image"),
        (b"%PDF", "a PDF document"),
        (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
        (b"\x7fELF", "a program"),
        (b"MZ", "a Windows program"),
        (b"\x1f\x8b", "a gzip archive"),
    ]
    for magic, name in signatures:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    # Sound in a container or codec not taken (`AUDIO_DEMUXERS`): named, so that its sound is exported.
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "an AVI video"
    if head[:4] == b"FLV\x01":
        return "a Flash video"
    if head[:4] == b"\x00\x00\x01\xba":
        return "an MPEG video"
    if head[:4] == b"MThd":
        return "a MIDI file (notes, not recorded sound)"
    encoding = "utf-8"
    for bom, announced in _TEXT_BOMS:
        if head.startswith(bom):
            head, encoding = head[len(bom) :], announced
            break
    try:  # the first bytes may end inside a character: not final
        text = codecs.getincrementaldecoder(encoding)().decode(head, final=False)
    except UnicodeDecodeError:
        return _sniff_transport_stream(head)
    if text and all(ch.isprintable() or ch in "\r\n\t" for ch in text):
        return TEXT_FILE
    return _sniff_transport_stream(head)


def _sniff_transport_stream(head: bytes) -> str | None:
    """An MPEG transport stream: a sync byte (0x47, "G") every 188 bytes; read after the text check."""
    if len(head) > 188 and head[0] == head[188] == 0x47:
        return "an MPEG transport stream (a video)"
    return None


_ACCEPTED_FORMATS = "WAV, FLAC, OGG (Vorbis or Opus), MP3 or M4A/AAC"


def _not_audio(head: bytes, detail: str = "") -> NotAudio:
    looks_like = _sniff_other(head)
    what = f" (it looks like {looks_like})" if looks_like else ""
    extra = f" {detail}" if detail else ""
    return NotAudio(f"This file is not audio{what}.{extra} Attach a {_ACCEPTED_FORMATS} file.")


# --------------------------------------------------------------------------------------------------
# Probing and decoding


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says; `duration_seconds` is None where the header does not tell, and only
    FFmpeg's guess for an ADTS AAC or an MP3 without a Xing/Info/VBRI frame (see `probe`)."""

    duration_seconds: float | None
    sample_rate: int
    channels: int
    codec: str
    container: str


@contextmanager
def _opened_source(source: AudioSource, max_bytes: int | None) -> Iterator[BinaryIO]:
    """`source` as a seekable binary file, refusing an oversized one before reading it. A path is read
    as decoding goes, never whole: a prompt taken from the start of an hour-long WAV reads megabytes."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if max_bytes is not None and len(data) > max_bytes:
            raise AudioTooLarge(max_bytes, len(data))
        yield io.BytesIO(data)
        return
    path = Path(source)
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise AudioTooLarge(max_bytes, size)
    with path.open("rb") as file:
        yield file


@contextmanager
def _place_kept(file: BinaryIO) -> Iterator[None]:
    """Inside, `file` may be moved about: it is put back where it was, as FFmpeg may be reading it."""
    was = file.tell()
    try:
        yield
    finally:
        file.seek(was)


def _size(file: BinaryIO) -> int:
    with _place_kept(file):
        return file.seek(0, io.SEEK_END)


def _read_at(file: BinaryIO, offset: int, n: int) -> bytes:
    """Up to `n` bytes at `offset`, leaving the file where it was."""
    with _place_kept(file):
        file.seek(offset)
        return file.read(n)


def _container_name(container: av.container.InputContainer) -> str:
    names = container.format.name.split(",")
    return "mp4" if "mp4" in names else names[0]


def _header_duration(container: av.container.InputContainer, stream: av.AudioStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


def _open(file: BinaryIO) -> tuple[av.container.InputContainer, av.AudioStream]:
    """Open `file` and pick its first audio stream, classifying failures as NotAudio/CorruptAudio."""
    head = _read_at(file, 0, SNIFF_BYTES)
    if not head:
        raise EmptyAudio("The file is empty (0 bytes). Attach an audio file.")
    sniffed = _sniff_audio(head)
    file.seek(0)
    try:
        container = av.open(file, mode="r", options={"format_whitelist": AUDIO_DEMUXERS})
    except (av.error.FFmpegError, ValueError) as exc:
        if sniffed is not None:
            raise CorruptAudio(
                f"This {_AUDIO_NAMES[sniffed]} file could not be read: it is damaged or truncated. "
                "Export it again and re-attach it."
            ) from exc
        raise _not_audio(head) from exc
    if not container.streams.audio:
        kinds = sorted({s.type for s in container.streams})
        container.close()
        detail = f"It contains only {', '.join(kinds)} data, no sound." if kinds else "It contains no sound."
        raise _not_audio(head, detail)
    stream = container.streams.audio[0]
    try:
        if stream.codec_context is None:  # FFmpeg knows the container but has no decoder for the codec
            raise UnsupportedAudio(
                f"This file's sound is in a codec I cannot decode. Convert it to {_ACCEPTED_FORMATS} and "
                "attach it again."
            )
        _check_sample_rate(int(stream.codec_context.sample_rate or 0))
        _check_channels(int(stream.codec_context.channels or 0))
    except AudioError:
        container.close()
        raise
    return container, stream


def _check_channels(channels: int) -> None:
    if channels > MAX_SOURCE_CHANNELS:
        raise UnsupportedAudio(
            f"This file has {channels} audio channels; I take at most {MAX_SOURCE_CHANNELS}. Mix it down "
            "to mono or stereo and attach it again."
        )


def _check_sample_rate(sample_rate: int) -> None:
    """Refuse a stated rate outside real audio's; 0 means the header does not say (decoding tells)."""
    if sample_rate and not MIN_SOURCE_RATE <= sample_rate <= MAX_SOURCE_RATE:
        raise ImpossibleSampleRate(sample_rate)


def probe(
    source: AudioSource,
    *,
    max_bytes: int | None = None,
    max_seconds: float | None = None,
    prefix: bool = False,
) -> AudioInfo:
    """Read only the header of `source` (bytes or a path): duration, rate, channels, codec, container.

    Raises NotAudio/CorruptAudio/EmptyAudio for what cannot be opened, AudioTooLarge past
    `max_bytes`, and AudioTooLong when the header's duration exceeds `max_seconds`.
    Works on the first bytes of a file for most formats, so the bot can refuse an attachment before
    downloading it all; on such a prefix the duration of WAV and Ogg is a lower bound (FFmpeg derives
    it from the bytes present), and a prefix that cuts a header reads as CorruptAudio.
    `prefix=True` says `source` is such a prefix, so AudioTooLong gives that length as "at least".
    An ADTS AAC or an MP3 without a Xing/Info/VBRI frame states no length: the duration reported is
    FFmpeg's guess from the bytes present and the first frames' bitrate, off either way (a VBR MP3
    with a quiet start reads as minutes), so it refuses nothing; `decode_audio` judges such a file.
    """
    with _opened_source(source, max_bytes) as file:
        container, stream = _open(file)
        with container:
            info = AudioInfo(
                duration_seconds=_header_duration(container, stream),
                sample_rate=int(stream.codec_context.sample_rate or 0),
                channels=int(stream.codec_context.channels or 0),
                codec=stream.codec_context.codec.canonical_name,
                container=_container_name(container),
            )
            slack = _length_slack(stream)
        guess = _header_duration_is_guess(info.container, file)
        at_least = prefix and not _header_duration_is_exact(info.container, file)
    if not guess:
        _check_header_length(info.duration_seconds, max_seconds, slack, at_least=at_least)
    return info


def _length_slack(stream: av.AudioStream) -> float:
    """Seconds past the limit `stream` may decode to and still count as cut at the limit."""
    context = stream.codec_context
    frame_size, rate = int(context.frame_size or 0), int(context.sample_rate or 0)
    if context.name not in PADDED_CODECS or frame_size <= 0 or rate <= 0:
        return LENGTH_SLACK_SECONDS
    return min(MAX_LENGTH_SLACK_SECONDS, max(LENGTH_SLACK_SECONDS, PADDED_FRAMES * frame_size / rate))


def _check_header_length(
    header_seconds: float | None, max_seconds: float | None, slack: float, *, at_least: bool = False
) -> None:
    if max_seconds is not None and header_seconds is not None:
        if header_seconds > max_seconds + slack:
            raise AudioTooLong(max_seconds, header_seconds, at_least=at_least)


def _header_duration_is_exact(container_name: str, file: BinaryIO) -> bool:
    """Whether the header states the length outright (so decoding much less means truncation)."""
    if container_name in ("flac", "mp4"):
        return True
    if container_name == "mp3":
        # A Xing/Info/VBRI frame states the frame count; without one FFmpeg guesses from the file size.
        start = 0
        id3 = _read_at(file, 0, 10)
        if id3[:3] == b"ID3" and len(id3) == 10:
            start = 10 + ((id3[6] << 21) | (id3[7] << 14) | (id3[8] << 7) | id3[9])
        first_frame = _read_at(file, start, 200)
        return any(tag in first_frame for tag in (b"Xing", b"Info", b"VBRI"))
    return False


def _header_duration_is_guess(container_name: str, file: BinaryIO) -> bool:
    """Whether FFmpeg made the duration up from the first frame's bitrate and the file's size: an ADTS
    stream, an MP3 without a Xing/Info/VBRI frame (VBR, or MP3s joined at different bitrates)."""
    return container_name == "aac" or (
        container_name == "mp3" and not _header_duration_is_exact(container_name, file)
    )


def _ogg_is_truncated(file: BinaryIO) -> bool:
    """True when the last Ogg page runs past the end of the file (a cut download, a partial copy)."""
    size, offset = _size(file), 0
    while offset + 27 <= size:
        header = _read_at(file, offset, 27)
        if header[:4] != b"OggS":
            break
        n_segments = header[26]
        table_end = offset + 27 + n_segments
        if table_end > size:
            return True
        offset = table_end + sum(_read_at(file, offset + 27, n_segments))
        if offset > size:
            return True
    rest = _read_at(file, offset, 4)
    return 0 < size - offset < 27 and rest in (b"OggS", b"Ogg", b"Og", b"O")


def _frames(
    container: av.container.InputContainer, stream: av.AudioStream
) -> Generator[av.AudioFrame, None, None]:
    """The decoded frames of `stream`. A packet the decoder refuses is skipped while few are: MP3s
    joined with `cat` carry an ID3 tag midway, which the demuxer hands over as a packet. A file where
    more fail (past `BAD_PACKETS_ALLOWED` and a `BAD_PACKET_SHARE` of those decoded), or where
    nothing but failures comes, is damaged."""
    damaged = "The audio stream is damaged and could not be decoded. Export the file again and re-attach it."
    good = bad = n_frames = 0
    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError as exc:
                bad += 1
                if bad > max(BAD_PACKETS_ALLOWED, BAD_PACKET_SHARE * good):
                    raise CorruptAudio(damaged) from exc
                continue
            good += 1
            n_frames += len(frames)
            yield from frames
    except av.error.FFmpegError as exc:
        raise CorruptAudio(damaged) from exc
    if bad and not n_frames:
        raise CorruptAudio(damaged)


def decode_audio(
    source: AudioSource,
    *,
    sample_rate: int = SAMPLE_RATE,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    silence_threshold_db: float | None = DEFAULT_SILENCE_DB,
    first_seconds: float | None = None,
    silence_of_whole_file: bool = False,
) -> np.ndarray:
    """Decode any common audio file to mono float32 at `sample_rate`, in [-1, 1].

    Limits are checked as early as possible: bytes before opening, the header's duration before
    decoding, and the decoded length while decoding (a lying header cannot make us decode forever).
    Channels are averaged. `silence_threshold_db=None` accepts silent audio. A NaN or infinite
    sample makes the file CorruptAudio.

    `first_seconds` decodes only the start: decoding stops once that much is decoded, and the audio
    returned is its first `ceil(first_seconds * sample_rate)` samples (all of them, when the file is
    shorter), the same samples a whole decode begins with. The rest of the file is not decoded, so
    it is not checked either: the silence threshold applies to the start returned, and a file cut
    short after it is not called truncated. With `silence_of_whole_file` a silent start is returned
    when the file has sound later: the rest is decoded (not kept) until some sound is found.
    """
    if first_seconds is not None and not (math.isfinite(first_seconds) and first_seconds > 0):
        raise ValueError(f"first_seconds must be a positive number of seconds, got {first_seconds!r}")
    wanted = None if first_seconds is None else math.ceil(first_seconds * sample_rate)
    with _opened_source(source, max_bytes) as file:
        return _decode(
            file,
            sample_rate=sample_rate,
            max_seconds=max_seconds,
            silence_threshold_db=silence_threshold_db,
            wanted=wanted,
            silence_of_whole_file=silence_of_whole_file,
        )


def _decode(
    file: BinaryIO,
    *,
    sample_rate: int,
    max_seconds: float | None,
    silence_threshold_db: float | None,
    wanted: int | None,
    silence_of_whole_file: bool,
) -> np.ndarray:
    """`decode_audio` on an open file; `wanted` is the number of samples asked for (None: all)."""
    container, stream = _open(file)
    with container:
        container_name = _container_name(container)
        header_seconds = _header_duration(container, stream)
        slack = _length_slack(stream)
        limit = None if max_seconds is None else max_seconds + slack
        if not _header_duration_is_guess(container_name, file):
            # A guess may be far off either way (a VBR MP3 read at its first frame's bitrate): such a
            # file is judged by what decodes, which stops once past the limit.
            _check_header_length(header_seconds, max_seconds, slack)
        if container_name == "ogg" and _ogg_is_truncated(file):
            raise CorruptAudio(
                "This Ogg file is truncated: its last page is cut off. Export it again and re-attach it."
            )

        # Packed float keeps the source layout; we average channels ourselves (a plain mean, unlike
        # FFmpeg's centre-weighted downmix) after resampling every channel in the same pass. Not planar
        # `fltp`: PyAV (14 to 18) segfaults reading a planar frame of 8 or more channels.
        resampler = av.AudioResampler(format="flt", rate=sample_rate)
        max_samples = None if limit is None else math.ceil(limit * sample_rate)
        chunks: list[np.ndarray] = []
        n_samples = 0
        channel_peak = 0.0  # of any one channel: a mix whose channels cancel out is told apart from silence
        peak = 0.0  # of the mix, over all that was decoded (kept or not)

        def take(frames: list[av.AudioFrame]) -> None:
            nonlocal n_samples, channel_peak, peak
            for out in frames:
                interleaved = out.to_ndarray().reshape(-1, len(out.layout.channels))  # (samples, channels)
                with np.errstate(invalid="ignore", over="ignore"):  # non-finite input is refused below
                    mono = interleaved.mean(axis=1, dtype=np.float32)
                # Float PCM can hold NaN/inf (a broken plugin or export): the clip would pass as silent
                # (NaN compares false) or as full scale (inf), and resampling smears either over its
                # neighbours. No sound is to be made of it, so the file is refused.
                finite = np.isfinite(mono)
                if not finite.all():
                    at = (n_samples + int(np.argmin(finite))) / sample_rate
                    raise CorruptAudio(
                        f"The file holds invalid samples (NaN or infinite values), the first at {at:.2f} s: "
                        "the file is damaged. Export it again and re-attach it."
                    )
                if silence_threshold_db is not None and interleaved.shape[1] > 1 and interleaved.size:
                    channel_peak = max(channel_peak, float(np.max(np.abs(interleaved))))
                if mono.size:
                    peak = max(peak, float(np.max(np.abs(mono))))
                if wanted is None or n_samples < wanted:  # past the start asked for, only its peak counts
                    chunks.append(np.asarray(mono, dtype=np.float32))
                n_samples += mono.shape[0]
            if max_samples is not None and max_seconds is not None and n_samples > max_samples:
                raise AudioTooLong(max_seconds, n_samples / sample_rate, at_least=True)

        def resample(frame: av.AudioFrame | None) -> list[av.AudioFrame]:
            try:
                return resampler.resample(frame)
            except av.error.FFmpegError as exc:
                raise CorruptAudio(
                    "The audio stream could not be converted (its channel layout or sample format is "
                    "damaged). Export the file again and re-attach it."
                ) from exc

        def silent(peak: float) -> bool:
            return silence_threshold_db is not None and _dbfs(min(peak, 1.0)) < silence_threshold_db

        input_shape: tuple[str, str, int] | None = None
        frames = _frames(container, stream)
        for frame in frames:
            shape = (frame.format.name, frame.layout.name, frame.sample_rate)
            if shape != input_shape:
                # A stream may change layout or rate midway (joined MP3s, radio rips); a resampler
                # serves one input shape, so flush it and start another.
                if input_shape is not None:
                    take(resample(None))
                    resampler = av.AudioResampler(format="flt", rate=sample_rate)
                _check_sample_rate(frame.sample_rate)
                _check_channels(len(frame.layout.channels))
                input_shape = shape
            if max_samples is not None and max_seconds is not None:
                # Refused before it is resampled: one frame may hold minutes (a Matroska block of raw
                # PCM whose header says 1 s), which resampled to float would take gigabytes.
                coming = math.ceil(frame.samples * sample_rate / max(frame.sample_rate, 1))
                if n_samples + coming > max_samples:
                    raise AudioTooLong(max_seconds, (n_samples + coming) / sample_rate, at_least=True)
            frame.pts = None  # the resampler only needs samples; broken timestamps must not stop it
            take(resample(frame))
            if wanted is not None and n_samples >= wanted and not (silence_of_whole_file and silent(peak)):
                break  # the start asked for is there: what a flush would add lies past it
        else:
            take(resample(None))
        frames.close()

    if n_samples == 0:
        if header_seconds is not None and header_seconds > TRUNCATION_SLACK_SECONDS:
            raise CorruptAudio(
                f"The file's header announces {header_seconds:.1f} s of audio but none of it could be "
                "decoded: the file is damaged. Export it again and re-attach it."
            )
        raise EmptyAudio("The audio file contains no samples (0 s of sound). Attach a clip with sound in it.")
    decoded_seconds = n_samples / sample_rate
    if (
        (wanted is None or n_samples < wanted)  # stopped at the start asked for: the rest is unread
        and header_seconds is not None
        and _header_duration_is_exact(container_name, file)
        and decoded_seconds < header_seconds - max(TRUNCATION_SLACK_SECONDS, 0.02 * header_seconds)
    ):
        raise CorruptAudio(
            f"The file is truncated: its header announces {header_seconds:.1f} s but only "
            f"{decoded_seconds:.1f} s could be decoded. Export it again and re-attach it."
        )

    audio = np.concatenate(chunks)[:wanted]
    kept_peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if kept_peak > SCALED_DOWN_ABOVE_PEAK:
        # Float PCM far past full scale: a float mix exported without a limiter, or integer sample values
        # written as floats. Clipped, it would be a square wave; scaled down it sounds as it was meant to.
        audio = audio * np.float32(1.0 / kept_peak)
        peak, channel_peak = peak / kept_peak, channel_peak / kept_peak
    # A resampled full-scale clip overshoots a little (and so may a float one): clipped.
    audio = np.clip(audio, -1.0, 1.0)
    if silence_threshold_db is not None:
        peak_db = _dbfs(min(peak, 1.0) if silence_of_whole_file else float(np.max(np.abs(audio))))
        if peak_db < silence_threshold_db:
            raise SilentAudio(peak_db, silence_threshold_db, channel_peak_db=_dbfs(min(channel_peak, 1.0)))
    return audio


# --------------------------------------------------------------------------------------------------
# Encoding


@dataclass(frozen=True)
class _FormatSpec:
    container: str
    codec: str
    sample_rate: int
    mime: str
    extension: str
    bitrates: tuple[int, ...]  # highest first


FORMATS: dict[str, _FormatSpec] = {
    # Opus only runs at 48 kHz (and a few lower rates); we resample inside.
    "ogg": _FormatSpec(
        "ogg",
        "libopus",
        48_000,
        "audio/ogg",
        "ogg",
        (192_000, 160_000, 128_000, 96_000, 64_000, 48_000, 32_000),
    ),
    "mp3": _FormatSpec(
        "mp3",
        "libmp3lame",
        SAMPLE_RATE,
        "audio/mpeg",
        "mp3",
        (320_000, 256_000, 192_000, 160_000, 128_000, 96_000, 64_000, 48_000, 32_000),
    ),
}


@dataclass(frozen=True)
class EncodedAudio:
    """Compressed audio ready to upload; `extension` has no dot. `start_seconds` locates a split part."""

    data: bytes
    format: str
    bitrate: int
    mime: str
    extension: str
    duration_seconds: float
    start_seconds: float = 0.0

    def filename(self, stem: str) -> str:
        return f"{stem}.{self.extension}"


def _format_spec(fmt: str) -> _FormatSpec:
    spec = FORMATS.get(fmt) if isinstance(fmt, str) else None
    if spec is None:
        raise ValueError(f"Unknown output format {fmt!r}; choose one of {sorted(FORMATS)}")
    if spec.codec not in av.codecs_available:
        raise EncoderUnavailable(
            f"This installation cannot encode {fmt}: FFmpeg lacks the {spec.codec} encoder."
        )
    return spec


# The bitrates (bit/s) each encoder opens with, for mono: others fail deep in FFmpeg.
BITRATE_RANGES: dict[str, tuple[int, int]] = {"ogg": (500, 256_000), "mp3": (8_000, 320_000)}
SAMPLE_RATE_RANGE = (8_000, 384_000)  # Hz: what encode_audio takes (it resamples to the codec's rate)
# The encoders turn a few samples into an empty file (Opus below about half a millisecond, MP3 when
# resampled): shorter audio is padded with silence to one 20 ms Opus frame.
MIN_ENCODED_SECONDS = 0.02


def _as_mono(audio: np.ndarray) -> np.ndarray:
    """Mono float32 samples in [-1, 1]: float audio clipped (NaN as silence), signed integer PCM
    (int16, int32…) scaled by its dtype's full scale; ValueError for other shapes and dtypes."""
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio of shape (samples,), got shape {audio.shape}")
    if audio.dtype.kind == "i":  # integer PCM: full scale is the dtype's range (int16: 32768)
        audio = audio.astype(np.float32) / np.float32(-np.iinfo(audio.dtype).min)
    elif audio.dtype.kind != "f":
        raise ValueError(
            f"audio must be float samples in [-1, 1] or signed integer PCM, got dtype {audio.dtype}"
        )
    # NaN/inf would make the encoder emit garbage; clamp to the legal range.
    return np.clip(np.nan_to_num(audio.astype(np.float32, copy=False)), -1.0, 1.0)


def _whole_in(value: object, name: str, low: int, high: int, unit: str) -> int:
    number = whole_number(value)
    if number is not None and low <= number <= high:
        return number
    raise ValueError(f"{name} must be a whole number of {unit} from {low} to {high}, got {value!r}")


def encode_audio(audio: np.ndarray, sample_rate: int, fmt: OutputFormat, bitrate: int) -> bytes:
    """Encode mono audio (samples,) at `sample_rate` Hz to `fmt` ("ogg" = Opus in Ogg, "mp3") at
    `bitrate` bit/s. Float audio is clipped to [-1, 1]; signed integer PCM (int16…) is scaled by its
    dtype's full scale. Audio shorter than 20 ms is padded with silence to 20 ms (the encoders
    turn a few samples into an empty file). ValueError naming the argument for a sample rate outside
    8000..384000 Hz or a bitrate the encoder does not take (`BITRATE_RANGES`); EmptyAudio for no
    samples."""
    spec = _format_spec(fmt)
    sample_rate = _whole_in(sample_rate, "sample_rate", *SAMPLE_RATE_RANGE, "Hz")
    bitrate = _whole_in(bitrate, f"the {fmt} bitrate", *BITRATE_RANGES[fmt], "bit/s")
    samples = _as_mono(audio)
    if samples.shape[0] == 0:
        raise EmptyAudio("There is no audio to encode (0 samples).")
    shortest = math.ceil(MIN_ENCODED_SECONDS * sample_rate)
    if samples.shape[0] < shortest:
        samples = np.concatenate([samples, np.zeros(shortest - samples.shape[0], np.float32)])
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=spec.container) as container:
        stream = container.add_stream(spec.codec, rate=spec.sample_rate, layout="mono")
        if not isinstance(stream, av.AudioStream):  # narrows the type: an audio codec gives an audio stream
            raise TypeError(f"{spec.codec} did not create an audio stream")
        stream.bit_rate = bitrate
        # PyAV resamples (e.g. 44.1 -> 48 kHz for Opus) and re-frames to the codec's frame size.
        block = 1 << 15
        for start in range(0, samples.shape[0], block):
            chunk = samples[start : start + block]
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = start
            frame.time_base = Fraction(1, sample_rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def _bitrates_for(fmt: str, bitrates: dict[str, Sequence[int]] | Sequence[int] | None) -> list[int]:
    if bitrates is None:
        chosen: Sequence[int] = FORMATS[fmt].bitrates
    elif isinstance(bitrates, dict):
        chosen = bitrates.get(fmt, FORMATS[fmt].bitrates)
    else:
        chosen = bitrates
    return sorted(set(chosen), reverse=True)


def encode_to_fit(
    audio: np.ndarray,
    sample_rate: int,
    max_bytes: int,
    formats: Sequence[OutputFormat] = ("ogg", "mp3"),
    bitrates: dict[str, Sequence[int]] | Sequence[int] | None = None,
    *,
    min_bitrate: int = 0,
) -> EncodedAudio:
    """Encode at the highest bitrate that fits `max_bytes`, trying `formats` in order of preference.

    `bitrates` is one list for every format, a per-format dict, or None for each format's ladder
    (`FORMATS[fmt].bitrates`). Each format's ladder is binary-searched (file size grows with
    bitrate for these encoders), so a fit costs about log2(len(ladder)) encodes. Raises `DoesNotFit`
    with the smallest size reached when nothing at or above `min_bitrate` fits.
    """
    sample_rate = _whole_in(sample_rate, "sample_rate", *SAMPLE_RATE_RANGE, "Hz")  # before it divides
    samples = _as_mono(audio)
    duration = samples.shape[0] / sample_rate
    smallest: tuple[int, str, int] | None = None
    for fmt in formats:
        spec = _format_spec(fmt)
        ladder = [b for b in _bitrates_for(fmt, bitrates) if b >= min_bitrate]  # highest first
        best: EncodedAudio | None = None
        low, high = 0, len(ladder) - 1  # search for the first (highest) bitrate that fits
        while low <= high:
            middle = (low + high) // 2
            data = encode_audio(samples, sample_rate, fmt, ladder[middle])
            if len(data) <= max_bytes:
                best = EncodedAudio(data, fmt, ladder[middle], spec.mime, spec.extension, duration)
                high = middle - 1
            else:
                if smallest is None or len(data) < smallest[0]:
                    smallest = (len(data), fmt, ladder[middle])
                low = middle + 1
        if best is not None:
            return best
    if smallest is None:
        raise ValueError(f"no bitrate at or above {min_bitrate} bit/s to try for formats {tuple(formats)}")
    raise DoesNotFit(max_bytes, *smallest)


def split_to_fit(
    audio: np.ndarray,
    sample_rate: int,
    max_bytes: int,
    formats: Sequence[OutputFormat] = ("ogg", "mp3"),
    bitrates: dict[str, Sequence[int]] | Sequence[int] | None = None,
    *,
    min_bitrate: int = 64_000,
    max_parts: int = 20,
) -> list[EncodedAudio]:
    """Cut audio into the fewest consecutive equal parts that each fit `max_bytes` at >= `min_bitrate`.

    Each part gets the highest bitrate that fits it. One part when the whole already fits. Raises
    `DoesNotFit` when even `max_parts` parts do not fit.
    """
    samples = _as_mono(audio)
    try:
        return [encode_to_fit(samples, sample_rate, max_bytes, formats, bitrates, min_bitrate=min_bitrate)]
    except DoesNotFit as whole:
        # Size is nearly proportional to length: start from the part count the smallest encoding implies.
        n_parts = max(2, math.ceil(whole.smallest_bytes / max_bytes))
        last_error = whole
    while n_parts <= max_parts:
        bounds = np.linspace(0, samples.shape[0], n_parts + 1).round().astype(int)
        parts: list[EncodedAudio] = []
        try:
            for begin, end in itertools.pairwise(bounds.tolist()):
                part = encode_to_fit(
                    samples[begin:end], sample_rate, max_bytes, formats, bitrates, min_bitrate=min_bitrate
                )
                parts.append(
                    EncodedAudio(
                        part.data,
                        part.format,
                        part.bitrate,
                        part.mime,
                        part.extension,
                        duration_seconds=(end - begin) / sample_rate,
                        start_seconds=begin / sample_rate,
                    )
                )
        except DoesNotFit as exc:
            last_error = exc
            n_parts += 1
            continue
        return parts
    raise DoesNotFit(
        max_bytes, last_error.smallest_bytes, last_error.smallest_format, last_error.smallest_bitrate
    )


# --------------------------------------------------------------------------------------------------
# Small array helpers for the sampler


def to_int16_pcm(audio: np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1] (clamped) to int16 PCM, rounding to the nearest step."""
    samples = np.clip(np.nan_to_num(np.asarray(audio, dtype=np.float32)), -1.0, 1.0)
    return np.round(samples * 32767.0).astype(np.int16)


def wav_bytes(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A 16-bit PCM WAV file of mono (samples,) or multichannel (channels, samples) audio."""
    samples = np.asarray(audio)
    if samples.ndim == 1:
        samples = samples[None, :]
    if samples.ndim != 2:
        raise ValueError(
            f"expected audio of shape (samples,) or (channels, samples), got {np.asarray(audio).shape}"
        )
    pcm = to_int16_pcm(samples.T)  # WAV interleaves channels
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(samples.shape[0])
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.astype("<i2").tobytes())
    return buffer.getvalue()
