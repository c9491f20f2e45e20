"""Frozen snapshots the store hands out (and the one it takes in: `NewSample`).

Listings never carry audio, codes or checkpoints; ask for those by id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from storage.models import FINISHED_STATUSES, JobKind, JobStatus


@dataclass(frozen=True, slots=True)
class LevelWindow:
    """A level sampling now and the window it samples, 1..window_count."""

    level: int
    window: int
    window_count: int


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    guild_id: int | None
    channel_id: int
    user_id: int
    progress_message_id: int | None
    kind: JobKind
    model: str
    params: Mapping[str, Any]
    parent_sample_id: int | None
    prime_id: int | None
    status: JobStatus
    priority: int
    attempts: int
    max_attempts: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    progress: float
    stage: str | None
    level: int | None
    window: int | None
    window_count: int | None
    tokens_done: int | None
    tokens_total: int | None
    tokens_per_second: float | None
    eta_at: datetime | None
    has_checkpoint: bool
    checkpoint_updated_at: datetime | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    # When a bot posted the results (or the failure). Keyword-only with a default, so code that
    # builds a Job by hand keeps working.
    results_posted_at: datetime | None = field(default=None, kw_only=True)
    # The bot posting them right now, and until when its claim holds (then another bot may take over).
    results_posting_owner: str | None = field(default=None, kw_only=True)
    results_posting_expires_at: datetime | None = field(default=None, kw_only=True)
    # Every level sampling at once (a runner that overlaps levels), top first; `level` and `window`
    # then name one of them. Empty when one level samples at a time.
    level_windows: tuple[LevelWindow, ...] = field(default=(), kw_only=True)
    # The user's running-jobs limit the job waits under (`claim` leaves it queued while that many of
    # the user's jobs in the server run); None: none.
    max_running_per_user: int | None = field(default=None, kw_only=True)
    # A lease that ran out, seen so: the job is taken over from then unless its worker renews it first
    # (it may only have been cut off from the database). None: the lease holds, or no lease.
    lease_lapse_ends_at: datetime | None = field(default=None, kw_only=True)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES


@dataclass(frozen=True, slots=True)
class ClaimedJob(Job):
    """What a worker gets from `claim`: the job plus the checkpoint to resume from (None when it has
    none, or when the claim left it out: `has_checkpoint` then says whether there is one)."""

    checkpoint: bytes | None


@dataclass(frozen=True, slots=True)
class Heartbeat:
    lease_expires_at: datetime
    cancel_requested: bool


@dataclass(frozen=True, slots=True)
class UserJobCounts:
    queued: int
    running: int  # includes jobs being cancelled: they still hold a worker


@dataclass(frozen=True, slots=True)
class NewSample:
    """One finished candidate, as a worker hands it to `complete`.

    Codes are int16 little-endian bytes per level (level 0 finest); the levels present
    are the ones whose codes are given. `model` defaults to the job's model.
    """

    index: int
    seed: int
    duration_seconds: float
    audio: bytes
    audio_format: str  # container/codec name, e.g. "ogg" or "mp3"
    audio_bitrate: int | None = None  # bits per second
    codes_level_0: bytes | None = None
    codes_level_1: bytes | None = None
    codes_level_2: bytes | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class SampleInfo:
    id: int
    job_id: int
    index: int
    model: str
    seed: int
    duration_seconds: float
    levels: tuple[int, ...]  # levels whose codes are stored, ascending
    audio_format: str
    audio_bitrate: int | None
    created_at: datetime
    message_id: int | None  # the Discord message the bot posted it in (its first, when in several)
    # While a sample posted in several messages is part-way (`message_parts`); else None.
    message_parts_sent: int | None
    message_parts_total: int | None
    message_parts_limit: int | None

    @property
    def posted(self) -> bool:
        """Whether the bot posted all of it (a later try sends only the parts not sent)."""
        return self.message_id is not None and self.message_parts_sent is None

    @property
    def message_parts(self) -> MessageParts | None:
        """How far posting it in several messages got, while part-way."""
        sent, total, limit = self.message_parts_sent, self.message_parts_total, self.message_parts_limit
        if sent is None or total is None or limit is None:
            return None
        return MessageParts(sent, total, limit)


@dataclass(frozen=True, slots=True)
class ResultsClaim:
    """A claim on posting a finished job's results (`JobStore.claim_results_posting`).
    `taken_over_from`: the bot whose claim ran out before it gave it back (killed, or cut off from the
    database): messages it sent may have no record."""

    taken_over_from: str | None = None


@dataclass(frozen=True, slots=True)
class MessageParts:
    """A sample posted part-way: `sent` of its `total` messages are out, its audio split to fit an
    upload limit of `upload_limit` bytes (the same split again gives the same parts)."""

    sent: int
    total: int
    upload_limit: int


@dataclass(frozen=True, slots=True)
class Sample(SampleInfo):
    audio: bytes
    codes_level_0: bytes | None
    codes_level_1: bytes | None
    codes_level_2: bytes | None

    def codes(self, level: int) -> bytes | None:
        """The int16 little-endian codes of `level` (0, 1 or 2), or None if not stored."""
        return {0: self.codes_level_0, 1: self.codes_level_1, 2: self.codes_level_2}[level]


@dataclass(frozen=True, slots=True)
class SampleOrigin:
    """Where a sample was made, and by whom: its job, that job's server and channel, its user."""

    job_id: int
    guild_id: int | None
    channel_id: int
    user_id: int


@dataclass(frozen=True, slots=True)
class StoredPiece:
    """A curated piece: its sample, where it was made and by whom, and its job's params (which say what
    it was joined from)."""

    sample_id: int
    origin: SampleOrigin
    params: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class RankedSample:
    sample: SampleInfo
    votes: int
    user_id: int  # who started the job that made it
    channel_id: int
    params: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Prime:
    """An uploaded clip: 16-bit little-endian PCM, mono, at `sample_rate` (44.1 kHz)."""

    id: int
    guild_id: int | None
    user_id: int
    filename: str
    duration_seconds: float
    sample_rate: int
    pcm: bytes
    created_at: datetime


@dataclass(frozen=True, slots=True)
class GuildSettings:
    """Per-server overrides; None means "use the bot-wide setting"."""

    guild_id: int
    max_length_seconds: float | None = None
    max_samples_per_job: int | None = None
    max_running_jobs_per_user: int | None = None
    max_queued_jobs_per_user: int | None = None
    allowed_channel_ids: tuple[int, ...] | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What `JobStore.prune_finished` dropped (in a dry run: would drop)."""

    job_ids: tuple[int, ...]  # the jobs whose checkpoint went
    checkpoint_bytes: int
    prime_ids: tuple[int, ...]  # the uploaded clips whose audio went
    prime_bytes: int

    @property
    def freed_bytes(self) -> int:
        return self.checkpoint_bytes + self.prime_bytes


@dataclass(frozen=True, slots=True)
class WorkerSeen:
    """A worker process as the workers table last heard of it: its id (host/pid/device), the models it
    served then, and how long ago that was by the lease clock. `live`: heard of within
    WORKER_STALE_SECONDS (the bot counts only those); a silent one stopped without saying so (killed,
    its machine down) or has lost the database."""

    worker_id: str
    models: tuple[str, ...]
    last_seen_at: datetime
    seconds_ago: float
    live: bool
