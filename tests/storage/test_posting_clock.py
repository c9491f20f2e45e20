"""Bots on several machines post results from one Postgres database: the claim on posting a job's
results is a lease decided by the database's clock, as a worker's is, never by a bot's own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

import storage.store
from storage import JobStore
from tests.storage.helpers import finished_job

LEASE = 60.0
SKEW = timedelta(minutes=5)


def store_with_clock_off_by(engine: AsyncEngine, skew: timedelta) -> JobStore:
    """A store (on the database's lease clock, as a bot's) on a machine whose clock is `skew` off."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(storage.store, "utcnow", lambda: datetime.now(UTC) + skew)
        return JobStore(engine)


async def database_now(engine: AsyncEngine) -> datetime:
    async with engine.connect() as connection:
        now = await connection.scalar(text("SELECT statement_timestamp()"))
    assert isinstance(now, datetime)
    return now


@pytest.mark.postgres
async def test_results_posting_claims_follow_the_databases_clock(engine: AsyncEngine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("on SQLite every bot runs on the database's machine, with its clock")
    on_time = JobStore(engine)
    job_id, _ = await finished_job(on_time)
    ahead = store_with_clock_off_by(engine, SKEW)
    behind = store_with_clock_off_by(engine, -SKEW)

    # A bot whose clock is ahead takes nothing over that is not expired, nor lists it as free.
    assert await on_time.claim_results_posting(job_id, "bot-a", LEASE)
    assert await ahead.claim_results_posting(job_id, "bot-b", LEASE) is None
    assert job_id not in [job.id for job in await ahead.finished_jobs_unposted()]
    await on_time.release_results_posting(job_id, "bot-a")

    # A bot whose clock is behind holds a claim for the lease it asked for, from the database's now:
    # not one that ran out minutes ago, which anyone could take over at once.
    assert await behind.claim_results_posting(job_id, "bot-c", LEASE)
    expires = (await on_time.get_job(job_id)).results_posting_expires_at
    assert expires is not None
    assert abs((expires - await database_now(engine)).total_seconds() - LEASE) < 10
    assert await on_time.claim_results_posting(job_id, "bot-a", LEASE) is None
    assert await behind.renew_results_posting(job_id, "bot-c", LEASE)
    assert await on_time.claim_results_posting(job_id, "bot-a", LEASE) is None
    # …and a try that failed waits the time it asked for, by the same clock.
    await behind.release_results_posting(job_id, "bot-c", retry_after_s=LEASE)
    assert await on_time.claim_results_posting(job_id, "bot-a", LEASE) is None
    assert job_id not in [job.id for job in await on_time.finished_jobs_unposted()]
    assert await ahead.claim_results_posting(job_id, "bot-b", LEASE) is None


@pytest.mark.postgres
async def test_prune_measures_a_jobs_age_by_the_databases_clock(engine: AsyncEngine) -> None:
    """A GPU machine whose clock was a month behind stamped its failures a month old: `jobs prune
    --older-than 7` dropped the checkpoint of a job that failed seconds ago, and an operator machine
    whose clock was ahead did the same (kill audit)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("on SQLite every worker runs on the database's machine, with its clock")
    month = timedelta(days=30)
    worker, operator_ahead = store_with_clock_off_by(engine, -month), store_with_clock_off_by(engine, month)
    on_time = JobStore(engine)
    job_id = await on_time.enqueue(
        kind="generate", model="5b", params={"seconds": 20}, channel_id=1, user_id=2
    )
    claimed = await worker.claim("gpu-box/1/cuda:0", {"5b"}, LEASE)
    assert claimed is not None and claimed.id == job_id
    await worker.save_checkpoint(job_id, "gpu-box/1/cuda:0", b"four hours of windows")
    await worker.fail(job_id, "gpu-box/1/cuda:0", "Out of memory")

    for operator in (on_time, operator_ahead):
        assert (await operator.prune_finished(timedelta(days=7))).job_ids == ()
    assert (await on_time.get_job(job_id)).has_checkpoint
    assert (await on_time.prune_finished(timedelta(seconds=0.001))).job_ids == (job_id,)  # once old
