"""Turning what a user typed into job parameters, and the limits that may refuse it. No Discord here.

Each check raises a `bot.errors.JukebotError` whose message says which limit or option was
wrong and what to do instead; nothing is written to the store before all checks passed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from bot.errors import AttachmentRejected, ChannelNotAllowed, InvalidRequest, LimitReached, listed
from bot.vocab import resolve_labels, resolve_styles
from jukebot.settings import Settings
from sampler.jobspec import (
    DEFAULT_SAMPLES,
    DEFAULT_TEMPERATURE,
    MAX_LYRICS_CHARS,
    MAX_PRIME_SECONDS,
    MIN_LENGTH_SECONDS,
    MIN_PRIME_SECONDS,
    JobParams,
    Style,
)
from sampler.jukebox.registry import DEFAULT_MODEL, MAX_SONG_SECONDS, MODEL_PREFERENCE, MODELS, SAMPLE_RATE
from sampler.jukebox.windows import (
    TOP_HOP,
    longest_song_samples,
    prompt_length_samples,
    sample_length_samples,
)
from sampler.units import format_bytes_apart
from sampler.user_text import quote_user_text, shorten_user_text
from storage.errors import UserJobLimitReached
from storage.models import JobStatus
from storage.records import GuildSettings, Job
from storage.store import running_limit_in_force

T = TypeVar("T")
N = TypeVar("N", int, float)

DEFAULT_LENGTH_SECONDS = 20.0
DEFAULT_CONTINUE_SECONDS = 10.0
# The longest length a command's option takes (a server's own limit, at most this, is checked after).
MAX_LENGTH_OPTION_SECONDS = MAX_SONG_SECONDS
MAX_HISTORY_PAGE = 1000  # /history pages of ten jobs
MAX_SEED = 2**31 - 1
# Lyrics longer than this do not fit comfortably in a slash-command option; the modal takes them.
LYRICS_OPTION_CHARS = 1000
CHANNEL_LIST_CHARS = 1500  # allowed channels named in one reply (a mention is ~22 characters)
# /top and /curate top: which samples count (made within the period), and how many of the most-voted.
TOP_PERIODS = {"day": timedelta(days=1), "week": timedelta(days=7), "month": timedelta(days=30), "all": None}
TOP_COUNT = 10


def top_since(period: str, now: datetime) -> datetime | None:
    """When samples must have been made to count in `period` (None: ever)."""
    if period not in TOP_PERIODS:
        raise InvalidRequest(f"The period is one of {', '.join(TOP_PERIODS)}, not {quote_user_text(period)}.")
    delta = TOP_PERIODS[period]
    return None if delta is None else now - delta


@dataclass(frozen=True)
class Limits:
    """The limits that apply in one server: bot-wide settings, overridden by the server's own."""

    max_length_seconds: float
    max_samples_per_job: int
    max_running_jobs_per_user: int
    max_queued_jobs_per_user: int
    allowed_channel_ids: tuple[int, ...]  # empty: every channel
    max_prime_bytes: int
    max_prime_seconds: float
    # The allow-list is the bot's JUKEBOT_ALLOWED_CHANNELS, one list for every server: it may name
    # only other servers' channels (`channels_here`).
    channels_from_setting: bool = False

    def channels_here(self, here: Callable[[int], bool] | None) -> tuple[int, ...]:
        """The allow-list as shown in one server: of the bot's setting, only that server's channels
        (`here`, when known); a server's own list whole (a channel on it may have been deleted since)."""
        allowed = self.allowed_channel_ids
        return tuple(filter(here, allowed)) if self.channels_from_setting and here else allowed

    @classmethod
    def resolve(cls, settings: Settings, guild: GuildSettings | None = None) -> Limits:
        guild = guild or GuildSettings(guild_id=0)
        return cls(
            # A server's own limits tighten the operator's settings, never loosen them: every server
            # shares the operator's GPUs.
            max_length_seconds=_tighter(guild.max_length_seconds, settings.max_length_seconds),
            max_samples_per_job=_tighter(guild.max_samples_per_job, settings.max_samples_per_job),
            max_running_jobs_per_user=running_limit_in_force(
                guild.max_running_jobs_per_user, settings.max_running_jobs_per_user
            ),
            max_queued_jobs_per_user=_tighter(
                guild.max_queued_jobs_per_user, settings.max_queued_jobs_per_user
            ),
            allowed_channel_ids=tuple(_or(guild.allowed_channel_ids, tuple(settings.allowed_channels))),
            max_prime_bytes=settings.max_prime_bytes,
            max_prime_seconds=settings.max_prime_seconds,
            channels_from_setting=guild.allowed_channel_ids is None and bool(settings.allowed_channels),
        )


