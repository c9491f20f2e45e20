"""`JobStore`: the durable job queue, results, votes, primes and per-server settings.

Every state change is one conditional statement (`UPDATE … WHERE <precondition>
RETURNING …`), so two bots or workers racing on the same row cannot both win, on
Postgres (row locks, READ COMMITTED) or SQLite (one writer at a time). When a
precondition fails, the row is read to say exactly why, in a `StorageError`.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn, cast

from sqlalchemy import (
    Column,
    ColumnElement,
    Interval,
    MetaData,
    Row,
    String,
    Table,
    Text,
    and_,
    case,
    delete,
    false,
    func,
    inspect,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage.engine import READ_ONLY
from storage.errors import (
    AlreadyUpsampled,
    InvalidGuildSettings,
    InvalidJob,
    InvalidPrime,
    InvalidSample,
    JobAlreadyFinished,
    JobNotFinished,
    JobNotFound,
    JobNotRetryable,
    LeaseLost,
    NotJobOwner,
    OversizeParameters,
    PrimeNotFound,
    SampleNotFound,
    ServerLeft,
    StorageError,
    UserJobLimitReached,
)
from storage.models import (
    ACTIVE_STATUSES,
    FINISHED_STATUSES,
    MAX_INTEGER,
    PRIME_SAMPLE_WIDTH,
    UNFINISHED_STATUSES,
    GuildSettingsRow,
    JobKind,
    JobRow,
    JobStatus,
    LeftGuildRow,
    PrimeRow,
    SampleRow,
    UTCDateTime,
    VoteRow,
    WorkerRow,
    utcnow,
)
from storage.records import (
    ClaimedJob,
    GuildSettings,
    Heartbeat,
    Job,
    LevelWindow,
    MessageParts,
    NewSample,
    Prime,
    PruneReport,
    RankedSample,
    ResultsClaim,
    Sample,
    SampleInfo,
    SampleOrigin,
    StoredPiece,
    UserJobCounts,
    WorkerSeen,
)

MAX_PARAMS_BYTES = 64 * 1024  # serialised JSON; lyrics are the big part
MAX_ERROR_CHARS = 4000


def _error_text(text: str) -> str:
    """A job's error as a text column takes it: at most MAX_ERROR_CHARS, no NUL (Postgres refuses
    one in text) and no lone surrogate (neither database can encode one). An exception's message may
    hold either (a path, a byte read back); refused, the job stayed running until its lease ran out."""
    cleaned = text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    return cleaned[:MAX_ERROR_CHARS]


MAX_SNOWFLAKE = 2**63 - 1
CODE_LEVELS = (0, 1, 2)
CODE_BYTES = 2  # codes are stored as int16

Clock = Callable[[], datetime]

jobs = cast(Table, JobRow.__table__)
samples = cast(Table, SampleRow.__table__)
votes = cast(Table, VoteRow.__table__)
primes = cast(Table, PrimeRow.__table__)
guild_settings = cast(Table, GuildSettingsRow.__table__)
left_guilds = cast(Table, LeftGuildRow.__table__)
workers = cast(Table, WorkerRow.__table__)

# A worker says which models it serves at least this often (and whenever that changes)…
WORKER_PRESENCE_SECONDS = 30.0
# …so a row older than this is a worker that stopped without saying so (killed, machine down).
WORKER_STALE_SECONDS = 4 * WORKER_PRESENCE_SECONDS
FORGET_WORKER_AFTER = timedelta(days=1)  # stale rows are deleted after this long

# A job's params as the text stored, decoded by `_read_params`: one damaged row (a hand edit, a JSON
# value that is no object) must not make every listing or claim that reads it raise.
PARAMS_TEXT = sql_cast(jobs.c.params, Text).label("params")
# Params that cannot be read come out as {UNREADABLE_PARAMS_KEY: why}: a mapping like any other to
# the bot (which shows params it cannot parse as the defaults), but no valid job spec; `claim` fails
# such a job instead of handing it to a worker.
UNREADABLE_PARAMS_KEY = "unreadable_stored_params"
# Alembic's own table (its default name and column): which migrations the database has.
_ALEMBIC_VERSION = Table("alembic_version", MetaData(), Column("version_num", String(32), primary_key=True))
# Listings leave the (possibly megabytes of) checkpoint in the database, and the lease's length.
_NOT_LISTED = {"checkpoint", "lease_seconds"}
JOB_COLUMNS = [
    PARAMS_TEXT if column.name == "params" else column for column in jobs.c if column.name not in _NOT_LISTED
] + [jobs.c.checkpoint.is_not(None).label("has_checkpoint")]
CLAIMED_JOB_COLUMNS = [*JOB_COLUMNS, jobs.c.checkpoint]
CLAIMED_JOB_COLUMNS_WITHOUT_BLOB = [*JOB_COLUMNS, func.length(jobs.c.checkpoint).label("checkpoint_bytes")]
SAMPLE_INFO_COLUMNS = [
    column for column in samples.c if column.name not in {"audio", *(f"codes_level_{i}" for i in CODE_LEVELS)}
]
# The order a worker takes queued jobs in; queue positions count in the same order. Ids are handed
# out one enqueue at a time (see `JobStore.enqueue`), so they are the order jobs arrived in;
# `created_at` is read from a clock before that and can disagree (with other bots, or a later lock).
CLAIM_ORDER = (jobs.c.priority, jobs.c.id)
# Postgres advisory lock that lets one enqueue at a time count the user's jobs and insert.
ENQUEUE_LOCK_KEY = int.from_bytes(b"jukebotQ", "big")
# Postgres advisory lock that lets one claim at a time count the user's running jobs and take one.
CLAIM_LOCK_KEY = int.from_bytes(b"jukebotC", "big")


def claim_order_key(job: Job) -> tuple[int, int]:
    """`CLAIM_ORDER` for a job already read: sort queued jobs by it to number their places."""
    return (job.priority, job.id)


@dataclass(frozen=True)
class QueuePlaces:
    """Where queued jobs stand, by the rules `claim` takes them by: `place` numbers those that go to
    the next free workers in turn; `held` are those waiting for one of their user's running jobs to
    end (their user's running limit), which jobs behind them pass; `unserved` those whose model no
    live worker serves (when that was asked), which take no place either."""

    place: dict[int, int]
    held: frozenset[int]
    unserved: frozenset[int] = frozenset()


def queue_places(unfinished: Iterable[Job], served: Collection[str] | None = None) -> QueuePlaces:
    """The places of the queued jobs among `unfinished` (every unfinished job, of every server).

    With `served` (the models live workers serve, `JobStore.served_models`), jobs of other models
    are `unserved`: no worker takes them now, so the jobs behind them move up. An empty `served`
    counts every model, as None does: with no worker up at all (they restart, say) the order of the
    queue is still the news, and every queued message would flip twice for nothing."""
    unfinished = list(unfinished)
    served = served or None
    busy: dict[tuple[int, int | None], int] = {}  # (user, server) -> jobs running, or placed before
    for job in unfinished:
        if job.status in ACTIVE_STATUSES:
            busy[job.user_id, job.guild_id] = busy.get((job.user_id, job.guild_id), 0) + 1
    place: dict[int, int] = {}
    held: set[int] = set()
    unserved: set[int] = set()
    for job in sorted((j for j in unfinished if j.status == JobStatus.QUEUED), key=claim_order_key):
        if served is not None and job.model not in served:
            unserved.add(job.id)
            continue
        mine = busy.get((job.user_id, job.guild_id), 0)
        if job.max_running_per_user is not None and mine >= job.max_running_per_user:
            held.add(job.id)
            continue
        place[job.id] = len(place) + 1
        busy[job.user_id, job.guild_id] = mine + 1  # the next of theirs waits for this one
    return QueuePlaces(place, frozenset(held), frozenset(unserved))


def _job(row: Row[Any]) -> Job:
    values = dict(row._mapping)
    values.pop("checkpoint", None)
    return Job(**_job_fields(values))


def _claimed_job(row: Row[Any]) -> ClaimedJob:
    values = dict(row._mapping)
    # From the checkpoint (or its length) itself: SQLite (3.40) answers `checkpoint IS NOT NULL` in a
    # RETURNING clause with true for a NULL checkpoint.
    if "checkpoint_bytes" in values:
        values["has_checkpoint"] = values.pop("checkpoint_bytes") is not None
        values["checkpoint"] = None
    else:
        values["has_checkpoint"] = values["checkpoint"] is not None
    return ClaimedJob(**_job_fields(values))


def _read_params(stored: object) -> dict[str, Any]:
    """A job's params from their stored text; `{UNREADABLE_PARAMS_KEY: why}` when they are no JSON object."""
    if not isinstance(stored, str):
        return {UNREADABLE_PARAMS_KEY: "the job has no parameters stored"}
    try:
        value = json.loads(stored)
    except ValueError as exc:
        return {UNREADABLE_PARAMS_KEY: f"the stored parameters are not valid JSON ({exc})"}
    if not isinstance(value, dict):
        return {
            UNREADABLE_PARAMS_KEY: f"the stored parameters are a JSON {type(value).__name__}, not an object"
        }
    return value


def unreadable_params(params: Mapping[str, Any]) -> str | None:
    """Why a job's stored params could not be read, or None when they could (see `UNREADABLE_PARAMS_KEY`)."""
    if len(params) == 1 and isinstance(reason := params.get(UNREADABLE_PARAMS_KEY), str):
        return reason
    return None


def _job_fields(values: dict[str, Any]) -> dict[str, Any]:
    values["params"] = _read_params(values["params"])
    values["kind"] = JobKind(values["kind"])
    values["status"] = JobStatus(values["status"])
    values["has_checkpoint"] = bool(values["has_checkpoint"])
    values["level_windows"] = tuple(LevelWindow(**window) for window in values.get("level_windows") or ())
    return values


def _levels(mask: int) -> tuple[int, ...]:
    return tuple(level for level in CODE_LEVELS if mask & (1 << level))


def _sample_info(row: RowMapping) -> SampleInfo:
    values = {column.name: row[column.name] for column in SAMPLE_INFO_COLUMNS}
    values["levels"] = _levels(values.pop("levels_mask"))
    return SampleInfo(**values)


def _sample(row: Row[Any]) -> Sample:
    values = dict(row._mapping)
    values["levels"] = _levels(values.pop("levels_mask"))
    return Sample(**values)


def _check_snowflake(name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SNOWFLAKE:
        raise InvalidJob(f"{name} must be a Discord id (a non-negative integer), got {value!r}")


def _check_count(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_INTEGER:
        raise InvalidJob(f"{name} must be an integer from {minimum} to {MAX_INTEGER:,}, got {value!r}")


def _serialise_params(params: object) -> dict[str, Any]:
    """Check params are a JSON object under the size limit; return them as they will read back."""
    if not isinstance(params, Mapping) or not all(isinstance(key, str) for key in params):
        raise InvalidJob("job parameters must be a JSON object (a mapping with string keys)")
    if UNREADABLE_PARAMS_KEY in params:
        raise InvalidJob(f"job parameters cannot use the key {UNREADABLE_PARAMS_KEY!r}")
    try:
        text = json.dumps(params, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidJob(
            f"job parameters must be plain JSON (text, numbers, lists, objects): {exc}"
        ) from None
    size = len(text.encode())
    if size > MAX_PARAMS_BYTES:
        raise OversizeParameters(
            f"The job's parameters are {size:,} bytes; the limit is {MAX_PARAMS_BYTES:,} bytes. "
            "Shorten the lyrics (or other text) and try again."
        )
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _check_new_sample(sample: NewSample, job_model: str) -> dict[str, Any]:
    """Validate one finished sample and return its column values (without job_id)."""
    where = f"sample {sample.index!r}"
    if isinstance(sample.index, bool) or not isinstance(sample.index, int) or sample.index < 0:
        raise InvalidSample(f"{where}: the index within the job must be an integer >= 0")
    if isinstance(sample.seed, bool) or not isinstance(sample.seed, int) or abs(sample.seed) > MAX_SNOWFLAKE:
        raise InvalidSample(f"{where}: the seed must be a 64-bit integer, got {sample.seed!r}")
    if not math.isfinite(sample.duration_seconds) or sample.duration_seconds < 0:
        raise InvalidSample(f"{where}: duration must be a finite number of seconds >= 0")
    if not isinstance(sample.audio, bytes | bytearray) or not sample.audio:
        raise InvalidSample(f"{where}: the compressed audio is empty")
    if not sample.audio_format or len(sample.audio_format) > 16:
        raise InvalidSample(f"{where}: audio_format must name the format, e.g. 'ogg' or 'mp3'")
    mask = 0
    codes: dict[str, bytes | None] = {}
    for level in CODE_LEVELS:
        data = getattr(sample, f"codes_level_{level}")
        if data is not None:
            if not isinstance(data, bytes | bytearray) or len(data) % CODE_BYTES:
                raise InvalidSample(
                    f"{where}: codes of level {level} must be int16 bytes (an even byte count)"
                )
            mask |= 1 << level
            data = bytes(data)
        codes[f"codes_level_{level}"] = data
    return {
        "index": sample.index,
        "model": sample.model or job_model,
        "seed": sample.seed,
        "duration_seconds": float(sample.duration_seconds),
        "levels_mask": mask,
        "audio": bytes(sample.audio),
        "audio_format": sample.audio_format,
        "audio_bitrate": sample.audio_bitrate,
        **codes,
    }


def _lease_cleared() -> dict[str, Any]:
    return {"lease_owner": None, "lease_expires_at": None, "lease_seconds": None, "lease_lapse_ends_at": None}


# The jobs an operator may put back in the queue (`JobStore.retry_job`), and whose leftovers
# `JobStore.prune_finished` frees once they are old.
RETRYABLE_STATUSES = (JobStatus.FAILED, JobStatus.CANCELLED)
# Job ids are 32-bit integers on Postgres (`Integer`): a larger id names no job.
MAX_JOB_ID = MAX_INTEGER
# The error `cancel_guild_jobs` leaves on the jobs of a server the bot was removed from.
LEFT_SERVER_REASON = "the bot was removed from this server"
CHANNEL_DELETED_REASON = "its channel was deleted"
# How the error of a job that crashed on every attempt begins (`retry`); what follows is the worker's
# last exception, for the operator (paths, hosts), which the bot does not show in public.
GAVE_UP_AFTER_CRASHES = "The sampler crashed on all "
MAX_ETA_SECONDS = 365 * 24 * 3600.0  # an estimate further off is no estimate (and past it, dates overflow)


def running_limit_in_force(server_limit: int | None, bot_wide: int) -> int:
    """A user's running-jobs limit in a server: the server's own (`/jukebot-admin limits`, kept in
    guild_settings) where it is tighter than the bot-wide setting (JUKEBOT_MAX_RUNNING_JOBS_PER_USER),
    which is the operator's ceiling: a server's admin may not take more of the shared GPUs. The bot's
    `Limits` and `JobStore.retry_job` both take it from here."""
    return bot_wide if server_limit is None else min(server_limit, bot_wide)


def _could_be_job_id(job_id: object) -> bool:
    """Whether `job_id` fits the id column (1..MAX_JOB_ID): any other names no job, and must not reach
    the database (Postgres refuses an int4 parameter out of range; SQLite one past 64 bits)."""
    return not isinstance(job_id, bool) and isinstance(job_id, int) and 1 <= job_id <= MAX_JOB_ID


async def _sizes(connection: AsyncConnection, statement: Any) -> dict[int, int]:
    """The (id, size) rows a `prune_finished` statement selects, as a dict."""
    return {int(row[0]): int(row[1]) for row in await connection.execute(statement)}


def _finished_before(table: Any, cutoff: ColumnElement[datetime]) -> ColumnElement[bool]:
    """The rows of `table` (jobs, or an alias) failed or cancelled before `cutoff`: never true for a row
    without a finish time, NOT of it neither NULL (three-valued logic would keep it out of both)."""
    return and_(
        table.c.status.in_([status.value for status in RETRYABLE_STATUSES]),
        table.c.finished_at.is_not(None),
        table.c.finished_at < cutoff,
    )


# A prime clip whose audio `prune_finished` dropped: the row stays (jobs point at it; its length
# still tells a picture how much was primed), with no audio.
PRIME_PRUNED = func.length(primes.c.pcm) == 0
# A clip stored this long ago that no job uses was left by a request that failed between storing it and
# queueing its job (the database went away, the bot stopped): `prune_finished` drops its audio. Far
# longer than that gap (seconds), and than any clock skew between the bot that stamped the clip and
# the clock prune reads.
ORPHANED_CLIP_AGE = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class _Owner:
    status: JobStatus
    lease_owner: str | None


class JobStore:
    """The database side of jukebot. Pass an engine from `storage.create_engine`.

    Leases (a worker's on its job, a bot's on posting a job's results) are decided by one clock every
    worker and bot shares: the database's on Postgres (those on several machines would otherwise
    steal or strand jobs by their clock skew), and on SQLite, which
    lives on one machine, that machine's. Jobs' finish times are stamped by it too, and `prune_finished`
    measures their age by it. `clock` (timezone-aware UTC) replaces it, and stamps rows; tests pass a
    controllable one.
    """

    def __init__(self, engine: AsyncEngine, *, clock: Clock | None = None) -> None:
        self.engine = engine
        self._lease_clock = clock
        self._clock = clock or utcnow

    def _lease_now(self) -> ColumnElement[datetime]:
        """Now, for deciding whether a lease has run out (see the class docstring)."""
        if self._lease_clock is None and self.engine.dialect.name == "postgresql":
            return func.statement_timestamp(type_=UTCDateTime())
        return literal(self._clock(), UTCDateTime())

    def _lease_end(self, lease_seconds: float) -> ColumnElement[datetime]:
        """When a lease taken or renewed now runs out, by the same clock as `_lease_now`."""
        return self._lease_now_plus(timedelta(seconds=lease_seconds))

    def _lease_renewed(self, lease_seconds: float) -> dict[str, Any]:
        """The values of a lease taken or renewed now (a lapse seen earlier is forgotten)."""
        return {
            "lease_expires_at": self._lease_end(lease_seconds),
            "lease_seconds": lease_seconds,
            "lease_lapse_ends_at": None,
        }

    def _lapse_over(self, now: ColumnElement[datetime]) -> ColumnElement[bool]:
        """Whether a lease that ran out (by `now`) may be taken over: a lease after it was first seen
        run out (`_note_lapses`), or at once if taken before that rule (no length kept)."""
        return or_(
            jobs.c.lease_seconds.is_(None),
            and_(jobs.c.lease_lapse_ends_at.is_not(None), jobs.c.lease_lapse_ends_at < now),
        )

    async def _note_lapses(
        self, connection: AsyncConnection, *which: ColumnElement[bool], now: datetime | None = None
    ) -> None:
        """Note, for each lease among `which` seen run out for the first time, that it may be taken
        over a lease from now (by the lease clock, or `now`); a heartbeat forgets it.

        A worker cut off from the database for longer than its lease renews it once it sees the
        database back (on Postgres within 5/6 of a lease: a heartbeat try cut short at a quarter,
        its pause of at most a third, the next try; SQLite is a local file, its writers wait in turn).
        Whoever looks first (a claim, a recovery pass) may have seen no outage: one that fell between
        its calls, or one on the worker's path alone. Taken over at once, the job lost every window
        sampled meanwhile, and an attempt."""
        expired_before = self._lease_time(now)
        unseen = (
            await connection.execute(
                select(jobs.c.id, jobs.c.lease_seconds)
                .where(
                    jobs.c.status.in_([status.value for status in ACTIVE_STATUSES]),
                    jobs.c.lease_expires_at < expired_before,
                    jobs.c.lease_lapse_ends_at.is_(None),
                    jobs.c.lease_seconds.is_not(None),
                    *which,
                )
                .with_for_update(skip_locked=True)  # a row being written waits for a later look
            )
        ).all()
        by_length: dict[float, list[int]] = {}
        for row in unseen:
            by_length.setdefault(row.lease_seconds, []).append(row.id)
        for lease_seconds, ids in sorted(by_length.items()):
            end = self._lease_time(now, timedelta(seconds=lease_seconds))
            await connection.execute(
                update(jobs)
                .where(jobs.c.id.in_(ids), jobs.c.lease_lapse_ends_at.is_(None))
                .values(lease_lapse_ends_at=end)
            )

    def _lease_time(self, now: datetime | None, offset: timedelta = timedelta()) -> ColumnElement[datetime]:
        """`now` (a test's, replacing the lease clock) moved by `offset`; None: the lease clock's now."""
        if now is not None:
            return literal(now + offset, UTCDateTime())
        return self._lease_now_plus(offset) if offset else self._lease_now()

    def _lease_now_plus(self, offset: timedelta) -> ColumnElement[datetime]:
        """`_lease_now()` moved by `offset` (negative: a time in the past), by the same clock."""
        if self._lease_clock is None and self.engine.dialect.name == "postgresql":
            moved = func.statement_timestamp() + literal(offset, Interval())
            return sql_cast(moved, UTCDateTime())
        return literal(self._clock() + offset, UTCDateTime())

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that may write (on SQLite it takes the write lock up front)."""
        async with self.engine.begin() as connection:
            yield connection

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that only reads: on SQLite it reads the last commit and never waits for a writer."""
        async with self.engine.connect() as connection:
            await connection.execution_options(**{READ_ONLY: True})
            async with connection.begin():
                yield connection

    def _insert(self, table: Any) -> Any:
        """An INSERT that supports ON CONFLICT on this database."""
        dialect = sqlite if self.engine.dialect.name == "sqlite" else postgresql
        return dialect.insert(table)

    # ------------------------------------------------------------------ enqueue

    async def enqueue(
        self,
        *,
        kind: JobKind | str,
        model: str,
        params: Mapping[str, Any],
        channel_id: int,
        user_id: int,
        guild_id: int | None = None,
        priority: int = 0,
        max_attempts: int = 3,
        parent_sample_id: int | None = None,
        prime_id: int | None = None,
        max_running_per_user: int | None = None,
        max_queued_per_user: int | None = None,
        server_overrides: bool = False,
        max_unfinished_per_user_all_servers: int | None = None,
    ) -> int:
        """Queue a job and return its id. Lower `priority` runs first. Nothing is written on error.

        With `max_running_per_user` / `max_queued_per_user`, the user's unfinished jobs in the
        server are counted in the insert's transaction, one enqueue at a time, so a burst cannot
        overshoot: one job too many raises `UserJobLimitReached`. The job keeps
        `max_running_per_user`: `claim` leaves it queued while that many of the user's jobs run.
        With `server_overrides`, those two stand for the bot-wide settings, and the server's own limits
        (tighter ones: the bot-wide settings are the operator's ceilings)
        (`change_guild_settings`) take their place where it has them, read in the insert's transaction:
        an admin's change lands wholly before the job is queued or wholly after (when it reaches the
        job as it reaches every unfinished one), never half-way, as it could between a caller's read and
        this insert (a clip's download).

        With `max_unfinished_per_user_all_servers`, the user's queued and running jobs in every server
        together are counted the same way (`UserJobLimitReached(all_servers=True)`).

        A job for a server the bot was removed from and is not in again raises `ServerLeft`.
        """
        try:
            job_kind = JobKind(kind)
        except ValueError:
            known = ", ".join(member.value for member in JobKind)
            raise InvalidJob(f"Unknown job kind {kind!r}; use one of: {known}.") from None
        if job_kind is JobKind.CURATE:  # no worker runs it: `store_curation` records the finished piece
            raise InvalidJob("A curate job is not queued: store the finished piece with store_curation.")
        if not isinstance(model, str) or not model.strip() or len(model) > 64:
            raise InvalidJob(f"model must be a model name such as '5b_lyrics', got {model!r}")
        stored_params = _serialise_params(params)
        _check_snowflake("guild_id", guild_id, optional=True)
        _check_snowflake("channel_id", channel_id)
        _check_snowflake("user_id", user_id)
        if isinstance(priority, bool) or not isinstance(priority, int) or abs(priority) > MAX_INTEGER:
            raise InvalidJob(f"priority must be an integer, got {priority!r}")
        _check_count("max_attempts", max_attempts, minimum=1)
        for name, limit in (
            ("max_running_per_user", max_running_per_user),
            ("max_queued_per_user", max_queued_per_user),
            ("max_unfinished_per_user_all_servers", max_unfinished_per_user_all_servers),
        ):
            if limit is not None:
                _check_count(name, limit, minimum=1)
        if job_kind in (JobKind.UPSAMPLE, JobKind.CONTINUE) and parent_sample_id is None:
            raise InvalidJob(
                f"A {job_kind.value} job needs the sample to {job_kind.value} (parent_sample_id)."
            )

        async with self._transaction() as connection:
            await self._one_enqueue_at_a_time(connection)
            now = self._clock()
            if guild_id is not None:
                left = await connection.scalar(
                    select(left_guilds.c.guild_id).where(left_guilds.c.guild_id == guild_id)
                )
                if left is not None:
                    raise ServerLeft(guild_id)
            if server_overrides and guild_id is not None:
                own = await self._guild_settings(connection, guild_id)
                if max_running_per_user is not None:
                    max_running_per_user = running_limit_in_force(
                        own.max_running_jobs_per_user, max_running_per_user
                    )
                if max_queued_per_user is not None and own.max_queued_jobs_per_user is not None:
                    max_queued_per_user = min(own.max_queued_jobs_per_user, max_queued_per_user)
            await self._check_user_limits(
                connection, user_id, guild_id, max_running_per_user, max_queued_per_user
            )
            if max_unfinished_per_user_all_servers is not None:
                await self._check_user_limit_all_servers(
                    connection, user_id, max_unfinished_per_user_all_servers
                )
            if parent_sample_id is not None:
                await self._require_sample(connection, parent_sample_id)
            if job_kind is JobKind.UPSAMPLE:
                assert parent_sample_id is not None
                await self._refuse_second_upsample(connection, parent_sample_id)
            if prime_id is not None:
                found = await connection.scalar(select(primes.c.id).where(primes.c.id == prime_id))
                if found is None:
                    raise PrimeNotFound(prime_id)
            job_id = await connection.scalar(
                jobs.insert()
                .values(
                    guild_id=guild_id,
                    channel_id=channel_id,
                    user_id=user_id,
                    kind=job_kind.value,
                    model=model,
                    params=stored_params,
                    parent_sample_id=parent_sample_id,
                    prime_id=prime_id,
                    status=JobStatus.QUEUED.value,
                    priority=priority,
                    attempts=0,
                    max_attempts=max_attempts,
                    max_running_per_user=max_running_per_user,
                    progress=0.0,
                    created_at=now,
                    updated_at=now,
                )
                .returning(jobs.c.id)
            )
        assert job_id is not None
        return int(job_id)

    async def set_running_limit_of_unfinished(self, guild_id: int, max_running_per_user: int | None) -> int:
        """Give the server's unfinished jobs a new running-jobs limit (an admin changed it: it applies to
        the jobs already waiting too, and to running ones once they go back to the queue: a restart
        must not bring the old limit back); returns how many jobs changed."""
        if max_running_per_user is not None:
            _check_count("max_running_per_user", max_running_per_user, minimum=1)
        async with self._transaction() as connection:
            await self._one_enqueue_at_a_time(connection)  # a job being queued now is reached too
            return await self._set_running_limit(connection, guild_id, max_running_per_user)

    async def _set_running_limit(
        self, connection: AsyncConnection, guild_id: int, max_running_per_user: int | None
    ) -> int:
        result = await connection.execute(
            update(jobs)
            .where(
                jobs.c.guild_id == guild_id,
                jobs.c.status.in_([status.value for status in UNFINISHED_STATUSES]),
            )
            .values(max_running_per_user=max_running_per_user, updated_at=self._clock())
            .returning(jobs.c.id)
        )
        return len(result.all())

    async def _refuse_second_upsample(self, connection: AsyncConnection, sample_id: int) -> None:
        """An upsample of a sample that one queued, running or done already covers is refused (the
        enqueue lock makes a burst of clicks count too); after a failure or a cancel it may run again."""
        earlier = await _upsample_covering(connection, sample_id)
        if earlier is not None:
            raise earlier

    async def upsample_covering(self, sample_id: int) -> AlreadyUpsampled | None:
        """The upsample job, queued, running or done, that a new upsample of the sample would repeat
        (as the refusal `enqueue` would raise), or None: for a refusal before any other check."""
        async with self._reading() as connection:
            return await _upsample_covering(connection, sample_id)

    async def _one_enqueue_at_a_time(self, connection: AsyncConnection) -> None:
        """Hold the enqueue lock until the transaction ends.

        Then the user's job count cannot change between counting and inserting, and ids are
        committed in the order they are handed out, so a queue position read right after an
        enqueue is never shared with another job. SQLite: the write transaction (BEGIN
        IMMEDIATE) already runs alone. Postgres: a transaction-scoped advisory lock.
        """
        if self.engine.dialect.name == "postgresql":
            await connection.execute(select(func.pg_advisory_xact_lock(ENQUEUE_LOCK_KEY)))

    async def _check_user_limits(
        self,
        connection: AsyncConnection,
        user_id: int,
        guild_id: int | None,
        max_running: int | None,
        max_queued: int | None,
    ) -> None:
        if max_running is None and max_queued is None:
            return
        in_guild = jobs.c.guild_id.is_(None) if guild_id is None else jobs.c.guild_id == guild_id
        rows = (
            await connection.execute(
                select(jobs.c.id, jobs.c.status)
                .where(
                    jobs.c.user_id == user_id,
                    in_guild,
                    jobs.c.status.in_([status.value for status in UNFINISHED_STATUSES]),
                )
                .order_by(jobs.c.id)
            )
        ).all()
        active = {status.value for status in ACTIVE_STATUSES}
        running = tuple(row.id for row in rows if row.status in active)
        queued = tuple(row.id for row in rows if row.status == JobStatus.QUEUED.value)
        if max_running is not None and len(running) >= max_running:
            raise UserJobLimitReached(running=True, job_ids=running, limit=max_running)
        if max_queued is not None and len(queued) >= max_queued:
            raise UserJobLimitReached(running=False, job_ids=queued, limit=max_queued)

    async def check_user_limit_all_servers(self, user_id: int, limit: int) -> None:
        """Raise `UserJobLimitReached(all_servers=True)` when the user has `limit` unfinished jobs in
        all servers together: a quick check before the work of a request (`enqueue` checks again)."""
        async with self._reading() as connection:
            await self._check_user_limit_all_servers(connection, user_id, limit)

    async def _check_user_limit_all_servers(
        self, connection: AsyncConnection, user_id: int, limit: int
    ) -> None:
        unfinished = tuple(
            await connection.scalars(
                select(jobs.c.id)
                .where(
                    jobs.c.user_id == user_id,
                    jobs.c.status.in_([status.value for status in UNFINISHED_STATUSES]),
                )
                .order_by(jobs.c.id)
            )
        )
        if len(unfinished) >= limit:
            raise UserJobLimitReached(running=False, job_ids=unfinished, limit=limit, all_servers=True)

    # ------------------------------------------------------------------ worker side

    async def claim(
        self,
        worker_id: str,
        models: Collection[str],
        lease_seconds: float,
        *,
        orphaned_by: Collection[str] = (),
        with_checkpoint: bool = True,
        reclaim_own: bool = False,
    ) -> ClaimedJob | None:
        """Take the next job for one of `models`, or None when there is none.

        `with_checkpoint=False` leaves the checkpoint (up to megabytes) out of the answer: the caller
        reads it with `get_checkpoint` once the job is its own, and `has_checkpoint` says whether to.
        A worker does, so that the claim, which serialises every worker's claims, stays small.

        A queued job waits while its user has as many jobs running in its server as the limit it
        was queued with (`enqueue(max_running_per_user=…)`): later jobs, other users' first, go
        ahead of it. Besides queued jobs it takes a running job whose lease ran out a lease after a
        claim or a recovery pass first saw it so (`_note_lapses`: its worker went silent), and first of all a
        running job held by one of `orphaned_by`, lease owners the caller knows are dead (a
        predecessor on its own machine and device). Taking over a job counts an attempt, as
        `requeue_expired` does; a job out of attempts is left for `requeue_expired` to fail.

        `reclaim_own=True` says the caller runs no job, yet an earlier claim of its may have been
        committed with its answer lost (the connection dropped, the call timed out): a running job
        still held under `worker_id` is then taken back before any other, its lease renewed and no
        attempt counted (nobody else ran it), one a user asked to cancel meanwhile is cancelled, and
        one of a model not in `models` (gone from the caller's disk since) goes back to the queue.
        The claims' lock (below) makes the earlier claim's commit, if any, seen here.

        One statement: the sub-select locks the row it picks (and skips rows other
        claimers hold) on Postgres; SQLite runs one writer at a time. A job whose stored params
        cannot be read (not a JSON object: a hand edit, damage) fails then, with the reason, and
        the next job is taken instead: no worker could run it, and it must not block the queue.
        """
        if not worker_id:
            raise StorageError("a worker needs a non-empty worker id to claim jobs")
        _check_lease(lease_seconds)
        if not models:
            return None
        async with self._transaction() as connection:
            # The times are read once the transaction holds the lock (SQLite's BEGIN IMMEDIATE waits for
            # it): read before, a claim that waited got a lease shortened by the wait.
            now = self._clock()
            running = and_(
                jobs.c.status == JobStatus.RUNNING.value, jobs.c.attempts + 1 < jobs.c.max_attempts
            )
            orphaned = and_(running, jobs.c.lease_owner.in_(sorted(orphaned_by)))
            own = jobs.c.lease_owner == worker_id
            lost_claim = and_(jobs.c.status == JobStatus.RUNNING.value, own) if reclaim_own else false()
            users_jobs = jobs.alias("users_jobs")
            users_running = (
                select(func.count())
                .select_from(users_jobs)
                .where(
                    users_jobs.c.user_id == jobs.c.user_id,
                    users_jobs.c.guild_id.is_not_distinct_from(jobs.c.guild_id),
                    users_jobs.c.status.in_([status.value for status in ACTIVE_STATUSES]),
                )
                .scalar_subquery()
            )
            takeable = or_(
                and_(
                    jobs.c.status == JobStatus.QUEUED.value,
                    or_(jobs.c.max_running_per_user.is_(None), users_running < jobs.c.max_running_per_user),
                ),
                and_(
                    running, jobs.c.lease_expires_at < self._lease_now(), self._lapse_over(self._lease_now())
                ),
                orphaned,
                lost_claim,
            )
            next_job = (
                select(jobs.c.id)
                .where(takeable, jobs.c.model.in_(sorted(models)))
                .order_by(case((lost_claim, 0), (orphaned, 1), else_=2), *CLAIM_ORDER)
                .limit(1)
                .with_for_update(skip_locked=True)
                .scalar_subquery()
            )
            taken_over = jobs.c.status == JobStatus.RUNNING.value
            statement = (
                update(jobs)
                .where(jobs.c.id == next_job, takeable)
                .values(
                    status=JobStatus.RUNNING.value,
                    attempts=case(
                        (and_(taken_over, ~lost_claim), jobs.c.attempts + 1), else_=jobs.c.attempts
                    ),
                    lease_owner=worker_id,
                    **self._lease_renewed(lease_seconds),
                    started_at=func.coalesce(jobs.c.started_at, literal(now, UTCDateTime())),
                    updated_at=now,
                )
                .returning(*(CLAIMED_JOB_COLUMNS if with_checkpoint else CLAIMED_JOB_COLUMNS_WITHOUT_BLOB))
            )
            if self.engine.dialect.name == "postgresql":
                # Claims one at a time: two at once could each count a user's running jobs below the
                # limit and take one each (SQLite's write transactions already run alone).
                await connection.execute(select(func.pg_advisory_xact_lock(CLAIM_LOCK_KEY)))
            await self._note_lapses(connection)  # taken over a lease after (`takeable`)
            if reclaim_own:  # its lost claim's job, cancelled meanwhile: nobody runs it, so it ends now
                await connection.execute(
                    update(jobs)
                    .where(own, jobs.c.status == JobStatus.CANCELLING.value)
                    .values(
                        status=JobStatus.CANCELLED.value,
                        finished_at=self._lease_now(),
                        updated_at=now,
                        **_lease_cleared(),
                    )
                )
                # One of a model it no longer serves (its files left the disk since): back to the queue,
                # for a worker that has it now, not held for a lease under a worker that never runs it.
                await connection.execute(
                    update(jobs)
                    .where(own, jobs.c.status == JobStatus.RUNNING.value, jobs.c.model.not_in(sorted(models)))
                    .values(status=JobStatus.QUEUED.value, updated_at=now, **_lease_cleared())
                )
            while True:  # each round fails one job of unreadable params, or ends
                row = (await connection.execute(statement)).first()
                if row is None:
                    return None
                job = _claimed_job(row)
                reason = unreadable_params(job.params)
                if reason is None:
                    return job
                await connection.execute(
                    update(jobs)
                    .where(jobs.c.id == job.id, jobs.c.lease_owner == worker_id)
                    .values(
                        status=JobStatus.FAILED.value,
                        error=_error_text(
                            f"This job cannot run: {reason}. Its parameters were damaged after it "
                            "was queued; queue it again."
                        ),
                        finished_at=self._lease_now(),
                        updated_at=now,
                        **_lease_cleared(),
                    )
                )

    async def _update_held(
        self,
        connection: AsyncConnection,
        job_id: int,
        worker_id: str,
        values: Mapping[str, Any],
        *returning: ColumnElement[Any],
    ) -> Row[Any]:
        """Apply `values` to a job `worker_id` holds (running or cancelling), or raise why not. A lease
        that ran out stays its worker's until someone takes the job (`claim`, `requeue_expired`): a
        worker cut off from the database for longer than its lease renews it, and stores what it did
        meanwhile, once the database is back. The row lock makes the two exclusive."""
        statement = (
            update(jobs)
            .where(
                jobs.c.id == job_id,
                jobs.c.lease_owner == worker_id,
                jobs.c.status.in_([status.value for status in ACTIVE_STATUSES]),
            )
            .values(**values)
            .returning(jobs.c.status, *returning)
        )
        row = (await connection.execute(statement)).first()
        if row is None:
            await self._raise_lease_lost(connection, job_id, worker_id)
        assert row is not None
        return row

    async def _owner(self, connection: AsyncConnection, job_id: int) -> _Owner:
        row = (
            await connection.execute(select(jobs.c.status, jobs.c.lease_owner).where(jobs.c.id == job_id))
        ).first()
        if row is None:
            raise JobNotFound(job_id)
        return _Owner(JobStatus(row.status), row.lease_owner)

    async def _raise_lease_lost(self, connection: AsyncConnection, job_id: int, worker_id: str) -> None:
        owner = await self._owner(connection, job_id)
        if owner.status in FINISHED_STATUSES:
            detail = f"it has already {owner.status.value}"
        elif owner.status == JobStatus.QUEUED:
            detail = "its lease expired and it went back to the queue"
        else:
            detail = f"worker {owner.lease_owner!r} holds it now"
        raise LeaseLost(job_id, worker_id, detail)

    async def heartbeat(self, job_id: int, worker_id: str, lease_seconds: float) -> Heartbeat:
        """Extend the lease; says whether the user asked to cancel. Raises `LeaseLost` if not ours,
        a lease that ran out included."""
        _check_lease(lease_seconds)
        now = self._clock()
        async with self._transaction() as connection:
            row = await self._update_held(
                connection,
                job_id,
                worker_id,
                {**self._lease_renewed(lease_seconds), "updated_at": now},
                jobs.c.lease_expires_at,
            )
        return Heartbeat(
            lease_expires_at=row.lease_expires_at,
            cancel_requested=row.status == JobStatus.CANCELLING.value,
        )

    async def save_checkpoint(self, job_id: int, worker_id: str, checkpoint: bytes) -> None:
        """Store what a resumed attempt starts from (replaces the previous checkpoint)."""
        if not isinstance(checkpoint, bytes | bytearray):
            raise StorageError(f"a checkpoint must be bytes, got {type(checkpoint).__name__}")
        now = self._clock()
        async with self._transaction() as connection:
            await self._update_held(
                connection,
                job_id,
                worker_id,
                {"checkpoint": bytes(checkpoint), "checkpoint_updated_at": now, "updated_at": now},
            )

    async def report_progress(
        self,
        job_id: int,
        worker_id: str,
        *,
        stage: str,
        progress: float,
        level: int | None = None,
        window: int | None = None,
        window_count: int | None = None,
        tokens_done: int | None = None,
        tokens_total: int | None = None,
        tokens_per_second: float | None = None,
        eta_at: datetime | None = None,
        level_windows: Sequence[LevelWindow] = (),
        eta_seconds: float | None = None,
    ) -> None:
        """Record where the job is. `progress` is the fraction of the whole job (clamped to 0..1);
        `level_windows` the levels sampling at once, if more than one may (see `Job.level_windows`).
        `eta_seconds`, the time left, sets `eta_at` by the clock leases follow (the database's on
        Postgres), rather than the worker's own, which may be off by hours."""
        fraction = min(max(float(progress), 0.0), 1.0) if math.isfinite(progress) else 0.0
        rate = tokens_per_second if tokens_per_second is None or math.isfinite(tokens_per_second) else None
        eta: datetime | ColumnElement[datetime] | None = eta_at
        if eta_seconds is not None and math.isfinite(eta_seconds):
            eta = self._lease_now_plus(timedelta(seconds=min(max(eta_seconds, 0.0), MAX_ETA_SECONDS)))
        now = self._clock()
        async with self._transaction() as connection:
            await self._update_held(
                connection,
                job_id,
                worker_id,
                {
                    "stage": stage[:64],
                    "progress": fraction,
                    "level": level,
                    "window": window,
                    "window_count": window_count,
                    "tokens_done": tokens_done,
                    "tokens_total": tokens_total,
                    "tokens_per_second": rate,
                    "eta_at": eta,
                    "level_windows": [asdict(window) for window in level_windows] or None,
                    "updated_at": now,
                },
            )

    async def complete(self, job_id: int, worker_id: str, new_samples: Sequence[NewSample]) -> list[int]:
        """Store the results and mark the job succeeded, in one transaction; returns sample ids.

        The checkpoint is dropped: the samples now hold the codes. A job that already succeeded with
        these samples (their indices and seeds) returns their ids: an earlier try of this call was
        committed with its answer lost (cut off mid-commit), and the worker tries again.
        """
        if not new_samples:
            raise InvalidSample(f"job #{job_id} cannot succeed without at least one sample")
        indices = [sample.index for sample in new_samples]
        if len(set(indices)) != len(indices):
            raise InvalidSample(f"job #{job_id}: two samples share an index ({sorted(indices)})")
        now = self._clock()
        async with self._transaction() as connection:
            job = (
                await connection.execute(
                    select(jobs.c.model, jobs.c.status, jobs.c.lease_owner).where(jobs.c.id == job_id)
                )
            ).first()
            if job is None:
                raise JobNotFound(job_id)
            if job.status == JobStatus.SUCCEEDED.value:
                stored = await self._same_samples(connection, job_id, new_samples)
                if stored is not None:
                    return stored
            if job.status not in [status.value for status in ACTIVE_STATUSES] or job.lease_owner != worker_id:
                await self._raise_lease_lost(connection, job_id, worker_id)  # before megabytes are sent
            rows = [_check_new_sample(sample, job.model) for sample in new_samples]
            # The samples (megabytes) go in first, the job's row is changed last: on Postgres that
            # update locks the row until the commit, and the worker's heartbeats, which must go on
            # renewing the lease through a long upload, update the same row. A lease lost meanwhile
            # raises there, and the rollback takes the samples with it.
            sample_ids = []
            for values in rows:
                sample_id = await connection.scalar(
                    samples.insert().values(job_id=job_id, created_at=now, **values).returning(samples.c.id)
                )
                sample_ids.append(int(sample_id))
            await self._update_held(
                connection,
                job_id,
                worker_id,
                {
                    "status": JobStatus.SUCCEEDED.value,
                    # a cancel that came too late leaves no reason on a job that succeeded
                    "error": case((jobs.c.status == JobStatus.CANCELLING.value, None), else_=jobs.c.error),
                    "progress": 1.0,
                    "checkpoint": None,
                    "checkpoint_updated_at": None,
                    "finished_at": self._lease_now(),
                    "updated_at": now,
                    **_lease_cleared(),
                },
            )
        return sample_ids

    @staticmethod
    async def _same_samples(
        connection: AsyncConnection, job_id: int, new_samples: Sequence[NewSample]
    ) -> list[int] | None:
        """The ids of the job's stored samples, in the order of `new_samples`, when they are those
        (by index and seed); else None."""
        stored = await connection.execute(
            select(samples.c.index, samples.c.id, samples.c.seed).where(samples.c.job_id == job_id)
        )
        by_index = {int(index): (int(sample_id), seed) for index, sample_id, seed in stored}
        if len(by_index) != len(new_samples) or any(
            by_index.get(sample.index, (None, None))[1] != sample.seed for sample in new_samples
        ):
            return None
        return [by_index[sample.index][0] for sample in new_samples]

    async def fail(self, job_id: int, worker_id: str, reason: str) -> None:
        """Give the job up for good with `reason` (shown to the user). The checkpoint is kept."""
        now = self._clock()
        async with self._transaction() as connection:
            await self._update_held(
                connection,
                job_id,
                worker_id,
                {
                    "status": JobStatus.FAILED.value,
                    "error": _error_text(reason or "the worker gave no reason"),
                    "finished_at": self._lease_now(),
                    "updated_at": now,
                    **_lease_cleared(),
                },
            )

    async def retry(self, job_id: int, worker_id: str, reason: str) -> JobStatus:
        """After a crash: back to `queued` with one more attempt and the error kept (checkpoint
        kept, so the next attempt resumes); `failed` with `reason` once `max_attempts` is
        reached; a job being cancelled becomes `cancelled`. Returns the new status.

        One statement: the SET expressions read the row as it was, so the attempt count,
        status and message agree even if the user cancels at the same moment.
        """
        now = self._clock()
        # Leave room for the fixed words and two counts around the reason.
        reason = _error_text(reason or "the worker gave no reason")[: MAX_ERROR_CHARS - 120]
        cancelling = jobs.c.status == JobStatus.CANCELLING.value
        attempts = jobs.c.attempts + 1
        out_of_attempts = attempts >= jobs.c.max_attempts
        gave_up = (
            literal(GAVE_UP_AFTER_CRASHES, String)
            + sql_cast(attempts, String)
            + literal(f" attempts; the last error was: {reason}", String)
        )
        will_retry = (
            literal("Attempt ", String)
            + sql_cast(attempts, String)
            + literal(" of ", String)
            + sql_cast(jobs.c.max_attempts, String)
            + literal(f" crashed ({reason}); it will be retried.", String)
        )
        async with self._transaction() as connection:
            row = await self._update_held(
                connection,
                job_id,
                worker_id,
                {
                    "status": case(
                        (cancelling, JobStatus.CANCELLED.value),
                        (out_of_attempts, JobStatus.FAILED.value),
                        else_=JobStatus.QUEUED.value,
                    ),
                    "attempts": case((cancelling, jobs.c.attempts), else_=attempts),
                    "error": case((cancelling, jobs.c.error), (out_of_attempts, gave_up), else_=will_retry),
                    "finished_at": case((or_(cancelling, out_of_attempts), self._lease_now()), else_=None),
                    "updated_at": now,
                    **_lease_cleared(),
                },
            )
        return JobStatus(row.status)

    async def release(self, job_id: int, worker_id: str) -> JobStatus:
        """Graceful shutdown: hand the job back to the queue without counting an attempt.

        The checkpoint stays, so the next worker resumes. A job being cancelled is
        cancelled instead. Returns the new status.
        """
        now = self._clock()
        cancelling = jobs.c.status == JobStatus.CANCELLING.value
        async with self._transaction() as connection:
            row = await self._update_held(
                connection,
                job_id,
                worker_id,
                {
                    "status": case((cancelling, JobStatus.CANCELLED.value), else_=JobStatus.QUEUED.value),
                    "finished_at": case((cancelling, self._lease_now()), else_=None),
                    "updated_at": now,
                    **_lease_cleared(),
                },
            )
        return JobStatus(row.status)

    async def mark_cancelled(self, job_id: int, worker_id: str) -> None:
        """The worker stopped because the user cancelled (or it otherwise gave up cleanly)."""
        now = self._clock()
        async with self._transaction() as connection:
            await self._update_held(
                connection,
                job_id,
                worker_id,
                {
                    "status": JobStatus.CANCELLED.value,
                    "finished_at": self._lease_now(),
                    "updated_at": now,
                    **_lease_cleared(),
                },
            )

    async def active_lease_owners(self) -> list[str]:
        """The workers holding running or cancelling jobs (a restarted worker looks for its predecessor)."""
        async with self._reading() as connection:
            rows = await connection.execute(
                select(jobs.c.lease_owner)
                .distinct()
                .where(
                    jobs.c.status.in_([status.value for status in ACTIVE_STATUSES]),
                    jobs.c.lease_owner.is_not(None),
                )
            )
            return sorted(row.lease_owner for row in rows)

    async def is_cancel_requested(self, job_id: int) -> bool:
        async with self._reading() as connection:
            owner = await self._owner(connection, job_id)
        return owner.status in (JobStatus.CANCELLING, JobStatus.CANCELLED)

    async def requeue_expired(
        self,
        now: datetime | None = None,
        *,
        spare_job: int | None = None,
        only_job: int | None = None,
        at_once: bool = False,
    ) -> list[tuple[int, JobStatus]]:
        """Recover jobs whose worker stopped heartbeating; returns (job id, new status) pairs.

        Back to `queued` with one more attempt (checkpoint kept); `failed` once
        `max_attempts` leases were lost; a job being cancelled becomes `cancelled`. `spare_job`, the
        one the worker scanning runs now (it knows it is alive), is left alone; `only_job`: that one
        alone is looked at (the operator's cancel or retry). `now` (for tests) replaces the lease clock.

        A lease that ran out is recovered only a lease after it was first seen run out (see
        `_note_lapses`); `at_once`: as soon as it ran out (a cancel, which a live worker would obey).
        """
        if only_job is not None and not _could_be_job_id(only_job):
            return []  # names no job
        expired_before = self._lease_time(now)
        which = (
            true() if spare_job is None else jobs.c.id != spare_job,
            true() if only_job is None else jobs.c.id == only_job,
        )
        lapse_over = true() if at_once else self._lapse_over(expired_before)
        lease_clock, now = now, now or self._clock()
        changed: list[tuple[int, JobStatus]] = []
        async with self._transaction() as connection:
            if not at_once:
                await self._note_lapses(connection, *which, now=lease_clock)
            expired = (
                await connection.execute(
                    select(jobs.c.id, jobs.c.status, jobs.c.attempts, jobs.c.max_attempts, jobs.c.lease_owner)
                    .where(
                        jobs.c.status.in_([status.value for status in ACTIVE_STATUSES]),
                        jobs.c.lease_expires_at < expired_before,
                        lapse_over,
                        *which,
                    )
                    .order_by(jobs.c.id)
                    # A row another transaction holds (its worker's write in flight, or a client that
                    # vanished mid-write, until the server ends it) waits for a later pass; the others
                    # are recovered now.
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for job in expired:
                attempts = job.attempts + 1
                values: dict[str, Any] = {"updated_at": now, **_lease_cleared()}
                if job.status == JobStatus.CANCELLING.value:
                    new_status = JobStatus.CANCELLED
                    values |= {"finished_at": self._lease_now()}
                elif attempts >= job.max_attempts:
                    new_status = JobStatus.FAILED
                    values |= {
                        "attempts": attempts,
                        "finished_at": self._lease_now(),
                        "error": (
                            f"The worker stopped responding {attempts} times (last worker: "
                            f"{job.lease_owner}); "
                            "the job was given up."
                        ),
                    }
                else:
                    new_status = JobStatus.QUEUED
                    values |= {"attempts": attempts}
                # Re-check the lease in the same statement: a heartbeat may have landed since.
                result = await connection.execute(
                    update(jobs)
                    .where(
                        jobs.c.id == job.id,
                        jobs.c.status == job.status,
                        jobs.c.lease_owner == job.lease_owner,
                        jobs.c.lease_expires_at < expired_before,
                        lapse_over,
                    )
                    .values(status=new_status.value, **values)
                    .returning(jobs.c.id)
                )
                if result.first() is not None:
                    changed.append((job.id, new_status))
        return changed

    # ------------------------------------------------------------------ bot side

    async def request_cancel(
        self, job_id: int, user_id: int | None, *, reason: str | None = None
    ) -> JobStatus:
        """The job's owner `user_id` (None: a moderator, for any owner) asks to stop it: queued ->
        cancelled now, running -> cancelling. `reason` is shown with it (see `_cancel`).

        Returns the new status (asking again while cancelling returns `cancelling`).
        """
        if not _could_be_job_id(job_id):
            raise JobNotFound(job_id)
        which = [jobs.c.id == job_id] if user_id is None else [jobs.c.id == job_id, jobs.c.user_id == user_id]
        async with self._transaction() as connection:
            row = (
                await connection.execute(self._cancel(*which, reason=reason).returning(jobs.c.status))
            ).first()
            if row is not None:
                return JobStatus(row.status)
            current = (
                await connection.execute(select(jobs.c.user_id, jobs.c.status).where(jobs.c.id == job_id))
            ).first()
        if current is None:
            raise JobNotFound(job_id)
        if user_id is not None and current.user_id != user_id:
            raise NotJobOwner(job_id)
        status = JobStatus(current.status)
        if status in FINISHED_STATUSES:
            raise JobAlreadyFinished(job_id, status.value)
        return status

    async def cancel_guild_jobs(self, guild_id: int) -> list[tuple[int, JobStatus]]:
        """The bot left the server: its queued jobs are cancelled, its running ones stop after their
        current step (nobody there could see their results). Returns (job id, new status) pairs.
        Under the enqueue lock: a job being queued for the server meanwhile is cancelled here, or
        refused (`ServerLeft`)."""
        async with self._transaction() as connection:
            await self._one_enqueue_at_a_time(connection)
            rows = await connection.execute(
                self._cancel(jobs.c.guild_id == guild_id, reason=LEFT_SERVER_REASON).returning(
                    jobs.c.id, jobs.c.status
                )
            )
            # Kept until the bot is in the server again (`mark_guilds_present`): `retry_job` refuses its jobs.
            left = {"left_at": self._clock()}
            statement = self._insert(left_guilds).values(guild_id=guild_id, **left)
            await connection.execute(statement.on_conflict_do_update(index_elements=["guild_id"], set_=left))
            return sorted((row.id, JobStatus(row.status)) for row in rows)

    async def cancel_queued_in_channel(self, channel_id: int) -> list[int]:
        """The channel or thread was deleted: its queued jobs are cancelled (no worker spends hours on
        results nobody could see there); running ones finish, their samples kept for `/sample` and
        `/history`. Returns the ids cancelled."""
        _check_snowflake("channel_id", channel_id)
        async with self._transaction() as connection:
            rows = await connection.execute(
                self._cancel(
                    jobs.c.channel_id == channel_id,
                    jobs.c.status == JobStatus.QUEUED.value,
                    reason=CHANNEL_DELETED_REASON,
                ).returning(jobs.c.id)
            )
            return sorted(row.id for row in rows)

    async def mark_guilds_present(self, guild_ids: Iterable[int]) -> None:
        """The bot is in these servers (again): their jobs may be retried. Called when it starts and when
        it joins a server."""
        wanted = sorted(set(guild_ids))
        for start in range(0, len(wanted), 1000):  # bounded statements for a bot in many servers
            async with self._transaction() as connection:
                await connection.execute(
                    delete(left_guilds).where(left_guilds.c.guild_id.in_(wanted[start : start + 1000]))
                )

    def _cancel(self, *which: ColumnElement[bool], reason: str | None = None) -> Any:
        """The cancel of the queued and running jobs `which` selects: queued -> cancelled now,
        running -> cancelling (its worker stops after the current step). `reason` (e.g. "by a
        moderator") is kept as the job's error for its progress message; None clears an earlier
        crash's note, which is no longer the news."""
        now = self._clock()
        queued = jobs.c.status == JobStatus.QUEUED.value
        return (
            update(jobs)
            .where(*which, jobs.c.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]))
            .values(
                status=case((queued, JobStatus.CANCELLED.value), else_=JobStatus.CANCELLING.value),
                finished_at=case((queued, self._lease_now()), else_=None),
                error=None if reason is None else _error_text(reason),
                updated_at=now,
            )
        )

    # ------------------------------------------------------------------ operator: list, retry, prune

    async def list_jobs(self, status: JobStatus | str | None = None, limit: int = 20) -> list[Job]:
        """Every job, or those of one `status`, newest first (at most `limit`, 1 to 1000)."""
        _check_page(limit, 0)
        statement = select(*JOB_COLUMNS)
        if status is not None:
            try:
                wanted = JobStatus(status)
            except ValueError:
                known = ", ".join(member.value for member in JobStatus)
                raise StorageError(f"Unknown job status {status!r}; use one of: {known}.") from None
            statement = statement.where(jobs.c.status == wanted.value)
        return await self._jobs(statement.order_by(jobs.c.id.desc()).limit(limit))

    async def retry_job(self, job_id: int, *, bot_wide_running_limit: int | None = None) -> Job:
        """An operator puts a failed or cancelled job back in the queue (its cause fixed); returns it.

        Its checkpoint stays, so the next worker resumes from it (no sampled window is lost); its
        attempts count from 0 again; its error, finish time and lease are cleared, and its results
        count as not posted, nobody's claim on posting them either, so the bot edits its progress
        message as it runs and posts the new results. Its priority and progress message stay; the
        last run's progress, time and rate go.

        Its running limit (`max_running_per_user`, which a claim respects) becomes the one in force
        now, as a job queued now gets (`running_limit_in_force`): its server's own (guild_settings)
        or else `bot_wide_running_limit`, the bot-wide setting; without that, the limit the job was
        queued with stands in for the bot-wide one.

        The change is one conditional statement (its running limit follows in the same transaction),
        under the enqueue lock: of two retries at once one wins and the other is refused with the
        status the first left. Refused (`JobNotRetryable`,
        nothing written): a job queued, running, cancelling or succeeded; one whose prime clip's audio
        `prune_finished` dropped (it would start from a clip it no longer has); an upsample of a sample
        that another upsample job now covers (queued, running or done), as `enqueue` refuses a second
        one; a job of a server the bot was removed from (`cancel_guild_jobs`) and is not in again
        (`mark_guilds_present`), whatever it ended as: the relay posts only in servers the bot is in,
        so it would use GPU time for results nobody is shown.
        `JobNotFound` for an unknown id.
        """
        if not _could_be_job_id(job_id):
            raise JobNotFound(job_id)
        if bot_wide_running_limit is not None:
            _check_count("bot_wide_running_limit", bot_wide_running_limit, minimum=1)
        other = jobs.alias("other_jobs")
        alive = [*(status.value for status in UNFINISHED_STATUSES), JobStatus.SUCCEEDED.value]
        upsampled_elsewhere = (
            select(other.c.id)
            .where(
                other.c.kind == JobKind.UPSAMPLE.value,
                other.c.parent_sample_id == jobs.c.parent_sample_id,
                other.c.id != jobs.c.id,
                other.c.status.in_(alive),
            )
            .exists()
        )
        prime_pruned = select(primes.c.id).where(primes.c.id == jobs.c.prime_id, PRIME_PRUNED).exists()
        now = self._clock()
        statement = (
            update(jobs)
            .where(
                jobs.c.id == job_id,
                jobs.c.status.in_([status.value for status in RETRYABLE_STATUSES]),
                ~prime_pruned,
                or_(jobs.c.kind != JobKind.UPSAMPLE.value, ~upsampled_elsewhere),
                ~select(left_guilds.c.guild_id).where(left_guilds.c.guild_id == jobs.c.guild_id).exists(),
            )
            .values(
                status=JobStatus.QUEUED.value,
                attempts=0,
                error=None,
                finished_at=None,
                # the last run's progress: shown until the next run's first report (models may take
                # minutes to load), it would say 98 % of a job that starts over after a prune
                stage=None,
                progress=0.0,
                level=None,
                window=None,
                window_count=None,
                tokens_done=None,
                tokens_total=None,
                level_windows=None,
                eta_at=None,
                tokens_per_second=None,
                results_posted_at=None,
                results_posting_owner=None,
                results_posting_expires_at=None,
                updated_at=now,
                **_lease_cleared(),
            )
            .returning(jobs.c.id, jobs.c.guild_id, jobs.c.max_running_per_user)
        )
        async with self._transaction() as connection:
            # Serialised with enqueues (an upsample queued meanwhile) and prunes (a clip emptied
            # meanwhile): the checks above see what they committed (SQLite: one writer at a time).
            await self._one_enqueue_at_a_time(connection)
            retried = (await connection.execute(statement)).first()
            if retried is None:
                await self._raise_not_retryable(connection, job_id)
            # The server's limit is read after the job is queued (and its row locked) in this
            # transaction: an admin's change that lands before this read is seen here, and one after it
            # reaches this job through `set_running_limit_of_unfinished`, which waits for this commit.
            bot_wide = bot_wide_running_limit
            if bot_wide is None:  # the limit it was queued with stands in for the bot-wide one
                bot_wide = retried.max_running_per_user
            limit = await self._running_limit_now(connection, retried.guild_id, bot_wide)
            if limit != retried.max_running_per_user:
                await connection.execute(
                    update(jobs).where(jobs.c.id == job_id).values(max_running_per_user=limit)
                )
            # Read back, not RETURNING: SQLite 3.40 returns `checkpoint IS NOT NULL` as true for a
            # NULL checkpoint there (in a table whose primary key is a named constraint, as here).
            row = (await connection.execute(select(*JOB_COLUMNS).where(jobs.c.id == job_id))).one()
        return _job(row)

    async def _raise_not_retryable(self, connection: AsyncConnection, job_id: int) -> NoReturn:
        """Say why `retry_job` left the job as it was."""
        job = (
            await connection.execute(
                select(jobs.c.status, jobs.c.kind, jobs.c.parent_sample_id, jobs.c.prime_id).where(
                    jobs.c.id == job_id
                )
            )
        ).first()
        if job is None:
            raise JobNotFound(job_id)
        status = JobStatus(job.status)
        if status not in RETRYABLE_STATUSES:
            raise JobNotRetryable(
                job_id,
                status,
                f"it {'succeeded' if status is JobStatus.SUCCEEDED else f'is {status.value}'} "
                "(only a failed or cancelled job can be)",
            )
        if job.prime_id is not None:
            pruned = await connection.scalar(
                select(primes.c.id).where(primes.c.id == job.prime_id, PRIME_PRUNED)
            )
            if pruned is not None:
                raise JobNotRetryable(
                    job_id,
                    status,
                    f"the audio of its prime clip #{job.prime_id} was pruned, so it cannot run again "
                    "(ask for a new job with the clip)",
                )
        if job.kind == JobKind.UPSAMPLE.value and job.parent_sample_id is not None:
            try:
                await self._refuse_second_upsample(connection, job.parent_sample_id)
            except AlreadyUpsampled as exc:
                raise JobNotRetryable(
                    job_id,
                    status,
                    f"sample #{exc.sample_id} already has upsample job #{exc.job_id} ({exc.status})",
                ) from None
        left = await connection.scalar(
            select(left_guilds.c.guild_id)
            .select_from(jobs.join(left_guilds, left_guilds.c.guild_id == jobs.c.guild_id))
            .where(jobs.c.id == job_id)
        )
        if left is not None:
            raise JobNotRetryable(
                job_id,
                status,
                f"the bot was removed from its server ({left}) and is not in it again: its results could "
                "not be posted there",
            )
        raise JobNotRetryable(job_id, status, f"it changed while being retried ({status.value}); try again")

    async def _running_limit_now(
        self, connection: AsyncConnection, guild_id: int | None, bot_wide: int | None
    ) -> int | None:
        """The running-jobs limit a job of `guild_id` queued now gets (`running_limit_in_force`)."""
        server_limit = None
        if guild_id is not None:
            server_limit = await connection.scalar(
                select(guild_settings.c.max_running_jobs_per_user).where(
                    guild_settings.c.guild_id == guild_id
                )
            )
        if bot_wide is None:  # none given, and an older bot queued the job without one
            return server_limit
        return running_limit_in_force(server_limit, bot_wide)

    async def prune_finished(self, older_than: timedelta, *, dry_run: bool = False) -> PruneReport:
        """Free what failed and cancelled jobs that finished more than `older_than` ago (by the
        store's clock) keep: their checkpoints, and the audio of their prime clips that no other job
        needs; and the audio of clips no job uses at all, stored more than `older_than` and
        `ORPHANED_CLIP_AGE` ago. Returns what went, or with `dry_run` what would go (nothing is
        written then).

        A clip stays while any job that is not such a job uses it: queued, running or succeeded (the
        pictures of its samples, and of their upsamples, read the clip), or failed or cancelled more
        recently. Its row stays, with its length but no audio: jobs point at it, and `retry_job`
        refuses a job whose clip is gone. Job rows, samples and votes are never touched; a job pruned
        and retried later starts over. Under the enqueue lock, so a retry or enqueue in the meantime
        cannot use a clip this empties (SQLite: one writer at a time).
        """
        if not isinstance(older_than, timedelta) or older_than <= timedelta(0):
            raise StorageError(f"prune jobs finished a positive time ago, got {older_than!r}")
        now = self._clock()
        try:
            now - older_than
        except OverflowError:  # before the first day a datetime holds: nothing finished that long ago
            return PruneReport(job_ids=(), checkpoint_bytes=0, prime_ids=(), prime_bytes=0)
        # By the clock finish times are stamped with (the database's on Postgres, as leases): a worker
        # or operator machine whose clock is days off neither prunes a fresh failure nor keeps an old one.
        cutoff = self._lease_now_plus(-older_than)
        old = _finished_before(jobs, cutoff)
        users = jobs.alias("prime_users")
        used_by_none_but_old = and_(
            select(users.c.id)
            .where(users.c.prime_id == primes.c.id, _finished_before(users, cutoff))
            .exists(),
            ~select(users.c.id)
            .where(users.c.prime_id == primes.c.id, ~_finished_before(users, cutoff))
            .exists(),
        )
        orphaned = and_(
            primes.c.created_at < self._lease_now_plus(-max(older_than, ORPHANED_CLIP_AGE)),
            ~select(users.c.id).where(users.c.prime_id == primes.c.id).exists(),
        )
        prime_prunable = and_(func.length(primes.c.pcm) > 0, or_(used_by_none_but_old, orphaned))
        checkpoint_sizes = select(jobs.c.id, func.length(jobs.c.checkpoint)).where(
            old, jobs.c.checkpoint.is_not(None)
        )
        prime_sizes = select(primes.c.id, func.length(primes.c.pcm)).where(prime_prunable)
        if dry_run:
            async with self._reading() as connection:
                checkpoints = await _sizes(connection, checkpoint_sizes)
                clips = await _sizes(connection, prime_sizes)
        else:
            async with self._transaction() as connection:
                await self._one_enqueue_at_a_time(connection)
                checkpoints = await _sizes(connection, checkpoint_sizes)
                clips = await _sizes(connection, prime_sizes)
                # The same conditions again, in the statements that write: what they changed is what
                # is counted (no IN list of ids, however many jobs there are).
                dropped = await connection.execute(
                    update(jobs)
                    .where(old, jobs.c.checkpoint.is_not(None))
                    .values(checkpoint=None, checkpoint_updated_at=None, updated_at=now)
                    .returning(jobs.c.id)
                )
                checkpoints = {row.id: checkpoints.get(row.id, 0) for row in dropped}
                emptied = await connection.execute(
                    update(primes).where(prime_prunable).values(pcm=b"").returning(primes.c.id)
                )
                clips = {row.id: clips.get(row.id, 0) for row in emptied}
        return PruneReport(
            job_ids=tuple(sorted(checkpoints)),
            checkpoint_bytes=sum(checkpoints.values()),
            prime_ids=tuple(sorted(clips)),
            prime_bytes=sum(clips.values()),
        )

    async def get_job(self, job_id: int) -> Job:
        if not _could_be_job_id(job_id):
            raise JobNotFound(job_id)
        async with self._reading() as connection:
            row = (await connection.execute(select(*JOB_COLUMNS).where(jobs.c.id == job_id))).first()
        if row is None:
            raise JobNotFound(job_id)
        return _job(row)

    async def get_checkpoint(self, job_id: int) -> bytes | None:
        if not _could_be_job_id(job_id):
            raise JobNotFound(job_id)
        async with self._reading() as connection:
            row = (await connection.execute(select(jobs.c.checkpoint).where(jobs.c.id == job_id))).first()
        if row is None:
            raise JobNotFound(job_id)
        return row.checkpoint

    async def replace_progress_message(self, job_id: int, message_id: int, *, replacing: int | None) -> bool:
        """Record `message_id` as the job's progress message only while it is still `replacing` (None:
        the job has none yet); False when another bot on this database recorded one first, whose
        message then stands (the caller deletes its own). True when it is recorded already (a message
        sent again with its nonce is the one sent first, also to another bot on the same token).
        JobNotFound for an unknown id."""
        async with self._transaction() as connection:
            result = await connection.execute(
                update(jobs)
                .where(
                    jobs.c.id == job_id,
                    or_(
                        jobs.c.progress_message_id.is_not_distinct_from(replacing),
                        jobs.c.progress_message_id == message_id,
                    ),
                )
                .values(progress_message_id=message_id, updated_at=self._clock())
                .returning(jobs.c.id)
            )
            if result.first() is not None:
                return True
            if (await connection.execute(select(jobs.c.id).where(jobs.c.id == job_id))).first() is None:
                raise JobNotFound(job_id)
            return False

    def _posting_free(self) -> ColumnElement[bool]:
        """Nobody posts the results: never claimed, given back, or the claimer's lease ran out (by the
        lease clock, as a worker's lease: bots on several machines share one database)."""
        return or_(
            jobs.c.results_posting_expires_at.is_(None),
            jobs.c.results_posting_expires_at < self._lease_now(),
        )

    async def claim_results_posting(
        self, job_id: int, poster_id: str, lease_seconds: float
    ) -> ResultsClaim | None:
        """Claim posting the finished job's results for `lease_seconds`: a claim for one caller at a time.

        None means they were all posted already, or another bot's claim still holds, or a failed
        try asked to wait before the next (nothing to do now). A claim that expired, its bot killed
        mid-post, goes to the next caller, who posts the samples without a message yet; the claim
        names that bot (`taken_over_from`), whose last messages may have gone out unrecorded. Raises
        `JobNotFinished` for a job still queued or running.
        """
        _check_lease(lease_seconds)
        now = self._clock()
        async with self._transaction() as connection:
            # The row locked first (SQLite's write lock already is), so the holder read is the one replaced.
            earlier = (
                await connection.execute(
                    select(jobs.c.results_posting_owner).where(jobs.c.id == job_id).with_for_update()
                )
            ).scalar_one_or_none()
            claimed = (
                await connection.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, *self._finished_unposted())
                    .values(
                        results_posting_owner=poster_id,
                        results_posting_expires_at=self._lease_end(lease_seconds),
                        updated_at=now,
                    )
                    .returning(jobs.c.id)
                )
            ).first()
            if claimed is not None:
                return ResultsClaim(taken_over_from=earlier)
            owner = await self._owner(connection, job_id)
        if owner.status not in FINISHED_STATUSES:
            raise JobNotFinished(job_id, owner.status.value)
        return None

    async def _update_posting(
        self, job_id: int, poster_id: str, *, lease_seconds: float | None = None, **values: Any
    ) -> bool:
        """Change the claim's row if `poster_id` still holds it (nobody took it over, not finished);
        `lease_seconds`: renew the claim for that long from when the transaction holds the lock."""
        async with self._transaction() as connection:
            if lease_seconds is not None:
                values["results_posting_expires_at"] = self._lease_end(lease_seconds)
            result = await connection.execute(
                update(jobs)
                .where(
                    jobs.c.id == job_id,
                    jobs.c.results_posting_owner == poster_id,
                    jobs.c.results_posted_at.is_(None),
                )
                .values(**values, updated_at=self._clock())
                .returning(jobs.c.id)
            )
            return result.first() is not None

    async def renew_results_posting(self, job_id: int, poster_id: str, lease_seconds: float) -> bool:
        """Extend the claim before the next message goes out; False once another bot took it over.

        A claim that ran out but that nobody took over is still ours, and is renewed.
        """
        _check_lease(lease_seconds)
        return await self._update_posting(job_id, poster_id, lease_seconds=lease_seconds)

    async def finish_results_posting(self, job_id: int, poster_id: str) -> bool:
        """Everything went out: mark the results posted for good. False if the claim was lost."""
        return await self._update_posting(
            job_id,
            poster_id,
            results_posted_at=self._clock(),
            results_posting_owner=None,
            results_posting_expires_at=None,
        )

    async def release_results_posting(
        self, job_id: int, poster_id: str, *, retry_after_s: float = 0.0, history_unread: bool = False
    ) -> None:
        """Posting failed part-way (or the bot is stopping): give the claim back for a later try,
        now, or only after `retry_after_s` (nobody may claim them until then, and
        `finished_jobs_unposted` leaves them out: a job that keeps failing waits, the others go on).

        Samples already posted keep their `message_id`, so the next try posts only the rest.
        `history_unread`: the claim was taken over from one that ran out, and the channel not read yet
        for what went out unrecorded: the next claim names a holder (`ResultsClaim.taken_over_from`,
        one that holds nothing), so that the next bot reads it. Does nothing if the claim is no longer ours.
        """
        if not math.isfinite(retry_after_s) or retry_after_s < 0:
            raise StorageError(f"retry_after_s must be a number of seconds >= 0, got {retry_after_s!r}")
        retry_at = self._lease_now_plus(timedelta(seconds=retry_after_s)) if retry_after_s > 0 else None
        owner = f"{poster_id} (channel unread)"[:255] if history_unread else None
        await self._update_posting(
            job_id, poster_id, results_posting_owner=owner, results_posting_expires_at=retry_at
        )

    def _finished_unposted(self) -> tuple[ColumnElement[bool], ...]:
        """Finished jobs whose results no bot has posted, nor posts now or waits to retry. Literally
        the condition of the partial index ix_jobs_guild_unposted (guild_id, finished_at, id) first, so
        both databases read a server's unposted jobs from it: keep it so."""
        return (
            jobs.c.results_posted_at.is_(None),
            self._posting_free(),
            jobs.c.status.in_([status.value for status in FINISHED_STATUSES]),
        )

    async def finished_jobs_unposted(self, guild_id: int | None = None, limit: int = 100) -> list[Job]:
        """Finished jobs (of one server, or all) whose results are not posted yet, that no bot is
        posting right now nor waits to retry (see `release_results_posting`), in the order they
        finished. Also those without a progress message: a bot that stopped between queueing a
        job and posting its message, while the job ran, posts the results in a fresh message."""
        _check_page(limit, 0)
        statement = select(*JOB_COLUMNS).where(*self._finished_unposted())
        if guild_id is not None:
            statement = statement.where(jobs.c.guild_id == guild_id)
        return await self._jobs(statement.order_by(jobs.c.finished_at, jobs.c.id).limit(limit))

    async def guilds_with_results_unposted(self) -> set[int | None]:
        """The servers that have jobs `finished_jobs_unposted` would list now: a bot's pass asks each of
        them only (one query when none has, however many servers the bot is in)."""
        statement = select(jobs.c.guild_id).where(*self._finished_unposted()).distinct()
        async with self._reading() as connection:
            return set(await connection.scalars(statement))

    async def queue_position(self, job_id: int) -> int | None:
        """1-based place among queued jobs in the order workers take them (`queue_places`); None if
        not queued, or held back by its user's running limit."""
        unfinished = await self.unfinished_jobs()
        if not any(job.id == job_id for job in unfinished):
            await self.get_job(job_id)  # JobNotFound for an unknown id
            return None
        return queue_places(unfinished).place.get(job_id)

    async def user_job_counts(self, user_id: int, guild_id: int | None = None) -> UserJobCounts:
        """How many of the user's jobs wait and run (in one server, or everywhere)."""
        statement = (
            select(jobs.c.status, func.count())
            .where(
                jobs.c.user_id == user_id, jobs.c.status.in_([status.value for status in UNFINISHED_STATUSES])
            )
            .group_by(jobs.c.status)
        )
        if guild_id is not None:
            statement = statement.where(jobs.c.guild_id == guild_id)
        async with self._reading() as connection:
            counts = {row[0]: int(row[1]) for row in await connection.execute(statement)}
        return UserJobCounts(
            queued=counts.get(JobStatus.QUEUED.value, 0),
            running=sum(counts.get(status.value, 0) for status in ACTIVE_STATUSES),
        )

    async def _jobs(self, statement: Any) -> list[Job]:
        async with self._reading() as connection:
            return [_job(row) for row in await connection.execute(statement)]

    async def running_jobs(self) -> list[Job]:
        return await self._jobs(
            select(*JOB_COLUMNS)
            .where(jobs.c.status.in_([status.value for status in ACTIVE_STATUSES]))
            .order_by(jobs.c.started_at, jobs.c.id)
        )

    async def unfinished_jobs(self, guild_id: int | None = None) -> list[Job]:
        """Queued, running and cancelling jobs (of one server, or all), in the order they arrived."""
        statement = select(*JOB_COLUMNS).where(
            jobs.c.status.in_([status.value for status in UNFINISHED_STATUSES])
        )
        if guild_id is not None:
            statement = statement.where(jobs.c.guild_id == guild_id)
        return await self._jobs(statement.order_by(jobs.c.id))

    async def recent_jobs(
        self, user_id: int, guild_id: int | None = None, limit: int = 10, offset: int = 0
    ) -> list[Job]:
        """The user's jobs, newest first."""
        _check_page(limit, offset)
        statement = select(*JOB_COLUMNS).where(jobs.c.user_id == user_id)
        if guild_id is not None:
            statement = statement.where(jobs.c.guild_id == guild_id)
        return await self._jobs(
            statement.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit).offset(offset)
        )

    # ------------------------------------------------------------------ samples and primes

    async def _require_sample(self, connection: AsyncConnection, sample_id: int) -> None:
        if await connection.scalar(select(samples.c.id).where(samples.c.id == sample_id)) is None:
            raise SampleNotFound(sample_id)

    async def get_sample(self, sample_id: int) -> Sample:
        async with self._reading() as connection:
            row = (await connection.execute(select(samples).where(samples.c.id == sample_id))).first()
        if row is None:
            raise SampleNotFound(sample_id)
        return _sample(row)

    async def get_sample_info(self, sample_id: int) -> SampleInfo:
        """The sample without its audio and codes."""
        async with self._reading() as connection:
            row = (
                await connection.execute(select(*SAMPLE_INFO_COLUMNS).where(samples.c.id == sample_id))
            ).first()
        if row is None:
            raise SampleNotFound(sample_id)
        return _sample_info(row._mapping)

    async def codes_count(self, sample_id: int, level: int) -> int | None:
        """How many codes of `level` the sample holds (None: none stored), without reading them."""
        column = samples.c[f"codes_level_{level}"]
        async with self._reading() as connection:
            row = (
                await connection.execute(select(func.length(column)).where(samples.c.id == sample_id))
            ).first()
        if row is None:
            raise SampleNotFound(sample_id)
        return None if row[0] is None else int(row[0]) // CODE_BYTES

    async def samples_for_job(self, job_id: int) -> list[SampleInfo]:
        async with self._reading() as connection:
            if await connection.scalar(select(jobs.c.id).where(jobs.c.id == job_id)) is None:
                raise JobNotFound(job_id)
            rows = await connection.execute(
                select(*SAMPLE_INFO_COLUMNS).where(samples.c.job_id == job_id).order_by(samples.c.index)
            )
            return [_sample_info(row._mapping) for row in rows]

    async def samples_of_jobs(self, job_ids: Iterable[int]) -> dict[int, list[SampleInfo]]:
        """The samples of each of the jobs, in index order, in one query (a job without samples, or
        unknown, has an empty list)."""
        wanted = sorted(set(job_ids))
        found: dict[int, list[SampleInfo]] = {job_id: [] for job_id in wanted}
        if not wanted:
            return found
        async with self._reading() as connection:
            rows = await connection.execute(
                select(*SAMPLE_INFO_COLUMNS)
                .where(samples.c.job_id.in_(wanted))
                .order_by(samples.c.job_id, samples.c.index)
            )
            for row in rows:
                found[row.job_id].append(_sample_info(row._mapping))
        return found

    async def user_samples(self, guild_id: int, user_id: int, limit: int = 100) -> list[SampleInfo]:
        """The samples of the user's jobs in the server, oldest first (at most `limit`)."""
        _check_page(limit, 0)
        statement = (
            select(*SAMPLE_INFO_COLUMNS)
            .select_from(samples.join(jobs, samples.c.job_id == jobs.c.id))
            .where(jobs.c.guild_id == guild_id, jobs.c.user_id == user_id)
            .order_by(samples.c.id)
            .limit(limit)
        )
        async with self._reading() as connection:
            return [_sample_info(row._mapping) for row in await connection.execute(statement)]

    async def sample_origins(self, sample_ids: Iterable[int]) -> dict[int, SampleOrigin]:
        """Where each of the samples was made, and by whom; unknown ids are absent."""
        wanted = sorted(set(sample_ids))
        if not wanted:
            return {}
        async with self._reading() as connection:
            rows = await connection.execute(
                select(samples.c.id, samples.c.job_id, jobs.c.guild_id, jobs.c.channel_id, jobs.c.user_id)
                .select_from(samples.join(jobs, samples.c.job_id == jobs.c.id))
                .where(samples.c.id.in_(wanted))
            )
            return {
                int(row.id): SampleOrigin(row.job_id, row.guild_id, row.channel_id, row.user_id)
                for row in rows
            }

    async def store_curation(
        self,
        *,
        guild_id: int | None,
        channel_id: int,
        user_id: int,
        model: str,
        params: Mapping[str, Any],
        sample: NewSample,
        poster_id: str | None = None,
        posting_lease_s: float = 30.0,
    ) -> tuple[int, int]:
        """Record a piece the bot joined from stored samples: a `curate` job, already succeeded with
        `sample` as its one result, in one transaction; returns (job id, sample id).

        It is never queued (no worker claims it). With `poster_id`, the bot that made it holds the claim
        on posting it (`claim_results_posting`, for `posting_lease_s`): it posts it itself, renews the
        claim meanwhile and finishes it (`finish_results_posting`); if it stops or dies first, the claim
        is given back or runs out and the relay posts it, as any job's results. Without, it counts as
        posted. `params` say what it was made of.
        """
        _check_lease(posting_lease_s)
        if not isinstance(model, str) or not model.strip() or len(model) > 64:
            raise InvalidJob(f"model must be a model name such as '5b_lyrics', got {model!r}")
        stored_params = _serialise_params(params)
        _check_snowflake("guild_id", guild_id, optional=True)
        _check_snowflake("channel_id", channel_id)
        _check_snowflake("user_id", user_id)
        row = _check_new_sample(sample, model)
        now = self._clock()
        async with self._transaction() as connection:
            await self._one_enqueue_at_a_time(connection)  # ids in the order they are handed out
            job_id = await connection.scalar(
                jobs.insert()
                .values(
                    guild_id=guild_id,
                    channel_id=channel_id,
                    user_id=user_id,
                    kind=JobKind.CURATE.value,
                    model=model,
                    params=stored_params,
                    status=JobStatus.SUCCEEDED.value,
                    priority=0,
                    attempts=0,
                    max_attempts=1,
                    progress=1.0,
                    created_at=now,
                    started_at=now,
                    finished_at=self._lease_now(),
                    updated_at=now,
                    **(
                        {"results_posted_at": now}
                        if poster_id is None
                        else {
                            "results_posting_owner": poster_id,
                            "results_posting_expires_at": self._lease_end(posting_lease_s),
                        }
                    ),
                )
                .returning(jobs.c.id)
            )
            sample_id = await connection.scalar(
                samples.insert().values(job_id=job_id, created_at=now, **row).returning(samples.c.id)
            )
        return int(job_id), int(sample_id)

    async def curated_pieces(self, guild_id: int) -> list[StoredPiece]:
        """The server's curated pieces, newest first (each a `curate` job's one sample)."""
        statement = (
            select(samples.c.id, jobs.c.id.label("job_id"), jobs.c.channel_id, jobs.c.user_id, PARAMS_TEXT)
            .select_from(samples.join(jobs, samples.c.job_id == jobs.c.id))
            .where(jobs.c.guild_id == guild_id, jobs.c.kind == JobKind.CURATE.value)
            .order_by(samples.c.id.desc())
        )
        async with self._reading() as connection:
            rows = (await connection.execute(statement)).all()
        return [
            StoredPiece(
                sample_id=int(row.id),
                origin=SampleOrigin(row.job_id, guild_id, row.channel_id, row.user_id),
                params=_read_params(row.params),
            )
            for row in rows
        ]

    async def set_sample_message(
        self, sample_id: int, message_id: int, *, parts: MessageParts | None = None
    ) -> None:
        """Record the Discord message the sample was posted in (replaces an earlier one): all of it, or
        with `parts`, the first of several messages, how many are out so far and how its audio was split
        (a later try sends the rest; see `SampleInfo.posted`)."""
        if (
            isinstance(message_id, bool)
            or not isinstance(message_id, int)
            or not 0 <= message_id <= MAX_SNOWFLAKE
        ):
            raise InvalidSample(
                f"sample #{sample_id}: the message id must be a Discord message id "
                f"(a non-negative integer), got {message_id!r}"
            )
        values: dict[str, int | None] = {"sent": None, "total": None, "limit": None}
        if parts is not None:
            numbers = (parts.sent, parts.total, parts.upload_limit)
            if not (
                all(isinstance(n, int) and not isinstance(n, bool) for n in numbers)
                and 1 <= parts.sent < parts.total <= MAX_INTEGER
                and 1 <= parts.upload_limit <= MAX_SNOWFLAKE
            ):
                raise InvalidSample(
                    f"sample #{sample_id}: parts must say 1 <= sent < total messages, split under a "
                    f"positive upload limit, got {parts!r}"
                )
            values = {"sent": parts.sent, "total": parts.total, "limit": parts.upload_limit}
        async with self._transaction() as connection:
            result = await connection.execute(
                update(samples)
                .where(samples.c.id == sample_id)
                .values(
                    message_id=message_id,
                    message_parts_sent=values["sent"],
                    message_parts_total=values["total"],
                    message_parts_limit=values["limit"],
                )
                .returning(samples.c.id)
            )
            if result.first() is None:
                raise SampleNotFound(sample_id)

    async def store_prime(
        self,
        *,
        user_id: int,
        filename: str,
        pcm: bytes,
        guild_id: int | None = None,
        sample_rate: int,
    ) -> int:
        """Keep an uploaded clip, already decoded to 16-bit little-endian mono PCM; returns its id."""
        if not isinstance(pcm, bytes | bytearray) or not pcm:
            raise InvalidPrime(f"The clip {filename!r} has no audio in it; upload a clip with sound.")
        if len(pcm) % PRIME_SAMPLE_WIDTH:
            raise InvalidPrime(f"The clip {filename!r} is not 16-bit PCM (odd number of bytes).")
        if sample_rate <= 0:
            raise InvalidPrime(f"sample rate must be positive, got {sample_rate}")
        try:
            _check_snowflake("user_id", user_id)
            _check_snowflake("guild_id", guild_id, optional=True)
        except InvalidJob as exc:
            raise InvalidPrime(str(exc)) from None
        async with self._transaction() as connection:
            prime_id = await connection.scalar(
                primes.insert()
                .values(
                    guild_id=guild_id,
                    user_id=user_id,
                    filename=(filename or "clip")[:255],
                    duration_seconds=len(pcm) / PRIME_SAMPLE_WIDTH / sample_rate,
                    sample_rate=sample_rate,
                    pcm=bytes(pcm),
                    created_at=self._clock(),
                )
                .returning(primes.c.id)
            )
        return int(prime_id)

    async def discard_prime(self, prime_id: int) -> None:
        """Delete a clip no job uses (its request was refused after it was stored); keep a used one."""
        async with self._transaction() as connection:
            used = select(jobs.c.id).where(jobs.c.prime_id == prime_id).exists()
            await connection.execute(delete(primes).where(primes.c.id == prime_id, ~used))

    async def get_prime(self, prime_id: int) -> Prime:
        async with self._reading() as connection:
            row = (await connection.execute(select(primes).where(primes.c.id == prime_id))).first()
        if row is None:
            raise PrimeNotFound(prime_id)
        return Prime(**row._mapping)

    # ------------------------------------------------------------------ votes and history

    async def toggle_vote(self, sample_id: int, user_id: int) -> tuple[bool, int]:
        """Add the user's vote, or take it back if there was one; returns (voted now, total votes).
        The total is as this transaction counted it: on Postgres (read committed) another user's vote
        committed meanwhile may be missing from it, never from the stored votes; `vote_count` after
        the commit counts it (what the vote button shows).

        Safe when the same user clicks twice at once: a vote inserted concurrently is
        seen through the unique constraint and toggled off, as two clicks in a row would.
        """
        key = and_(votes.c.sample_id == sample_id, votes.c.user_id == user_id)
        async with self._transaction() as connection:
            await self._require_sample(connection, sample_id)
            for _ in range(3):
                removed = (await connection.execute(delete(votes).where(key).returning(votes.c.id))).first()
                if removed is not None:
                    voted = False
                    break
                try:
                    inserted = (
                        await connection.execute(
                            self._insert(votes)
                            .values(sample_id=sample_id, user_id=user_id, created_at=self._clock())
                            .on_conflict_do_nothing(index_elements=["sample_id", "user_id"])
                            .returning(votes.c.id)
                        )
                    ).first()
                except IntegrityError:  # the sample vanished under us (foreign key)
                    raise SampleNotFound(sample_id) from None
                if inserted is not None:
                    voted = True
                    break
            else:
                raise StorageError(
                    "Your vote could not be recorded because of too many clicks at once; try again."
                )
            count = await connection.scalar(
                select(func.count()).select_from(votes).where(votes.c.sample_id == sample_id)
            )
        return voted, int(count or 0)

    async def vote_count(self, sample_id: int) -> int:
        return (await self.vote_counts([sample_id])).get(sample_id, 0)

    async def vote_counts(self, sample_ids: Iterable[int]) -> dict[int, int]:
        """Votes per sample id (0 for samples nobody voted for)."""
        wanted = sorted(set(sample_ids))
        if not wanted:
            return {}
        async with self._reading() as connection:
            rows = await connection.execute(
                select(votes.c.sample_id, func.count())
                .where(votes.c.sample_id.in_(wanted))
                .group_by(votes.c.sample_id)
            )
            counts = {int(row[0]): int(row[1]) for row in rows}
        return {sample_id: counts.get(sample_id, 0) for sample_id in wanted}

    async def has_voted(self, sample_id: int, user_id: int) -> bool:
        async with self._reading() as connection:
            found = await connection.scalar(
                select(votes.c.id).where(votes.c.sample_id == sample_id, votes.c.user_id == user_id)
            )
        return found is not None

    async def top_samples(
        self, guild_id: int, since: datetime | None = None, limit: int = 10, offset: int = 0
    ) -> list[RankedSample]:
        """The server's samples (made since `since`, if given) by votes, then newest first (`offset`:
        past that many)."""
        _check_page(limit, offset)
        # Counted for each of the server's samples only (a lookup in the votes' (sample_id, user_id)
        # index), never for every server's votes.
        vote_total = (
            select(func.count())
            .select_from(votes)
            .where(votes.c.sample_id == samples.c.id)
            .correlate(samples)
            .scalar_subquery()
            .label("votes")
        )
        statement = (
            select(
                *SAMPLE_INFO_COLUMNS,
                vote_total,
                jobs.c.user_id.label("job_user_id"),
                jobs.c.channel_id,
                PARAMS_TEXT,
            )
            .select_from(samples.join(jobs, samples.c.job_id == jobs.c.id))
            .where(jobs.c.guild_id == guild_id)
            .order_by(vote_total.desc(), samples.c.created_at.desc(), samples.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        if since is not None:
            statement = statement.where(samples.c.created_at >= since)
        async with self._reading() as connection:
            rows = (await connection.execute(statement)).all()
        return [
            RankedSample(
                sample=_sample_info(row._mapping),
                votes=int(row.votes),
                user_id=row.job_user_id,
                channel_id=row.channel_id,
                params=_read_params(row.params),
            )
            for row in rows
        ]

    # ------------------------------------------------------------------ which worker serves what

    async def record_worker(self, worker_id: str, models: Collection[str]) -> None:
        """Say that `worker_id` is alive and serves `models` now (rows of long-dead workers go).

        Seen "now" by the lease clock (the database's on Postgres), as `served_models` reads it: a
        worker machine whose clock is off by minutes still counts as present.
        """
        if not worker_id:
            raise StorageError("a worker needs a non-empty worker id")
        values = {"models": sorted(models), "last_seen_at": self._lease_now()}
        statement = self._insert(workers).values(worker_id=worker_id, **values)
        statement = statement.on_conflict_do_update(index_elements=["worker_id"], set_=values)
        async with self._transaction() as connection:
            await connection.execute(statement)
            await connection.execute(
                delete(workers).where(workers.c.last_seen_at < self._lease_now_plus(-FORGET_WORKER_AFTER))
            )

    async def forget_worker(self, worker_id: str) -> None:
        """A worker that stops removes its row: it serves nothing any more."""
        async with self._transaction() as connection:
            await connection.execute(delete(workers).where(workers.c.worker_id == worker_id))

    def _live(self) -> ColumnElement[bool]:
        """A worker seen within WORKER_STALE_SECONDS, by the lease clock."""
        return workers.c.last_seen_at >= self._lease_now_plus(-timedelta(seconds=WORKER_STALE_SECONDS))

    async def live_workers(self) -> list[str]:
        """The ids of the live workers (`_live`), sorted."""
        async with self._reading() as connection:
            rows = await connection.execute(
                select(workers.c.worker_id).where(self._live()).order_by(workers.c.worker_id)
            )
            return [worker_id for (worker_id,) in rows]

    async def workers_seen(self) -> list[WorkerSeen]:
        """Every worker the table holds, live or silent (a silent one's row goes a day after it fell
        silent), by id; how long ago each was seen is read by the lease clock, as `_live` reads it."""
        now = self._lease_now().label("now")
        async with self._reading() as connection:
            rows = (
                await connection.execute(
                    select(workers.c.worker_id, workers.c.models, workers.c.last_seen_at, now).order_by(
                        workers.c.worker_id
                    )
                )
            ).all()
        seen = []
        for worker_id, models, last_seen_at, at in rows:
            ago = (at - last_seen_at).total_seconds()
            seen.append(
                WorkerSeen(
                    worker_id=worker_id,
                    models=tuple(models),
                    last_seen_at=last_seen_at,
                    seconds_ago=max(ago, 0.0),  # a clock a moment behind the writer's
                    live=ago <= WORKER_STALE_SECONDS,
                )
            )
        return seen

    async def served_models(self) -> frozenset[str]:
        """The models some live worker serves (`_live`)."""
        async with self._reading() as connection:
            rows = await connection.execute(select(workers.c.models).where(self._live()))
            return frozenset(model for (models,) in rows for model in models)

    async def schema_revisions_not_ours(self) -> list[str]:
        """The database's schema revisions that these migrations do not have: a newer jukebot migrated
        it since this process started (empty: ours, or no revision table, as in a schema made without
        migrations)."""
        from storage.migrate import known_revisions

        # Read with one table object for the process: alembic's `get_current_heads` builds a new one per
        # call, and the bot and every worker ask every minute, so each call was a new entry in the
        # engine's statement cache (about 10 MB of them per process, and the useful ones pushed out).
        async with self._reading() as connection:
            if not await connection.run_sync(lambda sync: inspect(sync).has_table(_ALEMBIC_VERSION.name)):
                return []
            heads = (await connection.scalars(select(_ALEMBIC_VERSION.c.version_num))).all()
        return sorted(set(heads) - known_revisions())

    # ------------------------------------------------------------------ per-server settings

    async def get_guild_settings(self, guild_id: int) -> GuildSettings:
        """The server's overrides (all None when it has none)."""
        async with self._reading() as connection:
            return await self._guild_settings(connection, guild_id)

    async def _guild_settings(self, connection: AsyncConnection, guild_id: int) -> GuildSettings:
        row = (
            await connection.execute(select(guild_settings).where(guild_settings.c.guild_id == guild_id))
        ).first()
        if row is None:
            return GuildSettings(guild_id=guild_id)
        values = dict(row._mapping)
        if values["allowed_channel_ids"] is not None:
            values["allowed_channel_ids"] = tuple(values["allowed_channel_ids"])
        return GuildSettings(**values)

    async def set_guild_settings(self, settings: GuildSettings) -> GuildSettings:
        """Replace the server's overrides with `settings` (None clears one); returns what was stored."""
        return await self.change_guild_settings(settings.guild_id, lambda _: settings)

    async def change_guild_settings(
        self,
        guild_id: int,
        change: Callable[[GuildSettings], GuildSettings],
        *,
        bot_wide_running_limit: int | None = None,
    ) -> GuildSettings:
        """Store `change(the server's overrides now)`, read and written in one transaction under the
        enqueue lock, so that changes at once each see the one before (none undoes another); returns what
        was stored. An exception `change` raises writes nothing. With `bot_wide_running_limit`, the
        server's unfinished jobs get the running limit in force after the change
        (`set_running_limit_of_unfinished`) in the same transaction."""
        _check_guild_settings(GuildSettings(guild_id=guild_id))
        if bot_wide_running_limit is not None:
            _check_count("bot_wide_running_limit", bot_wide_running_limit, minimum=1)
        async with self._transaction() as connection:
            await self._one_enqueue_at_a_time(connection)
            settings = change(await self._guild_settings(connection, guild_id))
            if settings.guild_id != guild_id:
                raise InvalidGuildSettings(
                    f"the settings of server {guild_id} were given for server {settings.guild_id}; nothing "
                    "was changed."
                )
            _check_guild_settings(settings)
            channels = (
                None
                if settings.allowed_channel_ids is None
                else [int(c) for c in settings.allowed_channel_ids]
            )
            values = {
                "max_length_seconds": settings.max_length_seconds,
                "max_samples_per_job": settings.max_samples_per_job,
                "max_running_jobs_per_user": settings.max_running_jobs_per_user,
                "max_queued_jobs_per_user": settings.max_queued_jobs_per_user,
                "allowed_channel_ids": channels,
                "updated_at": self._clock(),
            }
            statement = self._insert(guild_settings).values(guild_id=guild_id, **values)
            await connection.execute(
                statement.on_conflict_do_update(index_elements=["guild_id"], set_=values)
            )
            if bot_wide_running_limit is not None:
                limit = running_limit_in_force(settings.max_running_jobs_per_user, bot_wide_running_limit)
                await self._set_running_limit(connection, guild_id, limit)
            return await self._guild_settings(connection, guild_id)


def _check_lease(lease_seconds: float) -> None:
    if not math.isfinite(lease_seconds) or lease_seconds <= 0:
        raise StorageError(f"a lease must last a positive number of seconds, got {lease_seconds!r}")


def _check_page(limit: int, offset: int) -> None:
    if not 1 <= limit <= 1000 or offset < 0:
        raise StorageError(f"ask for 1 to 1000 rows from offset >= 0 (got limit={limit}, offset={offset})")


async def _upsample_covering(connection: AsyncConnection, sample_id: int) -> AlreadyUpsampled | None:
    alive = [*(status.value for status in UNFINISHED_STATUSES), JobStatus.SUCCEEDED.value]
    earlier = (
        await connection.execute(
            select(jobs.c.id, jobs.c.status)
            .where(
                jobs.c.kind == JobKind.UPSAMPLE.value,
                jobs.c.parent_sample_id == sample_id,
                jobs.c.status.in_(alive),
            )
            .order_by(jobs.c.id)
            .limit(1)
        )
    ).first()
    return None if earlier is None else AlreadyUpsampled(sample_id, earlier.id, earlier.status)


def _check_guild_settings(settings: GuildSettings) -> None:
    def fail(what: str) -> None:
        raise InvalidGuildSettings(f"{what}; nothing was changed.")

    try:
        _check_snowflake("guild_id", settings.guild_id)
    except InvalidJob as exc:
        raise InvalidGuildSettings(str(exc)) from None
    length = settings.max_length_seconds
    if length is not None and (not math.isfinite(length) or length <= 0):
        fail(f"max_length_seconds must be a positive number of seconds, got {length!r}")
    for name in ("max_samples_per_job", "max_running_jobs_per_user", "max_queued_jobs_per_user"):
        value = getattr(settings, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            fail(f"{name} must be a whole number of at least 1, got {value!r}")
    if settings.max_samples_per_job is not None and settings.max_samples_per_job > 16:
        fail(f"max_samples_per_job can be at most 16, got {settings.max_samples_per_job}")
    if settings.allowed_channel_ids is not None:
        for channel in settings.allowed_channel_ids:
            if isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel <= MAX_SNOWFLAKE:
                fail(f"allowed channel ids must be Discord channel ids, got {channel!r}")
