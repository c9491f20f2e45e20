"""Every error the store raises: one base class, messages a person can act on."""

from __future__ import annotations

import errno
import socket
import sqlite3
from collections.abc import Iterator
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from storage.models import JobStatus


class StorageError(Exception):
    """Base class; `str(error)` is a user-readable sentence."""


class InvalidJob(StorageError):
    """A job was rejected before anything was written (unknown kind, bad field, …)."""


class OversizeParameters(InvalidJob):
    """The job parameters serialise to more than the allowed number of bytes."""


class JobNotFound(StorageError):
    def __init__(self, job_id: int) -> None:
        super().__init__(f"There is no job #{job_id}; check the id (see your recent jobs).")
        self.job_id = job_id


class NotJobOwner(StorageError):
    def __init__(self, job_id: int) -> None:
        super().__init__(
            f"Job #{job_id} belongs to someone else; only the person who started it, or a member who "
            "may manage messages in its channel, can cancel it."
        )
        self.job_id = job_id


class JobAlreadyFinished(StorageError):
    def __init__(self, job_id: int, status: str) -> None:
        super().__init__(f"Job #{job_id} has already finished ({status}); there is nothing left to cancel.")
        self.job_id = job_id
        self.status = status


class JobNotFinished(StorageError):
    """Posting the results was claimed for a job that is still queued or running."""

    def __init__(self, job_id: int, status: str) -> None:
        super().__init__(
            f"Job #{job_id} is still {status}; its results can only be posted once it has finished."
        )
        self.job_id = job_id
        self.status = status


class LeaseLost(StorageError):
    """A worker touched a job it no longer holds (requeued, claimed by another, or finished)."""

    def __init__(self, job_id: int, worker_id: str, detail: str) -> None:
        super().__init__(f"Worker {worker_id!r} no longer holds job #{job_id}: {detail}; stop working on it.")
        self.job_id = job_id
        self.worker_id = worker_id


class SampleNotFound(StorageError):
    def __init__(self, sample_id: int) -> None:
        super().__init__(f"There is no sample #{sample_id}; it may have been typed wrong.")
        self.sample_id = sample_id


class InvalidSample(StorageError):
    """A finished sample was malformed (e.g. codes that are not int16 bytes), or a sample's
    Discord message id was not an id; nothing was written."""


class PrimeNotFound(StorageError):
    def __init__(self, prime_id: int) -> None:
        super().__init__(f"There is no uploaded clip #{prime_id}; upload the clip again.")
        self.prime_id = prime_id


class InvalidPrime(StorageError):
    """An uploaded clip could not be stored (empty, odd byte count, …); nothing was written."""


class InvalidGuildSettings(StorageError):
    """A per-server override is out of range; nothing was written."""


class UserJobLimitReached(StorageError):
    """The user already has as many running (`running=True`) or queued jobs in the server as its
    limit allows, or (`all_servers=True`) as many unfinished jobs in all servers together as the
    bot-wide limit allows; nothing was written. `job_ids` are those jobs, oldest first."""

    def __init__(
        self, *, running: bool, job_ids: tuple[int, ...], limit: int, all_servers: bool = False
    ) -> None:
        state = (
            "unfinished in all servers" if all_servers else "running" if running else "waiting in the queue"
        )
        ids = ", ".join(f"#{job_id}" for job_id in job_ids)
        super().__init__(f"You already have {len(job_ids)} job(s) {state} ({ids}); the limit is {limit}.")
        self.running = running
        self.job_ids = job_ids
        self.limit = limit
        self.all_servers = all_servers


class ServerLeft(StorageError):
    """A job for a server the bot was removed from (`JobStore.cancel_guild_jobs`) and is not in again
    (`JobStore.mark_guilds_present`): its results could not be posted there; nothing was written."""

    def __init__(self, guild_id: int) -> None:
        super().__init__(f"The bot was removed from server {guild_id}, so nothing was queued for it.")
        self.guild_id = guild_id


class AlreadyUpsampled(StorageError):
    """The sample already has an upsample job queued, running or done (`job_id`, `status`): another
    would sample the same codes again (its draws are seeded alike); nothing was written."""

    def __init__(self, sample_id: int, job_id: int, status: str) -> None:
        super().__init__(f"Sample #{sample_id} already has an upsample job: #{job_id} ({status}).")
        self.sample_id = sample_id
        self.job_id = job_id
        self.status = status


class Outage(Enum):
    """Why the database could not take a call for now (`outage_of`): the same call is worth trying
    again later, unlike a refused write, and nothing stored before is lost."""

    UNREACHABLE = "the database cannot be reached"
    BUSY = "the database file is locked by another process"
    DISK_FULL = "the database's disk is full"


