"""The text of a job's progress message, and of /queue. No Discord calls here: plain strings.

A progress message starts with `**Job #<id>**`, and its last line starts with a status mark.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from bot.errors import fit_message, shorten
from sampler.jobspec import JobParams, is_full_quality, params_or_defaults, sweep_style
from sampler.units import count_of
from sampler.user_text import public_label
from storage.models import JobKind, JobStatus, utcnow
from storage.records import Job
from storage.store import GAVE_UP_AFTER_CRASHES, QueuePlaces

BAR_WIDTH = 20
MARK_QUEUED, MARK_RUNNING, MARK_CANCELLING = "⏳", "🎛️", "✋"
MARK_DONE, MARK_FAILED, MARK_CANCELLED = "✅", "❌", "🛑"
MAX_REASON_CHARS = 1200
# /queue lists this many of the user's jobs and of the server's running ones, then counts the rest:
# each line is under ~120 characters, so both lists fit one message (`fit_message` guards the rest).
QUEUE_LISTED, RUNNING_LISTED = 10, 8
MAX_LABEL_CHARS = 200  # an artist's or genres' text in a progress message (no name Jukebox knows is longer)
# A running job shows at most this much: 100% means done, and decoding and compressing the audio
# (reported as all tokens sampled) may take minutes more.
RUNNING_MAX_FRACTION = 0.99
LEVEL_NAMES = {2: "top level (preview)", 1: "middle level", 0: "bottom level (full quality)"}


def progress_bar(fraction: float, width: int = BAR_WIDTH) -> str:
    """`[██████░░░░]  60%`: a fixed-width bar and the percentage, floored so 100% means done."""
    fraction = min(max(fraction, 0.0), 1.0)
    filled = int(fraction * width)
    return f"`[{'█' * filled}{'░' * (width - filled)}] {int(fraction * 100):3d}%`"


def relative_time(moment: datetime) -> str:
    """A Discord timestamp that each reader's client shows as 'in 5 minutes'."""
    return f"<t:{int(moment.timestamp())}:R>"


def describe_params(kind: JobKind, model: str, params: JobParams) -> str:
    """One line saying what the job makes, e.g. '5b_lyrics · the beatles · rock · 20 s · 3 samples'."""
    labels = (params.artist, ", ".join(params.genres))  # as stored, also by an older bot: shown safely
    parts = [model, *(shorten(public_label(label), MAX_LABEL_CHARS) for label in labels)]
    if params.styles:
        parts[1:] = [params.describe_labels()]  # "a sweep of N styles"
    if kind == JobKind.CONTINUE:
        parts.append(f"+{params.seconds:g} s")
    elif kind == JobKind.GENERATE:
        parts.append(f"{params.seconds:g} s")
        samples = params.n_samples
        parts.append(count_of(samples, "sample"))
        parts.append(quality_label(params))
    return " · ".join(parts)


def quality_label(params: JobParams, *, long: bool = False) -> str:
    """What a job's samples are: full quality, or a preview (the top level only)."""
    if is_full_quality(params):
        return "full quality"
    return "preview (top level only)" if long else "preview"


def job_quality(job: Job) -> str:
    """What a stored job's samples are, as a re-post says it."""
    if job.kind == JobKind.CURATE:
        return "curated piece"
    return quality_label(params_or_defaults(job.params), long=True)


def can_upsample(job: Job) -> bool:
    """Whether the job's samples are previews that Upsample takes to full quality (not a curated
    piece, which is joined audio: its samples upsample on their own)."""
    return job.kind != JobKind.CURATE and not is_full_quality(params_or_defaults(job.params))


def header(job: Job) -> str:
    what = {
        JobKind.GENERATE: "new song",
        JobKind.UPSAMPLE: "upsample",
        JobKind.CONTINUE: "continue",
        JobKind.CURATE: "curated piece",
    }[job.kind]
    parent = f" of sample #{job.parent_sample_id}" if job.parent_sample_id is not None else ""
    return (
        f"**Job #{job.id}** · {what}{parent} for <@{job.user_id}>\n"
        f"{describe_params(job.kind, job.model, params_or_defaults(job.params))}"
    )


# A queued job its user's running limit holds: behind their running jobs, or their queued ones ahead of it.
HELD = "waiting until an earlier job of yours here ends"


def unserved(model: str) -> str:
    """A queued job no live worker can take: its model is on none of them (or none runs)."""
    return f"waiting for a worker with the {model} model (none is running now)"


# A progress message gives the exact place of the first queued jobs, and further back only a bound
# that changes now and then ("past position 50"): each claim moves every queued job up one, and
# editing hundreds of messages for it outruns what Discord lets a bot edit (about 5 per 5 s a channel).
EXACT_PLACES = 20


def place_bound(place: int) -> int:
    """The largest of 20, 50, 100, 200, 500, 1000, … below `place` (over EXACT_PLACES)."""
    bound, steps = EXACT_PLACES, itertools.cycle((5 / 2, 2, 2))  # 20 → 50 → 100 → 200 → 500 → …
    while (following := round(bound * next(steps))) < place:
        bound = following
    return bound


def queue_wait(job: Job, places: QueuePlaces | None, *, exact: bool = True) -> str:
    """Where a queued job stands, in words: its place among those workers take next (past
    `EXACT_PLACES`, unless `exact`, a bound), or what it waits for (`places` from `queue_places`;
    None: not known)."""
    if places is None:
        return "waiting in the queue"
    if job.id in places.held:
        return HELD
    if job.id in places.unserved:
        return unserved(job.model)
    place = places.place.get(job.id)
    if not place:
        return "waiting in the queue"
    if exact or place <= EXACT_PLACES:
        return f"position {place} in the queue"
    return f"past position {place_bound(place)} in the queue"


