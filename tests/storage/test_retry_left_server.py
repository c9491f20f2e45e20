"""`retry_job` refuses a job cancelled because the bot was removed from its server (`cancel_guild_jobs`):
the relay posts only in servers the bot is in, so the job would use GPU time for results nobody sees.
Once a job was queued in that server again (a bot serves it again), such a job may go back."""

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


async def test_a_job_of_a_server_the_bot_left_is_not_retried(store: JobStore, clock: FakeClock) -> None:
    running, queued = await left_server(store, clock)

    for job_id in (running, queued):
        with pytest.raises(JobNotRetryable) as refused:
            await store.retry_job(job_id)
        assert str(refused.value) == (
            f"Job #{job_id} was not retried: it was cancelled because the bot was removed from its server "
            f"({GUILD}), where no job was queued since: its results could not be posted there."
        )
        job = await store.get_job(job_id)
        assert (job.status, job.error) == (JobStatus.CANCELLED, "the bot was removed from this server")
    assert await store.claim(WORKER, [MODEL], lease_seconds=60) is None  # no GPU time for it


async def test_once_a_job_is_queued_there_again_the_left_servers_jobs_may_go_back(
    store: JobStore, clock: FakeClock
) -> None:
    """The bot was added back (or another bot serves the server): someone queued a job there."""
    running, queued = await left_server(store, clock)
    await enqueue(store, user_id=USER + 1)

    assert (await store.retry_job(running)).status is JobStatus.QUEUED
    assert (await store.retry_job(queued)).status is JobStatus.QUEUED


async def test_a_job_queued_in_another_server_does_not_bring_these_back(
    store: JobStore, clock: FakeClock
) -> None:
    running, _ = await left_server(store, clock)
    await enqueue(store, guild_id=GUILD + 1)
    with pytest.raises(JobNotRetryable):
        await store.retry_job(running)


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
