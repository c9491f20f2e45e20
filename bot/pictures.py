"""The picture posted with each sample (sampler/pictures.py draws it): which part was the prime, and
the bounded work of decoding the stored audio to draw it. No Discord calls here.

A picture is a convenience: when the audio cannot be decoded or is too long to draw cheaply, the
sample goes out without one (`delivery.with_picture` also drops it when it does not fit the limit).
Decoding and drawing are CPU work: await `picture_in_turn`, which draws one picture at a time.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from bot import curating
from bot.delivery import AudioFile, in_turn
from sampler.audio import SAMPLE_RATE, AudioError, decode_audio
from sampler.curation import Clip
from sampler.jobspec import params_or_defaults
from sampler.jukebox.windows import TOP_HOP
from sampler.pictures import MAX_HZ, render_sample_picture, strip_picture
from storage.errors import JobNotFound, PrimeNotFound, SampleNotFound
from storage.models import JobKind
from storage.records import Job
from storage.store import JobStore

log = logging.getLogger(__name__)
# Twice the picture's top frequency: enough to draw it, a third less to decode and hold than 44.1 kHz.
PICTURE_SAMPLE_RATE = int(2 * MAX_HZ)
# Longer samples (continues of continues) go out without a picture: decoding them holds ~8 MB a minute.
PICTURE_MAX_SECONDS = 600.0
# One picture at a time per bot process, whoever asks (the relay, /sample): bounds memory and CPU. In a
# thread of its own, as delivery's re-encodes: the pictures waiting their turn wait in its queue, not
# in the threads the event loop shares (name lookups, curation), which a burst of /sample would hold.
_DRAWER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jukebot-picture")
# How far `prime_part_seconds` follows parents (an upsample of a continue of a primed sample...).
_MAX_PARENT_STEPS = 8


def _decoded_to_draw(audio: bytes) -> np.ndarray:
    return decode_audio(
        audio,
        sample_rate=PICTURE_SAMPLE_RATE,
        max_bytes=None,
        max_seconds=PICTURE_MAX_SECONDS,
        silence_threshold_db=None,
    )


def picture_for_sample(
    audio: bytes, audio_format: str, stem: str, duration_seconds: float, prime_seconds: float | None
) -> AudioFile | None:
    """`{stem}.png` of the stored audio, its first `prime_seconds` marked; None when not drawn.
    Blocks while it decodes and draws: from the event loop, await `picture_in_turn` instead."""
    if duration_seconds > PICTURE_MAX_SECONDS:
        return None
    try:
        samples = _decoded_to_draw(audio)
    except AudioError as exc:
        log.warning("%s: no picture, its stored %s audio does not decode: %s", stem, audio_format, exc)
        return None
    try:
        png = render_sample_picture(samples, PICTURE_SAMPLE_RATE, prime_seconds=prime_seconds)
    except Exception:  # a picture is a convenience: the audio goes out without one
        log.exception("%s: drawing its picture failed", stem)
        return None
    seconds = samples.shape[0] / PICTURE_SAMPLE_RATE
    # The marked part is a prime clip, or the sample a continue extends: given to the model, not made.
    marked = f", the first {prime_seconds:.1f} s given to the model (tinted)" if prime_seconds else ""
    return AudioFile(f"{stem}.png", png, f"{stem}: spectrogram and loudness over {seconds:.1f} s{marked}")


async def picture_in_turn(
    audio: bytes,
    audio_format: str,
    stem: str,
    duration_seconds: float,
    prime_seconds: float | None,
    deadline: float | None = None,
) -> AudioFile | None:
    """`picture_for_sample` off the event loop, in its turn on the drawing thread (by `deadline`:
    `delivery.in_turn`)."""
    if duration_seconds > PICTURE_MAX_SECONDS:
        return None  # nothing to draw: no need to wait for the others
    work = functools.partial(picture_for_sample, audio, audio_format, stem, duration_seconds, prime_seconds)
    return await in_turn(_DRAWER, work, deadline)


async def picture_of_sample(
    store: JobStore,
    job: Job,
    audio: bytes,
    audio_format: str,
    stem: str,
    duration_seconds: float,
    deadline: float | None = None,
) -> AudioFile | None:
    """The picture posted with a sample of `job`: for a curated piece the strip of its samples in
    playing order, as `/curate` posted it (drawn again from the stored samples); else, or when that
    cannot be drawn, its spectrogram with the part given to the model marked. In its turn on the
    drawing thread (by `deadline`: `delivery.in_turn`)."""
    recorded = curating.recorded_order(job.params) if job.kind == JobKind.CURATE else None
    if recorded is not None:
        order, join_scores = recorded
        try:
            stored = [(sample_id, (await store.get_sample(sample_id)).audio) for sample_id in order]
        except SampleNotFound:
            stored = []
        if stored:
            work = functools.partial(strip_for_piece, stored, join_scores, stem)
            strip = await in_turn(_DRAWER, work, deadline)
            if strip is not None:
                return strip
    prime_part = await prime_part_seconds(store, job)
    return await picture_in_turn(audio, audio_format, stem, duration_seconds, prime_part, deadline)


def strip_for_piece(played: list[tuple[int, bytes]], join_scores: list[float], stem: str) -> AudioFile | None:
    """The strip of a curated piece's samples (id, stored audio), in the order they play;
    None when one does not decode or the strip cannot be drawn. Blocks: one sample decoded at a time."""

    def clips() -> Iterator[Clip]:
        for sample_id, audio in played:
            yield Clip(f"#{sample_id}", _decoded_to_draw(audio))

    try:
        png = strip_picture(clips(), join_scores, PICTURE_SAMPLE_RATE)
    except AudioError as exc:
        log.warning("%s: no strip, a sample's stored audio does not decode: %s", stem, exc)
        return None
    except Exception:  # a picture is a convenience: the piece goes out with its spectrogram
        log.exception("%s: drawing its strip failed", stem)
        return None
    return strip_file(stem, png, len(played))


def strip_file(stem: str, png: bytes, count: int) -> AudioFile:
    """A curated piece's strip as the file posted with it."""
    return AudioFile(f"{stem}_order.png", png, f"{stem}: the {count} samples in the order they play")


async def prime_part_seconds(store: JobStore, job: Job) -> float | None:
    """How many seconds at the start of the job's samples the model was given rather than made:
    the prime clip (as much as the job used), or for a continue the sample it extends; an upsample
    keeps its parent's part. None when the samples are the model's own from the start."""
    for _ in range(_MAX_PARENT_STEPS):
        try:
            if job.kind == JobKind.GENERATE:
                if job.prime_id is None:
                    return None
                prime = await store.get_prime(job.prime_id)
                wanted = params_or_defaults(job.params).prime_seconds
                return (
                    prime.duration_seconds if wanted is None else min(float(wanted), prime.duration_seconds)
                )
            if job.parent_sample_id is None:
                return None
            parent = await store.get_sample_info(job.parent_sample_id)
            if job.kind == JobKind.CONTINUE:
                if (await store.get_job(parent.job_id)).kind != JobKind.CURATE:
                    return parent.duration_seconds
                # A curated piece is continued from its ingredients' codes end to end (untrimmed, no
                # crossfades), which last longer than the piece's own audio: they are the prime's part.
                top = await store.codes_count(parent.id, 2)
                return None if not top else top * TOP_HOP / SAMPLE_RATE
            job = await store.get_job(parent.job_id)  # an upsample: the same length as its parent
        except (PrimeNotFound, SampleNotFound, JobNotFound):
            return None
    return None