def _or(override: T | None, default: T) -> T:
    return default if override is None else override


def _tighter(override: N | None, ceiling: N) -> N:
    return ceiling if override is None else min(override, ceiling)


# The allow-list in force is the bot's setting, and names none of this server's channels.
NO_CHANNEL_HERE = (
    "Jukebox is not available in any channel of this server: the bot's operator allows it only in "
    "channels of other servers (JUKEBOT_ALLOWED_CHANNELS). A server admin can allow channels here with "
    "`/jukebot-admin channels`."
)


def check_channel(
    limits: Limits,
    channel_id: int,
    parent_id: int | None = None,
    here: Callable[[int], bool] | None = None,
) -> None:
    """Refuse a channel off the server's allow-list; a thread counts as its parent channel. The
    refusal names the allowed channels that are `here` (in this server: see `Limits.channels_here`)."""
    allowed = limits.allowed_channel_ids
    if allowed and channel_id not in allowed and parent_id not in allowed:
        shown = limits.channels_here(here)
        if not shown:
            raise ChannelNotAllowed(NO_CHANNEL_HERE)
        where = listed([f"<#{channel}>" for channel in shown], CHANNEL_LIST_CHARS)
        raise ChannelNotAllowed(f"Jukebox is not available in this channel. Use it in {where}.")


def check_capacity(limits: Limits, user_jobs: Sequence[Job]) -> None:
    """Refuse a new job when the user already has as many running or waiting jobs as allowed.

    A quick check before the work of a request; the store enforces the same limits again
    when it inserts the job (`storage.errors.UserJobLimitReached`), which a burst cannot get past.
    """
    running = [job.id for job in user_jobs if job.status in (JobStatus.RUNNING, JobStatus.CANCELLING)]
    queued = [job.id for job in user_jobs if job.status == JobStatus.QUEUED]
    if len(running) >= limits.max_running_jobs_per_user:
        raise capacity_refusal(
            UserJobLimitReached(running=True, job_ids=tuple(running), limit=limits.max_running_jobs_per_user)
        )
    if len(queued) >= limits.max_queued_jobs_per_user:
        raise capacity_refusal(
            UserJobLimitReached(running=False, job_ids=tuple(queued), limit=limits.max_queued_jobs_per_user)
        )


LISTED_JOBS_ROOM = 200  # characters for the jobs a refusal names: a high limit's list stays short


