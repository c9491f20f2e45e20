"""`retry_job` refuses the jobs of a server the bot was removed from (`cancel_guild_jobs`), whatever they
ended as: the relay posts only in servers the bot is in, so the job would use GPU time for results nobody
sees. Once the bot is in that server again (`mark_guilds_present`), they may go back."""

from __future__ import annotations

import pytest

from storage import JobStatus, JobStore
from storage.errors import JobNotRetryable
from tests.conftest import FakeClock
from tests.storage.helpers import GUILD, MODEL, USER, enqueue

WORKER = "worker-a"


async def running_job(store: JobStore, **fields: object) -> int:
    job_id = await enqueue(store, **fields)
    claimed = await store.claim(WORKER, [MODEL], lease_seconds=60)
    assert claimed is not None and claimed.id == job_id
    return job_id


async def left_server(store: JobStore, clock: FakeClock) -> tuple[int, int]:
    """A running and a queued job of GUILD when the bot is removed from it; the worker stops the first.
    Returns (was running, was queued)."""
    running = await running_job(store, max_queued_per_user=3)
    queued = await enqueue(store, max_queued_per_user=3)
    assert await store.cancel_guild_jobs(GUILD) == [
        (running, JobStatus.CANCELLING),
        (queued, JobStatus.CANCELLED),
    ]
    clock.advance(5)
    await store.mark_cancelled(running, WORKER)
    clock.advance(60)
    return running, queued


def refusal(job_id: int) -> str:
    return (
        f"Job #{job_id} was not retried: the bot was removed from its server ({GUILD}) and is not in it "
        "again: its results could not be posted there."
    )


async def test_a_job_of_a_server_the_bot_left_is_not_retried(store: JobStore, clock: FakeClock) -> None:
    running, queued = await left_server(store, clock)

    for job_id in (running, queued):
        with pytest.raises(JobNotRetryable) as refused:
            await store.retry_job(job_id)
        assert str(refused.value) == refusal(job_id)
        job = await store.get_job(job_id)
        assert (job.status, job.error) == (JobStatus.CANCELLED, "the bot was removed from this server")
    assert await store.claim(WORKER, [MODEL], lease_seconds=60) is None  # no GPU time for it


async def test_a_job_that_ended_before_the_bot_left_its_server_is_not_retried_either(
    store: JobStore, clock: FakeClock
) -> None:
    failed = await running_job(store, max_attempts=1)
    await store.fail(failed, WORKER, "CUDA out of memory")
    by_user = await enqueue(store, max_queued_per_user=3)
    await store.request_cancel(by_user, USER)
    clock.advance(5)
    assert await store.cancel_guild_jobs(GUILD) == []  # nothing left to stop
    clock.advance(60)

    for job_id in (failed, by_user):
        with pytest.raises(JobNotRetryable) as refused:
            await store.retry_job(job_id)
        assert str(refused.value) == refusal(job_id)


async def test_once_the_bot_is_in_the_server_again_its_jobs_may_go_back(
    store: JobStore, clock: FakeClock
) -> None:
    running, queued = await left_server(store, clock)
    await store.mark_guilds_present([GUILD + 1, GUILD])

    assert (await store.retry_job(running)).status is JobStatus.QUEUED
    assert (await store.retry_job(queued)).status is JobStatus.QUEUED


async def test_being_in_another_server_does_not_bring_these_back(store: JobStore, clock: FakeClock) -> None:
    running, _ = await left_server(store, clock)
    await store.mark_guilds_present([GUILD + 1])
    await enqueue(store, guild_id=GUILD + 1)
    with pytest.raises(JobNotRetryable):
        await store.retry_job(running)


async def test_leaving_a_server_twice_keeps_one_record(store: JobStore, clock: FakeClock) -> None:
    await left_server(store, clock)
    assert await store.cancel_guild_jobs(GUILD) == []  # a second GUILD_DELETE (another shard, a replay)
    await store.mark_guilds_present([GUILD])
    job = await enqueue(store, max_queued_per_user=3)
    await store.request_cancel(job, USER)
    assert (await store.retry_job(job)).status is JobStatus.QUEUED


async def test_jobs_cancelled_otherwise_go_back(store: JobStore, clock: FakeClock) -> None:
    """By their user, by a moderator, by the operator, in a server the bot is in, or in a direct message."""
    by_user = await enqueue(store, max_queued_per_user=3)
    await store.request_cancel(by_user, USER)
    by_operator = await enqueue(store, max_queued_per_user=3)
    await store.request_cancel(by_operator, None, reason="by the operator")
    in_dm = await enqueue(store, guild_id=None)
    await store.request_cancel(in_dm, USER)
    clock.advance(60)

    for job_id in (by_user, by_operator, in_dm):
        assert (await store.retry_job(job_id)).status is JobStatus.QUEUED