# The drivers' own exceptions for a lost connection (by name: the drivers are optional): asyncpg's for
# SQLSTATE classes 08 (connection exception) and 57 (operator intervention: shutting down, restarting).
_UNREACHABLE_DRIVER_ERRORS = {"PostgresConnectionError", "OperatorInterventionError"}
# Postgres SQLSTATEs: class 08 and 57 as above (for drivers that raise them by code); class 53,
# insufficient resources: its disk full (53100), its connections all taken (53300), its memory; but
# not a configured limit the statement exceeds (53400, e.g. temp_file_limit): it would every time.
_PG_UNREACHABLE_CLASSES = ("08", "57")
_PG_OUT_OF_RESOURCES = "53"
_PG_DISK_FULL = "53100"
_PG_CONFIGURED_LIMIT = "53400"
# SQLite's primary result codes (extended codes carry them in their low byte) for a file that cannot
# be written for now: its outage, where Postgres's is a lost connection.
_SQLITE_BUSY_CODES = {5, 6}  # BUSY, LOCKED: another process holds the lock past the busy timeout
_SQLITE_FULL = 13
_SQLITE_UNREACHABLE_CODES = {10, 14, 15}  # IOERR (a disk error), CANTOPEN, PROTOCOL (a lock protocol error)
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_DATABASE_LAYERS = ("asyncpg", "sqlalchemy", "aiosqlite")


def outage_of(error: BaseException, *, from_store: bool = True) -> Outage | None:
    """The outage behind `error` or the errors it wraps: the database stopped, restarting, cut off by
    the network, a standby that takes no writes, every connection taken (UNREACHABLE); SQLite's file
    locked by another process (BUSY); a full disk (DISK_FULL). None for anything else.

    `from_store=False` is for an error that may come from anything (the bot's central handler): an
    OSError that is not a refused or reset connection then counts only when the database layers
    raised it (a time-out of a download is no database outage); a store call's OSError always does."""
    from sqlalchemy.exc import DBAPIError

    for current in errors_within(error):
        if isinstance(current, OSError):
            if current.errno in _DISK_FULL_ERRNOS:
                return Outage.DISK_FULL
            if (
                from_store
                or isinstance(current, ConnectionError | socket.gaierror)
                or _raised_by_database_layers(current)
            ):
                return Outage.UNREACHABLE
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return Outage.UNREACHABLE
        if {cls.__name__ for cls in type(current).__mro__} & _UNREACHABLE_DRIVER_ERRORS:
            return Outage.UNREACHABLE
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str):
            if sqlstate == _PG_DISK_FULL:
                return Outage.DISK_FULL
            if sqlstate == _PG_CONFIGURED_LIMIT:
                return None
            if sqlstate.startswith((*_PG_UNREACHABLE_CLASSES, _PG_OUT_OF_RESOURCES)):
                return Outage.UNREACHABLE
        if isinstance(current, sqlite3.Error):
            code = (getattr(current, "sqlite_errorcode", None) or 0) & 0xFF
            if code in _SQLITE_BUSY_CODES:
                return Outage.BUSY
            if code == _SQLITE_FULL:
                return Outage.DISK_FULL
            if code in _SQLITE_UNREACHABLE_CODES:
                return Outage.UNREACHABLE
    return None


def errors_within(error: BaseException) -> Iterator[BaseException]:
    """`error`, then the errors it wraps (its cause and context, and a SQLAlchemy error's driver error
    `orig`), each once: what a wrapper's own message may not say."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [current.__cause__, current.__context__, getattr(current, "orig", None)]


def database_unreachable(error: BaseException) -> bool:
    """True when `error`, from a store call, says the database could not be reached or written for
    now (`outage_of`): the same call is worth trying again later, unlike a refused write."""
    return outage_of(error) is not None


def _raised_by_database_layers(error: BaseException) -> bool:
    """Whether `error` came out of the database layers (not e.g. out of a download's own time-out)."""
    trace = error.__traceback__
    while trace is not None:
        if str(trace.tb_frame.f_globals.get("__name__", "")).startswith(_DATABASE_LAYERS):
            return True
        trace = trace.tb_next
    return False


class JobNotRetryable(StorageError):
    """`JobStore.retry_job` refused a job that exists: it is not failed or cancelled (`status`), or it
    could not run again; nothing was written."""

    def __init__(self, job_id: int, status: JobStatus, reason: str) -> None:
        super().__init__(f"Job #{job_id} was not retried: {reason}.")
        self.job_id = job_id
        self.status = status