def capacity_refusal(reached: UserJobLimitReached) -> LimitReached:
    """What the user reads when their running or queued jobs are at the limit."""
    ids = listed([f"#{job_id}" for job_id in reached.job_ids], LISTED_JOBS_ROOM)
    first = reached.job_ids[0]
    if reached.all_servers:
        return LimitReached(
            f"You have {_count(len(reached.job_ids), 'unfinished job')} in all servers ({ids}), and this bot "
            f"takes at most {reached.limit} per member in all servers together; try again when job #{first} "
            "ends (or cancel one with /cancel in its server)."
        )
    if reached.running:
        return LimitReached(
            f"You have {_count(len(reached.job_ids), 'job')} running ({ids}), the limit here is "
            f"{reached.limit}; try again when job #{first} finishes (or cancel it with /cancel)."
        )
    return LimitReached(
        f"You have {_count(len(reached.job_ids), 'job')} waiting in the queue ({ids}), the limit here is "
        f"{reached.limit}; try again when job #{first} starts (or cancel one with /cancel)."
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def check_model(model: str) -> None:
    if model not in MODELS:
        raise InvalidRequest(f"Unknown model {quote_user_text(model)}; choose one of {', '.join(MODELS)}.")


def default_model(served: Collection[str]) -> str:
    """The best model some worker serves now; the usual default while none serves any."""
    return next((model for model in MODEL_PREFERENCE if model in served), DEFAULT_MODEL)


def availability_note(model: str, served: Collection[str]) -> str | None:
    """What a user should know when no worker serves `model` yet (the job is queued all the same).
    Which machine lacks which file is for the operator's log, never for the user."""
    if model in served:
        return None
    return f"No worker has the {model} model yet, so your job waits in the queue until one does" + (
        f" (available now: {', '.join(sorted(served))})." if served else "."
    )


def has_lyrics(model: str) -> bool:
    return MODELS[model].has_lyrics


def no_lyrics_note(model: str, what: str) -> str:
    """The note for lyrics asked of `model`, which has none: `what` happened instead."""
    singing = " or ".join(name for name, spec in MODELS.items() if spec.has_lyrics)
    return f"The {model} model does not sing lyrics, so {what}; choose {singing} to use them."


def check_length(limits: Limits, seconds: float, what: str = "length") -> None:
    if not seconds >= MIN_LENGTH_SECONDS:  # the Continue form is free text: 0.001 gets here
        raise InvalidRequest(f"The {what} must be at least {MIN_LENGTH_SECONDS:g} s, got {seconds:g} s.")
    if seconds > limits.max_length_seconds:
        raise LimitReached(
            f"The {what} is {seconds:g} s, but the limit in this server is {limits.max_length_seconds:g} s; "
            f"ask for at most {limits.max_length_seconds:g} s."
        )


def check_prime_metadata(limits: Limits, filename: str, size: int) -> None:
    """Refuse a prime by its size before a single byte of it is downloaded."""
    if size <= 0:
        raise AttachmentRejected(
            f"The attachment {quote_user_text(filename)} is empty (0 bytes). Attach an audio file."
        )
    if size > limits.max_prime_bytes:
        shown, limit = format_bytes_apart(size, limits.max_prime_bytes)
        raise AttachmentRejected(
            f"The attachment {quote_user_text(filename)} is {shown}, larger than the {limit} limit for a "
            "prime. Attach a shorter clip or a compressed format (OGG, MP3, M4A)."
        )


@dataclass(frozen=True)
class GenerateOptions:
    """The /jukebox options as typed (None: not given)."""

    model: str
    artist: str | None = None
    genres: str | None = None
    styles: str | None = None  # a style sweep: 'artist / genre; artist / genre; …', one per sample
    lyrics: str | None = None
    length: float | None = None
    samples: int | None = None
    temperature: float | None = None
    seed: int | None = None
    full: bool = False
    prime_seconds: float | None = None
    prime_duration: float | None = None  # seconds of the attached prime; None: no prime


@dataclass(frozen=True)
class ValidatedJob:
    params: JobParams
    notes: tuple[str, ...] = ()  # things the user should know (lyrics ignored, …)


def build_generate(
    limits: Limits, options: GenerateOptions, rng: random.Random | None = None
) -> ValidatedJob:
    """Validated params of a generate job, or the first problem as a `JukebotError`."""
    check_model(options.model)
    notes: list[str] = []
    labels = resolve_labels(options.model, options.artist, options.genres)
    styles = _resolve_sweep(limits, options)

    lyrics = (options.lyrics or "").strip()
    if lyrics and not has_lyrics(options.model):
        notes.append(no_lyrics_note(options.model, "your lyrics were ignored"))
        lyrics = ""
    if len(lyrics) > MAX_LYRICS_CHARS:
        raise InvalidRequest(
            f"The lyrics are {len(lyrics):,} characters; the limit is {MAX_LYRICS_CHARS:,}. Shorten them."
        )

    seconds = DEFAULT_LENGTH_SECONDS if options.length is None else float(options.length)
    if options.length is None:
        seconds = min(seconds, limits.max_length_seconds)
    check_length(limits, seconds)

    n_samples = (
        min(DEFAULT_SAMPLES, limits.max_samples_per_job) if options.samples is None else options.samples
    )
    if styles is not None:
        if options.samples is not None and options.samples != len(styles):
            raise InvalidRequest(
                f"You listed {_count(len(styles), 'style')} but asked for "
                f"{_count(options.samples, 'sample')}: a style sweep makes one sample per style, "
                "so leave `samples` out."
            )
        n_samples = len(styles)
    if n_samples < 1:
        raise InvalidRequest(f"Ask for at least 1 sample, got {n_samples}.")
    if n_samples > limits.max_samples_per_job:
        raise LimitReached(
            f"You asked for {n_samples} samples, but the limit in this server is "
            f"{limits.max_samples_per_job} per job; ask for at most {limits.max_samples_per_job}."
        )

    temperature = DEFAULT_TEMPERATURE if options.temperature is None else float(options.temperature)
    if not 0 < temperature <= 2:
        raise InvalidRequest(f"The temperature must be above 0 and at most 2, got {temperature:g}.")

    seed = options.seed if options.seed is not None else (rng or random.Random()).randint(0, MAX_SEED)
    if not 0 <= seed < 2**63:
        raise InvalidRequest(f"The seed must be a whole number from 0 up, got {seed}.")

    prime_seconds = options.prime_seconds
    if prime_seconds is not None and not MIN_PRIME_SECONDS <= prime_seconds <= MAX_PRIME_SECONDS:  # NaN too
        raise InvalidRequest(
            f"prime_seconds must be from {MIN_PRIME_SECONDS:g} to {MAX_PRIME_SECONDS:g} seconds, "
            f"got {prime_seconds:g}."
        )
    if prime_seconds is not None and options.prime_duration is None:
        raise InvalidRequest("prime_seconds needs a prime: attach the clip to continue as `prime`.")
    if options.prime_duration is not None:
        if prime_seconds is not None and prime_seconds > options.prime_duration + 0.05:
            raise InvalidRequest(
                f"prime_seconds is {prime_seconds:g} s, but the attached clip is only "
                f"{options.prime_duration:.1f} s long; use at most {options.prime_duration:.1f} s."
            )
        used = prime_seconds if prime_seconds is not None else options.prime_duration
        # Measured as the worker will: both rounded down to whole top-level hops, where a length a hair
        # over the prime (10.001 s after 10 s) is no longer than it, and the job would fail there.
        if sample_length_samples(seconds) <= prompt_length_samples(min(used, options.prime_duration)):
            longest = limits.max_length_seconds
            if seconds >= longest:  # `length` cannot be raised: only the prime can shrink
                raise InvalidRequest(
                    f"The prime ({used:.1f} s) leaves no room for new music in this server's longest "
                    f"song ({longest:g} s), which includes it: set `prime_seconds` under {longest:g} s "
                    "to continue from the clip's first seconds, or attach a shorter clip."
                )
            given = "" if options.length is not None else ", the default"
            raise InvalidRequest(
                f"The length ({seconds:g} s{given}) includes the prime ({used:.1f} s), so it must be longer "
                f"than the prime; raise `length` (up to {longest:g} s) or lower `prime_seconds`."
            )

    params = JobParams(
        artist=labels.artist,
        genres=labels.genres,
        lyrics=lyrics,
        seconds=seconds,
        n_samples=n_samples,
        temperature=temperature,
        seed=seed,
        levels="all" if options.full else "top",
        prime_seconds=prime_seconds,
        styles=styles,
    )
    return ValidatedJob(params, tuple(notes))


def _resolve_sweep(limits: Limits, options: GenerateOptions) -> tuple[Style, ...] | None:
    """The listed styles, validated; None when the job is no sweep."""
    if options.styles is None:
        return None
    if options.artist or options.genres:
        raise InvalidRequest(
            "Use either `styles` (one artist / genre per sample) or `artist` and `genre`, not both."
        )
    resolved = resolve_styles(options.model, options.styles)
    if len(resolved) > limits.max_samples_per_job:
        raise LimitReached(
            f"You listed {len(resolved)} styles, one sample each, but the limit in this server is "
            f"{limits.max_samples_per_job} samples per job; list at most {limits.max_samples_per_job} styles."
        )
    return tuple(Style(artist=labels.artist, genres=labels.genres) for labels in resolved)


def tokens_seconds(tokens: int) -> str:
    """How long `tokens` top-level codes play, in tenths of a second rounded down (599.99 s is not
    "600.0 s", which a song must stay under)."""
    return f"{math.floor(tokens * TOP_HOP / SAMPLE_RATE * 10) / 10:.1f} s"


def song_room(tokens: int) -> int:
    """Raw samples a song of `tokens` top-level codes may still grow by (negative: longer than the models
    take already)."""
    return longest_song_samples() - tokens * TOP_HOP


def check_continuable(sample_id: int, parent_tokens: int | None, added: float = MIN_LENGTH_SECONDS) -> None:
    """Refuse to continue a sample of `parent_tokens` top-level codes by `added` seconds when the song
    would reach the models' longest (the worker would only fail the job), saying how much fits."""
    if parent_tokens is None:
        raise InvalidRequest(f"Sample #{sample_id} has no top-level codes stored, so it cannot be continued.")
    room = song_room(parent_tokens)
    if sample_length_samples(added) <= room:
        return
    said = (
        f"Sample #{sample_id} is {tokens_seconds(parent_tokens)} long, and songs stay under "
        f"{MAX_SONG_SECONDS:g} s"
    )
    most = math.floor((room + TOP_HOP) / SAMPLE_RATE * 10) / 10  # tenths of a second, rounded down
    while most > 0 and sample_length_samples(most) > room:  # (float rounding)
        most = round(most - 0.1, 1)
    if most < MIN_LENGTH_SECONDS:
        raise LimitReached(f"{said}: it cannot be continued any further.")
    raise LimitReached(f"{said}: continue it by at most {most:g} s.")


def may_continue(top_codes: bytes | None) -> bool:
    """Whether a sample whose top-level codes are `top_codes` (int16, as stored) can be continued at all
    (its Continue button)."""
    try:
        check_continuable(0, None if top_codes is None else len(top_codes) // 2)
    except (InvalidRequest, LimitReached):
        return False
    return True


def build_continue(
    limits: Limits,
    parent_params: JobParams,
    seconds: float | None,
    *,
    sample_id: int,
    parent_tokens: int | None,
    rng: random.Random | None = None,
) -> ValidatedJob:
    """A continue job adds `seconds` to a sample of `parent_tokens` top-level codes, keeping its labels and
    lyrics, with a seed of its own: each Continue is another take (the parent's seed would sample the
    same continuation again)."""
    added = default_continue_seconds(limits.max_length_seconds) if seconds is None else float(seconds)
    check_length(limits, added, what="continuation")
    check_continuable(sample_id, parent_tokens, added)
    params = parent_params.model_copy(
        update={
            "seconds": added,
            "n_samples": 1,
            "total_seconds": None,
            "prime_seconds": None,
            "seed": (rng or random.Random()).randint(0, MAX_SEED),
        }
    )
    return ValidatedJob(JobParams.model_validate(params.model_dump()))


def build_upsample(parent_params: JobParams) -> ValidatedJob:
    """An upsample job takes a preview to full quality with the parent's labels."""
    params = parent_params.model_copy(update={"n_samples": 1, "levels": "all", "prime_seconds": None})
    return ValidatedJob(JobParams.model_validate(params.model_dump()))


MAX_STORED_ID = 2**63 - 1  # job and sample ids are signed 64-bit integers in both databases


def default_continue_seconds(max_length_seconds: float | None) -> float:
    """What a continuation adds when no length is given: DEFAULT_CONTINUE_SECONDS, within the server's
    longest song (a default of 10 s where 8 s is the limit was refused)."""
    if max_length_seconds is None:
        return DEFAULT_CONTINUE_SECONDS
    return min(DEFAULT_CONTINUE_SECONDS, max_length_seconds)


def history_page(value: object) -> int:
    """A `/history` page, refused outside 1..MAX_HISTORY_PAGE (Discord's client keeps to it; a forged
    payload need not, and the offset would overflow the database's integers or go negative)."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_HISTORY_PAGE:
        return value
    raise InvalidRequest(
        f"There is no page {shorten_user_text(str(value), limit=30)} of job history: pages go from 1 "
        f"to {MAX_HISTORY_PAGE}."
    )


def stored_id(value: object, what: str) -> int:
    """A job or sample id typed in a command or carried by a button, refused unless it could be stored.

    Discord's client sends only whole numbers up to 2**53, but a forged payload may carry 2**63 or an
    80-digit number (which arrives as a float); the database would fail on it with no useful answer."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_STORED_ID:
        return value
    raise InvalidRequest(
        f"There is no {what} #{shorten_user_text(str(value), limit=30)}: {what} numbers are whole "
        f"numbers from 1 to {MAX_STORED_ID:,}. Check the number and try again."
    )
