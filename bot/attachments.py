"""Fetching and checking a prime clip a user attached: size from the metadata, then the header, then all.

Order matters: an attachment that is too large is refused from Discord's metadata before a
byte is downloaded; a file that is not audio (or already too long by its header) is refused
from its first bytes; only then is the whole file downloaded, with a byte cap, and decoded.
The header and the file are opened in a child process (`sampler.audio_process`): a file that
crashes the decoder costs its sender one reply, not everyone the bot.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
import numpy as np

from bot.errors import AttachmentRejected
from bot.requests import Limits, check_prime_metadata
from sampler.audio import SAMPLE_RATE, AudioError, AudioTooLong, CorruptAudio, EmptyAudio, NotAudio
from sampler.audio_process import DecoderFailed, DecodersBusy, decode_in_child, probe_in_child
from sampler.jobspec import MIN_PRIME_SECONDS
from sampler.units import format_bytes
from sampler.user_text import quote_user_text

PROBE_BYTES = 64 * 1024
DOWNLOAD_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class DecodedPrime:
    filename: str
    pcm: bytes  # 16-bit little-endian mono PCM at 44.1 kHz, what `JobStore.store_prime` keeps
    duration_seconds: float


async def fetch_prime(
    session: aiohttp.ClientSession, url: str, filename: str, size: int, limits: Limits
) -> DecodedPrime:
    """Download and decode the clip at `url`, or raise `AttachmentRejected` saying what is wrong with it."""
    check_prime_metadata(limits, filename, size)
    if size > PROBE_BYTES:
        head = await _download(session, url, filename, PROBE_BYTES, byte_range=(0, PROBE_BYTES - 1))
        try:
            await probe_in_child(head, max_seconds=limits.max_prime_seconds, prefix=True)
        except (NotAudio, EmptyAudio, AudioTooLong, DecoderFailed, DecodersBusy) as exc:
            raise AttachmentRejected(_about(filename, exc)) from None
        except AudioError:
            pass  # a header cut by the prefix proves nothing; the full decode decides
    data = await _download(session, url, filename, limits.max_prime_bytes)
    try:
        audio = await decode_in_child(
            data, max_bytes=limits.max_prime_bytes, max_seconds=limits.max_prime_seconds
        )
    except AudioError as exc:
        raise AttachmentRejected(_about(filename, exc)) from None
    seconds = len(audio) / SAMPLE_RATE
    if seconds < MIN_PRIME_SECONDS:
        held = len(audio) * 1000 // SAMPLE_RATE  # ms, rounded down: 0.49995 s must not read as 0.50
        raise AttachmentRejected(
            f"The attachment {quote_user_text(filename)} is too short: it holds {held / 1000:.3f} s of audio "
            f"(whatever its header claims), and a prime needs at least {MIN_PRIME_SECONDS:g} s. "
            "Attach a longer clip."
        )
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
    return DecodedPrime(filename, pcm, seconds)


# What a refusal says about the file, by the most specific error class that has a word for it.
_KINDS: dict[type[AudioError], str] = {
    NotAudio: "is not an audio file",
    CorruptAudio: "is damaged",
    EmptyAudio: "has no audio",
    AudioTooLong: "is too long",
    DecoderFailed: "could not be decoded",
}


def _about(filename: str, error: AudioError) -> str:
    kind = next((_KINDS[cls] for cls in type(error).__mro__ if cls in _KINDS), None)
    quoted = quote_user_text(filename)
    prefix = f"The attachment {quoted} {kind}: " if kind else f"The attachment {quoted}: "
    return prefix + str(error)


async def _download(
    session: aiohttp.ClientSession,
    url: str,
    filename: str,
    max_bytes: int,
    byte_range: tuple[int, int] | None = None,
) -> bytes:
    headers = {"Range": f"bytes={byte_range[0]}-{byte_range[1]}"} if byte_range else {}
    timeout = aiohttp.ClientTimeout(total=DOWNLOAD_TIMEOUT_S)
    try:
        async with session.get(url, headers=headers, timeout=timeout) as response:
            if response.status not in (200, 206):
                raise AttachmentRejected(
                    f"The attachment {quote_user_text(filename)} could not be downloaded from Discord "
                    f"(HTTP {response.status}); attach it again."
                )
            chunks: list[bytes] = []
            received = 0
            async for chunk in response.content.iter_chunked(64 * 1024):
                received += len(chunk)
                if received > max_bytes:
                    if byte_range is not None:  # a server that ignores Range: keep the prefix
                        chunks.append(chunk)
                        break
                    raise AttachmentRejected(
                        f"The attachment {quote_user_text(filename)} is larger than the "
                        f"{format_bytes(max_bytes)} limit for a prime. Attach a shorter clip or a "
                        "compressed format."
                    )
                chunks.append(chunk)
    except (aiohttp.ClientError, TimeoutError):
        raise AttachmentRejected(
            f"The attachment {quote_user_text(filename)} could not be downloaded from Discord; "
            "attach it again."
        ) from None
    data = b"".join(chunks)
    return data[:max_bytes] if byte_range is not None else data