def status_line(
    job: Job,
    places: QueuePlaces | None = None,
    sample_count: int | None = None,
    now: datetime | None = None,
) -> str:
    if job.status == JobStatus.QUEUED:
        retry = f" (attempt {job.attempts + 1})" if job.attempts else ""
        return f"{MARK_QUEUED} Queued: {queue_wait(job, places, exact=False)}{retry}."
    if job.status == JobStatus.RUNNING:
        return running_lines(job, now or utcnow())
    if job.status == JobStatus.CANCELLING:
        return f"{MARK_CANCELLING} Cancelling{_cancel_reason(job)}: stopping after the current step."
    if job.status == JobStatus.SUCCEEDED:
        count = "" if sample_count is None else f" {count_of(sample_count, 'sample')}"
        return f"{MARK_DONE} Done:{count} below."
    if job.status == JobStatus.CANCELLED:
        return f"{MARK_CANCELLED} Cancelled{_cancel_reason(job)}."
    reason = shorten((job.error or "no reason given").strip(), MAX_REASON_CHARS)
    if reason.startswith(GAVE_UP_AFTER_CRASHES):
        # The last exception names the operator's paths and hosts: theirs to read (`jukebot jobs list`).
        reason = f"the sampler crashed on every attempt ({job.attempts}); the bot's operator can see why."
    return f"{MARK_FAILED} Failed: {reason}"


def _cancel_reason(job: Job) -> str:
    """` (by a moderator, @x)` when someone else than its user cancelled the job, else ''."""
    return f" ({shorten(job.error.strip(), MAX_REASON_CHARS)})" if job.error and job.error.strip() else ""


def eta_text(eta_at: datetime, now: datetime) -> str:
    """'done in 5 minutes' (each reader's client counts down), or 'finishing' once that time is past:
    never 'done 7 minutes ago' for a job still running."""
    return f"done {relative_time(eta_at)}" if eta_at > now else "finishing"


def level_name(level: int) -> str:
    return LEVEL_NAMES.get(level, f"level {level}")


def running_fraction(job: Job) -> float:
    """The part of a running job shown done: never 100% before it is."""
    return min(max(job.progress, 0.0), RUNNING_MAX_FRACTION)


def running_lines(job: Job, now: datetime) -> str:
    stage = job.stage or "starting"
    where = [stage]
    if len(job.level_windows) > 1:  # levels sampling at once
        where += [f"{level_name(at.level)} window {at.window}/{at.window_count}" for at in job.level_windows]
    else:
        if job.level is not None:
            where.append(level_name(job.level))
        if job.window is not None and job.window_count:
            where.append(f"window {job.window}/{job.window_count}")
    details = [progress_bar(running_fraction(job))]
    if job.tokens_per_second is not None:
        details.append(f"{job.tokens_per_second:,.0f} tokens/s")
    if job.eta_at is not None:
        details.append(eta_text(job.eta_at, now))
    return f"{MARK_RUNNING} Running: {' · '.join(where)}\n{' · '.join(details)}"


def render_job(
    job: Job,
    *,
    places: QueuePlaces | None = None,
    sample_count: int | None = None,
    now: datetime | None = None,
) -> str:
    """The whole progress message for the job's current state (`places`: where queued jobs stand;
    `now`: the clock, for tests)."""
    return f"{header(job)}\n{status_line(job, places, sample_count, now)}"


def render_queue(user_jobs: Sequence[Job], places: QueuePlaces, running: Sequence[Job], now: datetime) -> str:
    """The /queue reply: the user's own jobs with position or progress, then what runs right now."""
    lines = ["**Your jobs**"]
    if not user_jobs:
        lines.append("You have no job waiting or running.")
    for job in user_jobs[:QUEUE_LISTED]:
        if job.status == JobStatus.QUEUED:
            state = f"queued, {queue_wait(job, places)}"
        elif job.status == JobStatus.CANCELLING:
            state = "cancelling"
        else:
            state = f"running, {int(running_fraction(job) * 100)}%"
            if job.eta_at is not None:
                state += f", {eta_text(job.eta_at, now)}"
        lines.append(f"• Job #{job.id} ({job.kind.value}, {job.model}): {state}")
    if len(user_jobs) > QUEUE_LISTED:
        lines.append(f"• and {len(user_jobs) - QUEUE_LISTED} more (`/history` lists them)")
    lines.append("**Running now**")
    if not running:
        lines.append("Nothing is running; a worker takes the next job as soon as one is queued.")
    for job in running[:RUNNING_LISTED]:
        eta = f", {eta_text(job.eta_at, now)}" if job.eta_at is not None else ""
        lines.append(
            f"• Job #{job.id} for <@{job.user_id}> ({job.kind.value}, {job.model}): "
            f"{int(running_fraction(job) * 100)}%{eta}"
        )
    if len(running) > RUNNING_LISTED:
        lines.append(f"• and {len(running) - RUNNING_LISTED} more")
    return fit_message("\n".join(lines))


def style_line(params: Mapping[str, Any], index: int) -> str:
    """The line naming sample `index`'s style under its post, for a style sweep's sample; else ''."""
    style = sweep_style(params, index)
    return "" if style is None else f"\nStyle: **{public_label(style)}**"
