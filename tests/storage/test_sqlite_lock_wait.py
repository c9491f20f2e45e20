"""On SQLite a write waits for the file's lock (BEGIN IMMEDIATE, up to the busy timeout): a lease it
grants runs for its whole length from when the lock was taken, not from when the call began (before,
a claim that waited 40 s of SQLite's 60 s for the lock got a lease its worker could not renew in time,
and another worker took the job)."""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from storage import JobStore, create_engine
from tests.sqlite_lock import WriteLock
from tests.storage.helpers import MODEL, enqueue

WAITED = timedelta(seconds=100)  # how far the store's clock moves while the call waits for the lock


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def _store(sqlite_template: Path, tmp_path: Path, clock: Clock) -> tuple[JobStore, WriteLock]:
    path = tmp_path / "jukebot.sqlite3"
    shutil.copyfile(sqlite_template, path)
    return JobStore(create_engine(f"sqlite+aiosqlite:///{path}?timeout=30"), clock=clock), WriteLock(path)


async def _after_waiting_for_the_lock(lock: WriteLock, clock: Clock, call: asyncio.Task[object]) -> object:
    """Let `call` start (it waits for the lock another process holds), move the clock, free the lock."""
    lock.take()
    try:
        await asyncio.sleep(0)  # one step: the call runs up to its wait for the lock
        assert not call.done()
        clock.now += WAITED
    finally:
        lock.release()
    return await asyncio.wait_for(call, 30)


async def test_a_claim_that_waited_for_the_lock_gets_a_whole_lease(
    sqlite_template: Path, tmp_path: Path
) -> None:
    clock = Clock()
    store, lock = _store(sqlite_template, tmp_path, clock)
    try:
        await enqueue(store)
        claim = asyncio.create_task(store.claim("w1", [MODEL], lease_seconds=60.0))
        job = await _after_waiting_for_the_lock(lock, clock, claim)
        assert job is not None and job.lease_expires_at == clock.now + timedelta(seconds=60)
    finally:
        await store.engine.dispose()


async def test_a_results_claim_renewed_after_waiting_for_the_lock_runs_its_whole_length(
    sqlite_template: Path, tmp_path: Path
) -> None:
    clock = Clock()
    store, lock = _store(sqlite_template, tmp_path, clock)
    try:
        job_id = await enqueue(store)
        claimed = await store.claim("w1", [MODEL], lease_seconds=60.0)
        assert claimed is not None
        await store.fail(job_id, "w1", "a test failure")
        assert await store.claim_results_posting(job_id, "bot", 30.0) is not None
        renew = asyncio.create_task(store.renew_results_posting(job_id, "bot", 30.0))
        assert await _after_waiting_for_the_lock(lock, clock, renew) is True
        job = await store.get_job(job_id)
        assert job.results_posting_expires_at == clock.now + timedelta(seconds=30)
    finally:
        await store.engine.dispose()
