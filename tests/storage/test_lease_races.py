"""Leases against what races them: heartbeats while the samples are stored, a claim whose answer was
lost, a cancel that comes as the job succeeds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from storage import JobStatus, JobStore, LeaseLost
from tests.conftest import FakeClock
from tests.storage.helpers import MODEL, enqueue, new_sample, row_counts
from tests.waiting import wait_until

LEASE = 60.0


@asynccontextmanager
async def samples_insert_held(engine: AsyncEngine) -> AsyncIterator[None]:
    """Inside: another connection holds a lock that every insert into samples waits for (Postgres), as
    megabytes of samples on a slow link hold a `complete` mid-way; released on the way out."""
    async with engine.connect() as blocker:
        await blocker.begin()
        await blocker.execute(text("LOCK TABLE samples IN SHARE MODE"))
        try:
            yield
        finally:
            await blocker.rollback()


async def insert_waiting(engine: AsyncEngine) -> bool:
    """Whether an insert into samples waits for `samples_insert_held`'s lock now."""
    async with engine.connect() as connection:
        waiting = await connection.scalar(
            text("SELECT count(*) FROM pg_locks WHERE relation = 'samples'::regclass AND NOT granted")
        )
    return bool(waiting)


def require_postgres(engine: AsyncEngine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite runs one write transaction at a time: a heartbeat waits for any write")


@pytest.mark.postgres
async def test_heartbeats_renew_the_lease_while_the_samples_are_being_stored(engine: AsyncEngine) -> None:
    """Storing the samples must not lock the job's row: the heartbeats that keep the lease alive through
    a long upload update it. Were it locked, they would wait, the lease would run out, and the samples
    of a job whose upload takes longer than a lease could never be stored."""
    require_postgres(engine)
    store = JobStore(engine)  # the database's clock, as a worker's store
    job_id = await enqueue(store)
    claimed = await store.claim("gpu-0", [MODEL], LEASE)
    assert claimed is not None and claimed.lease_expires_at is not None
    async with samples_insert_held(engine):
        completing = asyncio.create_task(store.complete(job_id, "gpu-0", [new_sample(0), new_sample(1)]))
        try:
            await wait_until(lambda: insert_waiting(engine), 30, "the samples' insert to wait for the lock")
            # Answered at once when nothing holds the row; the limit only keeps a failure from hanging.
            beat = await asyncio.wait_for(store.heartbeat(job_id, "gpu-0", LEASE), 10)
        except BaseException:
            completing.cancel()
            raise
        assert beat.lease_expires_at > claimed.lease_expires_at and not beat.cancel_requested
        assert not completing.done()
    sample_ids = await completing
    job = await store.get_job(job_id)
    assert job.status is JobStatus.SUCCEEDED and job.lease_owner is None
    assert sorted(info.id for info in await store.samples_for_job(job_id)) == sorted(sample_ids)


@pytest.mark.postgres
async def test_samples_stored_by_a_worker_that_lost_its_lease_meanwhile_are_dropped(
    store: JobStore, clock: FakeClock
) -> None:
    """The lease is checked after the samples went in, in the same transaction: a job taken over while
    they were being stored keeps none of them."""
    require_postgres(store.engine)
    job_id = await enqueue(store)
    assert await store.claim("gpu-0", [MODEL], LEASE)
    before = await row_counts(store.engine)
    async with samples_insert_held(store.engine):
        completing = asyncio.create_task(store.complete(job_id, "gpu-0", [new_sample(0)]))
        try:
            await wait_until(
                lambda: insert_waiting(store.engine), 30, "the samples' insert to wait for the lock"
            )
            clock.advance(LEASE + 1)  # gpu-0 went silent; another worker takes the job over, a lease
            assert await store.requeue_expired() == []  # after a recovery pass saw it silent
            clock.advance(LEASE + 1)
            taken = await store.claim("gpu-1", [MODEL], LEASE)
        except BaseException:
            completing.cancel()
            raise
        assert taken is not None and taken.id == job_id and taken.attempts == 1
    with pytest.raises(LeaseLost, match="'gpu-1' holds it now"):
        await completing
    job = await store.get_job(job_id)
    assert job.status is JobStatus.RUNNING and job.lease_owner == "gpu-1"
    after = await row_counts(store.engine)
    assert after["samples"] == before["samples"] == 0


async def test_a_cancel_that_came_as_the_job_succeeded_leaves_no_reason(store: JobStore) -> None:
    job_id = await enqueue(store)
    assert await store.claim("gpu-0", [MODEL], LEASE)
    reason = "cancelled by a moderator"
    assert await store.request_cancel(job_id, None, reason=reason) is JobStatus.CANCELLING
    assert (await store.get_job(job_id)).error == reason
    await store.complete(job_id, "gpu-0", [new_sample(0)])  # the worker finished before it saw the cancel
    job = await store.get_job(job_id)
    assert job.status is JobStatus.SUCCEEDED and job.error is None


async def test_a_crash_note_stays_on_a_job_that_succeeded_later(store: JobStore) -> None:
    """Only a cancel's reason goes: what an earlier attempt said stays for the operator."""
    job_id = await enqueue(store)
    assert await store.claim("gpu-0", [MODEL], LEASE)
    assert await store.retry(job_id, "gpu-0", "boom") is JobStatus.QUEUED
    assert await store.claim("gpu-0", [MODEL], LEASE)
    await store.complete(job_id, "gpu-0", [new_sample(0)])
    job = await store.get_job(job_id)
    assert job.status is JobStatus.SUCCEEDED and job.error is not None and "boom" in job.error


# ---------------------------------------------------------------- a claim whose answer was lost


async def test_reclaim_own_takes_back_the_lost_job_first_with_its_attempts_and_a_new_lease(
    store: JobStore, clock: FakeClock
) -> None:
    first = await enqueue(store, max_attempts=1)
    later = await enqueue(store, priority=-5)  # would be taken first by anyone else's claim
    theirs = await enqueue(store)
    held = await store.claim("gpu-1", [MODEL], LEASE)  # another worker's job: never taken back
    assert held is not None and held.id == later
    lost = await store.claim("gpu-0", [MODEL], LEASE)  # committed; gpu-0 never heard of it
    assert lost is not None and lost.id == first
    clock.advance(10)
    again = await store.claim("gpu-0", [MODEL], LEASE, reclaim_own=True, with_checkpoint=False)
    assert again is not None and again.id == first
    assert again.attempts == 0 and again.status is JobStatus.RUNNING
    job = await store.get_job(first)
    assert job.lease_owner == "gpu-0" and job.lease_expires_at is not None
    assert (job.lease_expires_at - clock.now).total_seconds() == LEASE  # renewed from now
    other = await store.get_job(later)
    assert other.lease_owner == "gpu-1" and other.attempts == 0
    assert (await store.get_job(theirs)).status is JobStatus.QUEUED
    # With nothing of its own left, it claims as usual.
    await store.complete(first, "gpu-0", [new_sample(0)])
    nxt = await store.claim("gpu-0", [MODEL], LEASE, reclaim_own=True)
    assert nxt is not None and nxt.id == theirs and nxt.attempts == 0


async def test_without_reclaim_own_a_worker_does_not_take_its_own_running_job(store: JobStore) -> None:
    """A caller may hold several jobs at once under one id (it says nothing about them)."""
    one = await enqueue(store)
    two = await enqueue(store)
    first = await store.claim("gpu-0", [MODEL], LEASE)
    second = await store.claim("gpu-0", [MODEL], LEASE)
    assert first is not None and second is not None and (first.id, second.id) == (one, two)
    assert await store.claim("gpu-0", [MODEL], LEASE) is None


async def test_reclaim_own_cancels_its_lost_job_that_a_user_cancelled_meanwhile(
    store: JobStore,
) -> None:
    cancelled = await enqueue(store)
    queued = await enqueue(store)
    lost = await store.claim("gpu-0", [MODEL], LEASE)  # committed; gpu-0 never heard of it
    assert lost is not None and lost.id == cancelled
    assert await store.request_cancel(cancelled, None) is JobStatus.CANCELLING
    taken = await store.claim("gpu-0", [MODEL], LEASE, reclaim_own=True)
    assert taken is not None and taken.id == queued
    job = await store.get_job(cancelled)
    assert job.status is JobStatus.CANCELLED and job.lease_owner is None and job.attempts == 0
    assert job.finished_at is not None


async def test_reclaim_own_gives_back_its_lost_job_of_a_model_it_no_longer_serves(store: JobStore) -> None:
    """A worker re-reads its models before each claim: one whose files left the disk between the lost
    claim and the next held its job, run by nobody, until the lease ran out (and cost an attempt)."""
    other_model = "1b_lyrics"
    stranded = await enqueue(store)
    lost = await store.claim("gpu-0", [MODEL], LEASE)  # committed; gpu-0 never heard of it
    assert lost is not None and lost.id == stranded
    assert await store.claim("gpu-0", [other_model], LEASE, reclaim_own=True) is None
    job = await store.get_job(stranded)
    assert (job.status, job.lease_owner, job.attempts) == (JobStatus.QUEUED, None, 0)
    taken = await store.claim("gpu-1", [MODEL], LEASE)  # at once, by a worker that has the model
    assert taken is not None and taken.id == stranded and taken.attempts == 0
