"""The tables. Migrations in `storage/migrations` must produce exactly this schema.

Conventions: Discord snowflakes are BigInteger; every timestamp is timezone-aware UTC
(`UTCDateTime` re-attaches the zone on SQLite, which stores none); codes are int16
little-endian bytes; prime audio is 16-bit little-endian PCM, mono, 44.1 kHz.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

PRIME_SAMPLE_WIDTH = 2  # bytes per sample: 16-bit PCM
# The largest value an Integer column holds (Postgres' int4): ids, attempts, per-user job limits.
MAX_INTEGER = 2**31 - 1


class JobKind(enum.StrEnum):
    GENERATE = "generate"
    UPSAMPLE = "upsample"
    CONTINUE = "continue"
    CURATE = "curate"  # many stored samples joined by the bot (never queued: stored as succeeded)


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATUSES = (JobStatus.RUNNING, JobStatus.CANCELLING)  # a worker holds the lease
UNFINISHED_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING)
FINISHED_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
# The rows of the partial index ix_jobs_guild_unposted: jobs whose results are not all posted yet.
UNPOSTED = "results_posted_at IS NULL"


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that always goes in as UTC and always comes out timezone-aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware time (UTC)")
        # SQLite drops the zone and compares text: store UTC so ordering stays right.
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _values(enum_type: type[enum.StrEnum]) -> str:
    return ", ".join(f"'{member.value}'" for member in enum_type)


NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class PrimeRow(Base):
    """A clip a user uploaded to prime generation, already decoded and resampled."""

    __tablename__ = "primes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    user_id: Mapped[int] = mapped_column(BigInteger)
    filename: Mapped[str] = mapped_column(String(255))
    duration_seconds: Mapped[float] = mapped_column(Float)
    sample_rate: Mapped[int] = mapped_column(Integer)
    pcm: Mapped[bytes] = mapped_column(LargeBinary)  # s16le mono at `sample_rate`
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"kind IN ({_values(JobKind)})", name="kind"),
        CheckConstraint(f"status IN ({_values(JobStatus)})", name="status"),
        # The claim query: queued jobs of a model in priority order.
        Index("ix_jobs_claim", "status", "model", "priority", "created_at", "id"),
        Index("ix_jobs_user", "user_id", "status"),
        Index("ix_jobs_guild", "guild_id", "status"),
        # The bot's "finished but results not posted" scan of each server, every few seconds: only the jobs
        # whose results are not out (few) are in it, in the order the scan lists them. A query uses it only
        # if its WHERE says `results_posted_at IS NULL` (this very condition, ANDed with the rest).
        Index(
            "ix_jobs_guild_unposted",
            "guild_id",
            "finished_at",
            "id",
            sqlite_where=text(UNPOSTED),
            postgresql_where=text(UNPOSTED),
        ),
        # The same scan of every server at once (a NULL lookup, few rows match): without it SQLite would
        # walk every finished job (ix_jobs_claim's status) to find them.
        Index("ix_jobs_unposted", "results_posted_at", "status"),
        # Whether a job upsamples a sample already (each Upsample click, under the enqueue lock), and
        # whether any job uses a prime clip (dropping one, `jobs prune`).
        Index("ix_jobs_parent_sample_id", "parent_sample_id"),
        Index("ix_jobs_prime_id", "prime_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    channel_id: Mapped[int] = mapped_column(BigInteger)
    user_id: Mapped[int] = mapped_column(BigInteger)
    progress_message_id: Mapped[int | None] = mapped_column(BigInteger)

    kind: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    parent_sample_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("samples.id", use_alter=True, name="fk_jobs_parent_sample_id_samples")
    )
    prime_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("primes.id"))

    status: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer)  # lower runs first
    attempts: Mapped[int] = mapped_column(Integer)  # leases lost so far
    max_attempts: Mapped[int] = mapped_column(Integer)
    # The user's running-jobs limit when this job was queued: a claim leaves it queued while that
    # many of the user's jobs in the server run (None: no limit).
    max_running_per_user: Mapped[int | None] = mapped_column(Integer)
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The lease's length, and when one that ran out may be taken over: a lease after a recovery pass
    # first saw it run out. A worker cut off from the database renews it when it sees the database
    # back, which may be after someone else saw it first (see `JobStore.requeue_expired`).
    lease_seconds: Mapped[float | None] = mapped_column(Float)
    lease_lapse_ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    progress: Mapped[float] = mapped_column(Float)  # 0..1 over the whole job
    stage: Mapped[str | None] = mapped_column(String(64))
    level: Mapped[int | None] = mapped_column(Integer)
    window: Mapped[int | None] = mapped_column(Integer)
    window_count: Mapped[int | None] = mapped_column(Integer)
    tokens_done: Mapped[int | None] = mapped_column(BigInteger)
    tokens_total: Mapped[int | None] = mapped_column(BigInteger)
    tokens_per_second: Mapped[float | None] = mapped_column(Float)
    eta_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # levels sampling at once: [{"level": 1, "window": 3, "window_count": 4}, …], top first
    level_windows: Mapped[list[dict[str, int]] | None] = mapped_column(JSON)

    checkpoint: Mapped[bytes | None] = mapped_column(LargeBinary)
    checkpoint_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Set once every result (or the failure) went out. Until then a bot posting them holds a claim that
    # expires (owner + expiry), so a bot killed mid-post leaves the rest to the next one.
    results_posted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    results_posting_owner: Mapped[str | None] = mapped_column(String(255))
    results_posting_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SampleRow(Base):
    __tablename__ = "samples"
    __table_args__ = (UniqueConstraint("job_id", "index", name="uq_samples_job_id_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(Integer, ForeignKey("jobs.id"))
    index: Mapped[int] = mapped_column(Integer)  # position within its job, from 0
    model: Mapped[str] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(BigInteger)
    duration_seconds: Mapped[float] = mapped_column(Float)
    levels_mask: Mapped[int] = mapped_column(Integer)  # bit L set: codes_level_L is stored
    audio: Mapped[bytes] = mapped_column(LargeBinary)
    audio_format: Mapped[str] = mapped_column(String(16))
    audio_bitrate: Mapped[int | None] = mapped_column(Integer)  # bits per second
    codes_level_0: Mapped[bytes | None] = mapped_column(LargeBinary)
    codes_level_1: Mapped[bytes | None] = mapped_column(LargeBinary)
    codes_level_2: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    message_id: Mapped[int | None] = mapped_column(BigInteger)  # the Discord message that carries it
    # A sample posted over several messages, part-way: this many of that many are out, split to fit that
    # upload limit (NULL: all of it, or none).
    message_parts_sent: Mapped[int | None] = mapped_column(Integer)
    message_parts_total: Mapped[int | None] = mapped_column(Integer)
    message_parts_limit: Mapped[int | None] = mapped_column(BigInteger)  # bytes the split fits


class VoteRow(Base):
    __tablename__ = "votes"
    __table_args__ = (UniqueConstraint("sample_id", "user_id", name="uq_votes_sample_id_user_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sample_id: Mapped[int] = mapped_column(Integer, ForeignKey("samples.id"))
    user_id: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class GuildSettingsRow(Base):
    """Per-server overrides; NULL means "use the bot-wide setting"."""

    __tablename__ = "guild_settings"

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    max_length_seconds: Mapped[float | None] = mapped_column(Float)
    max_samples_per_job: Mapped[int | None] = mapped_column(Integer)
    max_running_jobs_per_user: Mapped[int | None] = mapped_column(Integer)
    max_queued_jobs_per_user: Mapped[int | None] = mapped_column(Integer)
    allowed_channel_ids: Mapped[list[int] | None] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LeftGuildRow(Base):
    """A server the bot was removed from (`on_guild_remove`), until it is in it again: an operator's retry
    refuses its jobs, whose results the bot could not post there."""

    __tablename__ = "left_guilds"

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    left_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WorkerRow(Base):
    """A worker process and the models it can serve now (what it has complete on disk), refreshed while
    it runs; the bot reads it to know which models some worker serves."""

    __tablename__ = "workers"

    worker_id: Mapped[str] = mapped_column(String(255), primary_key=True)  # host/pid/device
    models: Mapped[list[str]] = mapped_column(JSON)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
