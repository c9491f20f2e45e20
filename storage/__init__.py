"""Durable storage: the job queue, results, votes, primes and per-server settings (SQLAlchemy 2 async).

Imports nothing else of jukebot's. Start with `create_engine(url)` and `JobStore(engine)`;
`storage.migrate.upgrade_to_head(url)` brings a database to the current schema.
"""

from storage.engine import create_engine
from storage.errors import (
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
    StorageError,
)
from storage.models import JobKind, JobStatus
from storage.records import (
    ClaimedJob,
    GuildSettings,
    Heartbeat,
    Job,
    LevelWindow,
    NewSample,
    Prime,
    PruneReport,
    RankedSample,
    Sample,
    SampleInfo,
    UserJobCounts,
    WorkerSeen,
)
from storage.store import MAX_PARAMS_BYTES, WORKER_PRESENCE_SECONDS, WORKER_STALE_SECONDS, JobStore

__all__ = [
    "MAX_PARAMS_BYTES",
    "WORKER_PRESENCE_SECONDS",
    "WORKER_STALE_SECONDS",
    "ClaimedJob",
    "GuildSettings",
    "Heartbeat",
    "InvalidGuildSettings",
    "InvalidJob",
    "InvalidPrime",
    "InvalidSample",
    "Job",
    "JobAlreadyFinished",
    "JobKind",
    "JobNotFinished",
    "JobNotFound",
    "JobNotRetryable",
    "JobStatus",
    "JobStore",
    "LeaseLost",
    "LevelWindow",
    "NewSample",
    "NotJobOwner",
    "OversizeParameters",
    "Prime",
    "PrimeNotFound",
    "PruneReport",
    "RankedSample",
    "Sample",
    "SampleInfo",
    "SampleNotFound",
    "StorageError",
    "UserJobCounts",
    "WorkerSeen",
    "create_engine",
]
