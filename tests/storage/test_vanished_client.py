"""A client that vanished mid-transaction (a worker machine that lost power, a NAT that forgot the flow:
no FIN or RST reaches Postgres) must not hold the queue: the server ends its session, and recovery
passes over the rows it still holds. Postgres only: on SQLite a transaction holds the one write lock,
and a dead process's lock goes with its file handle."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

import storage.engine
from storage import JobStatus, JobStore
from storage.engine import create_engine
from storage.store import CLAIM_LOCK_KEY
from tests.storage.helpers import MODEL, USER, enqueue

pytestmark = pytest.mark.parametrize(
    "db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
# Far beyond the second the server is told to wait here; without the server's limit the call waits
# for its own 60 s statement limit.
DAY = timedelta(days=1)
DEADLINE_S = 20.0


@contextlib.asynccontextmanager
async def vanished_client(db_url: str) -> AsyncIterator[AsyncConnection]:
    """A connection whose transaction is left open with nothing more sent: from the server's side, a
    client that went dark mid-transaction."""
    engine = create_engine(db_url)
    connection = await engine.connect()
    await connection.begin()
    try:
        yield connection
    finally:
        with contextlib.suppress(Exception):  # the server may have ended the session meanwhile
            await connection.close()
        await engine.dispose()


async def test_a_client_gone_dark_holding_the_claim_lock_stops_claims_only_briefly(
    db_url: str, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage.engine, "POSTGRES_IDLE_IN_TRANSACTION_SECONDS", 1.0)
    job_id = await enqueue(store)
    async with vanished_client(db_url) as gone:
        # mid-claim: it holds the lock that serialises claims
        await gone.execute(select(func.pg_advisory_xact_lock(CLAIM_LOCK_KEY)))
        claimed = await asyncio.wait_for(store.claim("worker-b", [MODEL], lease_seconds=60), DEADLINE_S)
    assert claimed is not None and claimed.id == job_id


async def test_recovery_passes_over_a_row_a_vanished_client_holds_and_recovers_the_rest(
    db_url: str, store: JobStore, engine: AsyncEngine
) -> None:
    held_job = await enqueue(store, user_id=USER)
    cancelled_job = await enqueue(store, user_id=USER + 1)
    for _ in range(2):
        assert await store.claim("worker-a", [MODEL], lease_seconds=60) is not None
    await store.request_cancel(cancelled_job, USER + 1)
    far_future = store._clock().replace(year=2100)
    async with vanished_client(db_url) as gone:
        # mid-checkpoint: its UPDATE of the job's row reached the server, its COMMIT never will
        await gone.execute(text("UPDATE jobs SET progress = 0.5 WHERE id = :id"), {"id": held_job})
        # a first pass sees the leases run out, a pass a lease later recovers them
        assert await asyncio.wait_for(store.requeue_expired(now=far_future), DEADLINE_S) == []
        recovered = await asyncio.wait_for(store.requeue_expired(now=far_future + DAY), DEADLINE_S)
        assert recovered == [(cancelled_job, JobStatus.CANCELLED)]
    assert await store.requeue_expired(now=far_future + DAY) == []
    assert await store.requeue_expired(now=far_future + 2 * DAY) == [(held_job, JobStatus.QUEUED)]
    assert (await store.get_job(held_job)).progress != 0.5  # its write never committed
