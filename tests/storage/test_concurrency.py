"""Concurrent enqueues keep per-user limits and queue order; reads never wait for a writer."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from storage import JobStatus, JobStore
from storage.engine import create_engine
from storage.errors import UserJobLimitReached
from tests.conftest import FakeClock
from tests.storage.helpers import GUILD, MODEL, USER, enqueue, write_held

USERS = [USER + i for i in range(20)]
# Far beyond a read's few milliseconds; a read that waits for the writer never finishes in the test.
READ_DEADLINE_S = 10.0


async def _enqueue_within_limits(store: JobStore, user_id: int) -> int | UserJobLimitReached:
    try:
        return await enqueue(store, user_id=user_id, max_running_per_user=1, max_queued_per_user=3)
    except UserJobLimitReached as refused:
        return refused


async def test_a_burst_of_enqueues_from_twenty_users_queues_exactly_three_each(store: JobStore) -> None:
    # Any other exception (a database error, a deadlock) fails the gather, and the test.
    results = await asyncio.gather(*(_enqueue_within_limits(store, USERS[i % 20]) for i in range(100)))

    queued = [result for result in results if isinstance(result, int)]
    refused = [result for result in results if isinstance(result, UserJobLimitReached)]
    assert (len(queued), len(refused)) == (60, 40)
    assert all(not r.running and r.limit == 3 and len(r.job_ids) == 3 for r in refused)
    for user_id in USERS:
        counts = await store.user_job_counts(user_id, GUILD)
        assert (counts.queued, counts.running) == (3, 0)
    owner = {job.id: job.user_id for job in await store.unfinished_jobs(GUILD)}
    assert all(len({owner[job_id] for job_id in r.job_ids}) == 1 for r in refused)  # the refused user's


async def test_the_running_limit_is_checked_first_and_the_server_is_its_scope(store: JobStore) -> None:
    running = await enqueue(store, max_running_per_user=1, max_queued_per_user=3)
    claimed = await store.claim("w", [MODEL], lease_seconds=60)
    assert claimed is not None and claimed.id == running
    try:
        await enqueue(store, max_running_per_user=1, max_queued_per_user=3)
        raise AssertionError("a second job was queued past the running limit")
    except UserJobLimitReached as refused:
        assert (refused.running, refused.job_ids, refused.limit) == (True, (running,), 1)
        assert str(refused) == f"You already have 1 job(s) running (#{running}); the limit is 1."
    # Another server has limits of its own.
    elsewhere = await enqueue(store, guild_id=GUILD + 1, max_running_per_user=1, max_queued_per_user=3)
    assert (await store.get_job(elsewhere)).status == JobStatus.QUEUED
    assert (await store.user_job_counts(USER, GUILD)).queued == 0


class BackwardsClock(FakeClock):
    """Each reading 1 ms earlier than the last: what a clock read before the write lock looks like
    when the lock is granted in another order (or two bots' clocks disagree), made deterministic."""

    def __call__(self) -> datetime:
        self.now -= timedelta(milliseconds=1)
        return self.now


async def test_positions_read_right_after_each_enqueue_are_1_to_n_in_claim_order(engine: AsyncEngine) -> None:
    store = JobStore(engine, clock=BackwardsClock())

    async def enqueue_and_place(n: int) -> tuple[int, int | None]:
        job_id = await enqueue(store, user_id=USER + n)
        return job_id, await store.queue_position(job_id)  # what the progress message first shows

    # One after another (each reads its place before the next arrives), then 30 at once.
    placed = [await enqueue_and_place(n) for n in range(10)]
    placed += await asyncio.gather(*(enqueue_and_place(n) for n in range(10, 40)))

    assert [position for _, position in placed[:10]] == list(range(1, 11))
    assert sorted(position for _, position in placed) == list(range(1, 41))
    by_position = [job_id for job_id, _ in sorted(placed, key=lambda pair: pair[1] or 0)]
    claimed = []
    while (job := await store.claim("w", [MODEL], lease_seconds=60)) is not None:
        claimed.append(job.id)
    assert claimed == by_position


async def test_reads_complete_while_another_connection_holds_a_write_transaction(
    store: JobStore, engine: AsyncEngine
) -> None:
    job_id = await enqueue(store)
    async with write_held(engine, job_id):
        reads = asyncio.gather(
            store.get_job(job_id),
            store.queue_position(job_id),
            store.unfinished_jobs(GUILD),
            store.user_job_counts(USER, GUILD),
            store.get_guild_settings(GUILD),
            store.vote_counts([1]),
        )
        job, position, unfinished, counts, *_ = await asyncio.wait_for(reads, READ_DEADLINE_S)
    # The reads saw the last commit, not the write in progress.
    assert job.stage is None and position == 1 and [j.id for j in unfinished] == [job_id]
    assert counts.queued == 1
    assert (await store.get_job(job_id)).stage == "checkpointing"


async def test_a_new_sqlite_file_being_switched_to_wal_by_another_process_is_waited_for(
    tmp_path: Path,
) -> None:
    """Bot and worker open a new database together. The first to switch it to WAL holds the write
    lock while it does; SQLite answers the other "database is locked" at once, without its busy
    timeout. Opening must wait for the switch instead of failing (it failed 8 times in 40 for two
    `jukebot db upgrade` started together)."""
    path = tmp_path / "new.sqlite3"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        other.execute("CREATE TABLE t (x)")  # a rollback-journal file, as every new one is
        other.execute("BEGIN IMMEDIATE")  # the lock the other process's switch holds
        # released only once the event loop runs again: while opening waits for it
        asyncio.get_running_loop().call_later(0.5, other.execute, "COMMIT")
        engine = create_engine(f"sqlite+aiosqlite:///{path}")
        try:
            async with engine.connect() as connection:
                assert await connection.scalar(text("PRAGMA journal_mode")) == "wal"
        finally:
            await engine.dispose()
    finally:
        other.close()
