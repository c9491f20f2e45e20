"""Every error the store raises: one base class, messages a person can act on."""

from __future__ import annotations

import sqlite3
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
    limit allows; nothing was written. `job_ids` are those jobs, oldest first."""

    def __init__(self, *, running: bool, job_ids: tuple[int, ...], limit: int) -> None:
        state = "running" if running else "waiting in the queue"
        ids = ", ".join(f"#{job_id}" for job_id in job_ids)
        super().__init__(f"You already have {len(job_ids)} job(s) {state} ({ids}); the limit is {limit}.")
        self.running = running
        self.job_ids = job_ids
        self.limit = limit


class AlreadyUpsampled(StorageError):
    """The sample already has an upsample job queued, running or done (`job_id`, `status`): another
    would sample the same codes again (its draws are seeded alike); nothing was written."""

    def __init__(self, sample_id: int, job_id: int, status: str) -> None:
        super().__init__(f"Sample #{sample_id} already has an upsample job: #{job_id} ({status}).")
        self.sample_id = sample_id
        self.job_id = job_id
        self.status = status


# What a lost connection raises (the driver's own exceptions, by name: the drivers are optional).
_UNREACHABLE_DRIVER_ERRORS = {"PostgresConnectionError", "OperatorInterventionError"}
# Postgres's class 53, insufficient resources: its connections all taken (53300), its disk full,
# its memory: a server up but unable to take the call for now.
_PG_OUT_OF_RESOURCES = "53"
# SQLite's primary result codes for a file that cannot be written for now: another process holds its
# lock past the busy timeout (BUSY, LOCKED), a disk error (IOERR), a full disk (FULL), a file that
# cannot be opened (CANTOPEN) or a lock protocol error (PROTOCOL). Its outage, where Postgres's is a
# lost connection.
_SQLITE_UNAVAILABLE_CODES = {5, 6, 10, 13, 14, 15}


def database_unreachable(error: BaseException) -> bool:
    """True when `error`, or what caused it, says the database could not be reached (stopped,
    restarting, the network cut, every connection taken) or could not be written for now (a full
    disk; SQLite's file locked by another process, a disk error): the same call is worth trying again
    later, unlike a refused write."""
    from sqlalchemy.exc import DBAPIError

    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError):  # refused, reset, timed out
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        if {cls.__name__ for cls in type(current).__mro__} & _UNREACHABLE_DRIVER_ERRORS:
            return True
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_PG_OUT_OF_RESOURCES):
            return True
        if isinstance(current, sqlite3.Error) and (
            ((getattr(current, "sqlite_errorcode", None) or 0) & 0xFF) in _SQLITE_UNAVAILABLE_CODES
        ):
            return True
        pending += [current.__cause__, current.__context__, getattr(current, "orig", None)]
    return False


class JobNotRetryable(StorageError):
    """`JobStore.retry_job` refused a job that exists: it is not failed or cancelled (`status`), or it
    could not run again; nothing was written."""

    def __init__(self, job_id: int, status: JobStatus, reason: str) -> None:
        super().__init__(f"Job #{job_id} was not retried: {reason}.")
        self.job_id = job_id
        self.status = status
