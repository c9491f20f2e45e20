"""Choosing how a stored sample is uploaded under a server's size limit. No Discord calls here.

The store keeps each sample compressed (the worker's choice of format and bitrate). When that
copy fits the upload limit it is sent as it is; otherwise it is re-encoded at the best bitrate
that fits, and when even a low bitrate does not fit it is split into consecutive parts. A sample
is never dropped: if nothing fits, `DeliveryImpossible` says how to get it another way.
CPU-bound (decode + encode): await `files_in_turn`, which re-encodes one sample at a time.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from bot.errors import JukebotError
from sampler.audio import SAMPLE_RATE, AudioError, DoesNotFit, decode_audio, split_to_fit
from sampler.units import format_bytes

DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
MAX_FILES_PER_MESSAGE = 10
# A part below this bitrate sounds worse than splitting it further.
MIN_PART_BITRATE = 32_000
T = TypeVar("T")
_EXTENSIONS = {"ogg": "ogg", "opus": "ogg", "mp3": "mp3", "wav": "wav", "flac": "flac"}
# One re-encode at a time per bot process, whoever asks (the relay, /sample, /curate), in a thread of
# its own: each decodes a whole sample (~10 MB a minute), so a burst of /sample of a long one would
# otherwise hold that many copies and take every core. The others wait in its queue, not in the
# threads the event loop shares (name lookups, curation), which stay free; their interactions are
# deferred.
_REENCODER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jukebot-reencode")


class DeliveryImpossible(JukebotError):
    """A sample cannot be uploaded here even split into parts."""


class NotInTime(JukebotError):
    """Work on a single-thread queue (`in_turn`) had not been done by its deadline: the work queued
    ahead of it was long. Its turn is given up (not started, if it had not started)."""

    def __init__(self) -> None:
        super().__init__(
            "The bot is busy preparing other samples right now, so this one could not be made ready in "
            "time; please ask again in a few minutes."
        )


async def in_turn(executor: ThreadPoolExecutor, work: Callable[[], T], deadline: float | None = None) -> T:
    """`work()` in its turn on `executor`; by `deadline` (the event loop's clock) or `NotInTime`."""
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(executor, work)
    if deadline is None:
        return await future
    try:
        # On time-out the future is cancelled: work still queued never starts.
        return await asyncio.wait_for(future, timeout=max(deadline - loop.time(), 0.0))
    except TimeoutError:
        raise NotInTime() from None


@dataclass(frozen=True)
class AudioFile:
    filename: str
    data: bytes
    description: str


def upload_limit(interaction_limit: int | None, guild_limit: int | None) -> int:
    """The interaction's `attachment_size_limit` when known, else the server's, else Discord's default."""
    for limit in (interaction_limit, guild_limit):
        if limit:
            return int(limit)
    return DEFAULT_UPLOAD_LIMIT


def files_for_sample(
    audio: bytes, audio_format: str, limit_bytes: int, stem: str, duration_seconds: float
) -> list[AudioFile]:
    """The file(s) to upload for one sample: the stored copy, a re-encode that fits, or parts."""
    extension = _EXTENSIONS.get(audio_format.lower(), audio_format.lower())
    if len(audio) <= limit_bytes:
        return [AudioFile(f"{stem}.{extension}", audio, f"{stem} ({duration_seconds:.1f} s)")]
    return _reencoded(audio, limit_bytes, stem, duration_seconds)


async def files_in_turn(
    audio: bytes,
    audio_format: str,
    limit_bytes: int,
    stem: str,
    duration_seconds: float,
    deadline: float | None = None,
) -> list[AudioFile]:
    """`files_for_sample` off the event loop: the stored copy at once when it fits, else the
    re-encode in its turn on the re-encoding thread (by `deadline`: `in_turn`)."""
    if len(audio) <= limit_bytes:
        return files_for_sample(audio, audio_format, limit_bytes, stem, duration_seconds)
    work = functools.partial(files_for_sample, audio, audio_format, limit_bytes, stem, duration_seconds)
    return await in_turn(_REENCODER, work, deadline)


def _reencoded(audio: bytes, limit_bytes: int, stem: str, duration_seconds: float) -> list[AudioFile]:
    try:
        samples = decode_audio(audio, max_bytes=None, max_seconds=None, silence_threshold_db=None)
    except AudioError as exc:
        raise DeliveryImpossible(f"The stored audio of {stem} cannot be read back: {exc}") from None
    # Enough parts that each fits at the lowest bitrate, with room to spare.
    lowest_bytes = duration_seconds * MIN_PART_BITRATE / 8
    max_parts = max(20, math.ceil(2 * lowest_bytes / max(limit_bytes, 1)))
    try:
        parts = split_to_fit(
            samples, SAMPLE_RATE, limit_bytes, min_bitrate=MIN_PART_BITRATE, max_parts=max_parts
        )
    except DoesNotFit as exc:
        raise DeliveryImpossible(
            f"{stem} does not fit in this server's {format_bytes(limit_bytes)} upload limit even "
            f"split into {max_parts} parts ({exc}). Ask a server with a higher limit, or an admin, for it."
        ) from None
    if len(parts) == 1:
        (part,) = parts
        return [
            AudioFile(
                part.filename(stem),
                part.data,
                f"{stem} ({part.duration_seconds:.1f} s, {part.bitrate // 1000} kbit/s)",
            )
        ]
    total = len(parts)
    return [
        AudioFile(
            part.filename(f"{stem}_part{index}of{total}"),
            part.data,
            f"{stem} part {index}/{total}: {part.start_seconds:.1f}–"
            f"{part.start_seconds + part.duration_seconds:.1f} s, {part.bitrate // 1000} kbit/s",
        )
        for index, part in enumerate(parts, start=1)
    ]


def group_for_messages(files: Sequence[AudioFile], limit_bytes: int) -> list[list[AudioFile]]:
    """Pack files into messages of at most 10 files whose sizes add up to at most the limit."""
    groups: list[list[AudioFile]] = []
    current: list[AudioFile] = []
    size = 0
    for file in files:
        if current and (len(current) == MAX_FILES_PER_MESSAGE or size + len(file.data) > limit_bytes):
            groups.append(current)
            current, size = [], 0
        current.append(file)
        size += len(file.data)
    if current:
        groups.append(current)
    return groups


async def grouped_files_or_reason(
    audio: bytes, audio_format: str, limit_bytes: int, stem: str, duration_seconds: float
) -> tuple[list[list[AudioFile]], DeliveryImpossible | None]:
    """A sample's files grouped into messages under the limit, encoded off the event loop; when it
    cannot fit at all, one message without files and the reason (the caller says it in the text)."""
    try:
        files = await files_in_turn(audio, audio_format, limit_bytes, stem, duration_seconds)
    except DeliveryImpossible as exc:
        return [[]], exc
    return group_for_messages(files, limit_bytes), None


def with_picture(
    groups: list[list[AudioFile]], picture: AudioFile | None, limit_bytes: int, *, own_message: bool = False
) -> list[list[AudioFile]]:
    """The messages' files with `picture` added to the first message (the one with the buttons) when it
    fits there; it never pushes a message over the limit or the file count: without room it is left out
    or, with `own_message`, goes in a message of its own after the others (where it fits the limit)."""
    if picture is None or not groups:
        return groups
    first = groups[0]
    size = sum(len(file.data) for file in first) + len(picture.data)
    if len(first) < MAX_FILES_PER_MESSAGE and size <= limit_bytes:
        return [[*first, picture], *groups[1:]]
    if own_message and len(picture.data) <= limit_bytes:
        return [*groups, [picture]]
    return groups
