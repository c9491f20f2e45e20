"""Crash retries, "results posted" claims for the bot, and the message each sample was posted in."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from storage import (
    InvalidSample,
    JobNotFinished,
    JobNotFound,
    JobStatus,
    JobStore,
    LeaseLost,
    SampleNotFound,
    create_engine,
)
from tests.conftest import FakeClock
from tests.storage.helpers import GUILD, MODEL, enqueue, finished_job, new_sample, row_counts

CRASH = "RuntimeError: boom"


async def running_job(store: JobStore, worker: str = "worker-a", **fields: object) -> int:
    job_id = await enqueue(store, **fields)
    claimed = await store.claim(worker, [MODEL], lease_seconds=30)
    assert claimed is not None and claimed.id == job_id
    return job_id


# ---------------------------------------------------------------------------- retry


async def test_retry_requeues_with_one_more_attempt_keeping_error_and_checkpoint(
    store: JobStore, clock: FakeClock
) -> None:
    job_id = await running_job(store, max_attempts=3)
    await store.save_checkpoint(job_id, "worker-a", b"resume here")

    assert await store.retry(job_id, "worker-a", CRASH) is JobStatus.QUEUED

    job = await store.get_job(job_id)
    assert (job.status, job.attempts, job.lease_owner, job.lease_expires_at) == (
        JobStatus.QUEUED,
        1,
        None,
        None,
    )
    assert job.error == f"Attempt 1 of 3 crashed ({CRASH}); it will be retried."
    assert job.finished_at is None and job.updated_at == clock.now
    assert await store.get_checkpoint(job_id) == b"resume here"
    # The next worker resumes it from the checkpoint.
    again = await store.claim("worker-b", [MODEL], lease_seconds=30)
    assert again is not None and again.id == job_id and again.checkpoint == b"resume here"


async def test_retry_fails_the_job_at_max_attempts(store: JobStore, clock: FakeClock) -> None:
    job_id = await running_job(store, max_attempts=2)
    assert await store.retry(job_id, "worker-a", "first") is JobStatus.QUEUED
    await store.claim("worker-b", [MODEL], lease_seconds=30)
    clock.advance(5)

    assert await store.retry(job_id, "worker-b", CRASH) is JobStatus.FAILED

    job = await store.get_job(job_id)
    assert job.status is JobStatus.FAILED and job.attempts == 2 and job.finished
    assert job.error == f"The sampler crashed on all 2 attempts; the last error was: {CRASH}"
    assert job.finished_at == clock.now and job.lease_owner is None


async def test_retry_of_a_job_being_cancelled_cancels_it(store: JobStore, clock: FakeClock) -> None:
    job_id = await running_job(store, max_attempts=3)
    assert await store.request_cancel(job_id, (await store.get_job(job_id)).user_id) is JobStatus.CANCELLING

    assert await store.retry(job_id, "worker-a", CRASH) is JobStatus.CANCELLED

    job = await store.get_job(job_id)
    assert job.status is JobStatus.CANCELLED and job.attempts == 0 and job.error is None
    assert job.finished_at == clock.now and job.lease_owner is None


async def test_retry_by_a_worker_that_lost_the_lease_changes_nothing(store: JobStore) -> None:
    job_id = await running_job(store)
    with pytest.raises(LeaseLost, match=r"'worker-b' no longer holds job #1: worker 'worker-a' holds it now"):
        await store.retry(job_id, "worker-b", CRASH)
    await store.fail(job_id, "worker-a", "gave up")
    with pytest.raises(LeaseLost, match="it has already failed"):
        await store.retry(job_id, "worker-a", CRASH)
    job = await store.get_job(job_id)
    assert job.status is JobStatus.FAILED and job.attempts == 0 and job.error == "gave up"
    with pytest.raises(JobNotFound):
        await store.retry(99, "worker-a", CRASH)


async def test_retry_keeps_a_huge_error_within_the_column_limit(store: JobStore) -> None:
    job_id = await running_job(store, max_attempts=1)
    assert await store.retry(job_id, "worker-a", "x" * 10_000) is JobStatus.FAILED
    error = (await store.get_job(job_id)).error
    assert (
        error is not None and error.startswith("The sampler crashed on all 1 attempts") and len(error) <= 4000
    )


# ---------------------------------------------------------------------------- results posted


async def test_mark_results_posted_is_idempotent_and_only_for_finished_jobs(
    store: JobStore, clock: FakeClock
) -> None:
    job_id = await running_job(store)
    with pytest.raises(JobNotFinished, match=r"Job #1 is still running; its results can only be posted"):
        await store.mark_results_posted(job_id)
    assert (await store.get_job(job_id)).results_posted_at is None

    await store.complete(job_id, "worker-a", [new_sample(0)])
    clock.advance(3)
    assert await store.mark_results_posted(job_id) is True
    assert (await store.get_job(job_id)).results_posted_at == clock.now
    clock.advance(3)
    assert await store.mark_results_posted(job_id) is False
    assert (await store.get_job(job_id)).results_posted_at == clock.now - timedelta(seconds=3)
    with pytest.raises(JobNotFound):
        await store.mark_results_posted(42)


async def test_two_bots_racing_to_post_results_exactly_one_wins(db_url: str) -> None:
    """Two bot processes (two engines, two connection pools) mark the same jobs at once."""
    engines = [create_engine(db_url), create_engine(db_url)]
    try:
        bots = [JobStore(engine) for engine in engines]
        job_ids = [(await finished_job(bots[0]))[0] for _ in range(5)]
        for job_id in job_ids:
            calls = [bot.mark_results_posted(job_id) for bot in bots for _ in range(3)]
            results = await asyncio.gather(*calls)
            assert sorted(results) == [False] * 5 + [True], job_id
    finally:
        for engine in engines:
            await engine.dispose()


async def test_finished_jobs_unposted_lists_what_a_bot_still_has_to_post(
    store: JobStore, clock: FakeClock
) -> None:
    other_guild = GUILD + 1
    succeeded, _ = await finished_job(store)
    clock.advance(1)
    no_message, _ = await finished_job(store)  # the bot never posted a progress message for it
    clock.advance(1)
    failed = await running_job(store)
    await store.fail(failed, "worker-a", "broken")
    clock.advance(1)
    cancelled = await enqueue(store, guild_id=other_guild)
    await store.request_cancel(cancelled, (await store.get_job(cancelled)).user_id)
    clock.advance(1)
    still_running = await running_job(store)
    for job_id in (succeeded, failed, cancelled, still_running):
        await store.set_progress_message(job_id, 10_000 + job_id)

    listed = await store.finished_jobs_unposted()
    assert [job.id for job in listed] == [succeeded, failed, cancelled]  # in the order they finished
    assert [job.id for job in await store.finished_jobs_unposted(guild_id=GUILD)] == [succeeded, failed]
    assert [job.id for job in await store.finished_jobs_unposted(guild_id=other_guild)] == [cancelled]
    assert [job.id for job in await store.finished_jobs_unposted(limit=1)] == [succeeded]
    assert no_message not in {job.id for job in listed}

    assert await store.mark_results_posted(succeeded)
    assert [job.id for job in await store.finished_jobs_unposted()] == [failed, cancelled]

    # Posting failed part-way: the job is listed again for a later try.
    await store.clear_results_posted(succeeded)
    assert [job.id for job in await store.finished_jobs_unposted()] == [succeeded, failed, cancelled]
    with pytest.raises(JobNotFound):
        await store.clear_results_posted(99)


async def test_finished_jobs_unposted_rejects_a_bad_page_size(store: JobStore) -> None:
    for limit in (0, 1001):
        with pytest.raises(Exception, match="ask for 1 to 1000 rows"):
            await store.finished_jobs_unposted(limit=limit)


# ---------------------------------------------------------------------------- sample messages


async def test_sample_message_is_recorded_and_read_back(store: JobStore) -> None:
    job_id, (first, second) = await finished_job(store, samples=2)
    assert (await store.get_sample(first)).message_id is None

    await store.set_sample_message(first, 987_654_321_098_765_432)

    assert (await store.get_sample(first)).message_id == 987_654_321_098_765_432
    info = await store.get_sample_info(first)
    assert (info.id, info.job_id, info.message_id, info.levels) == (
        first,
        job_id,
        987_654_321_098_765_432,
        (2,),
    )
    with pytest.raises(SampleNotFound):
        await store.get_sample_info(99)
    infos = await store.samples_for_job(job_id)
    assert [info.message_id for info in infos] == [987_654_321_098_765_432, None]
    ranked = {entry.sample.id: entry.sample.message_id for entry in await store.top_samples(GUILD)}
    assert ranked == {first: 987_654_321_098_765_432, second: None}
    await store.set_sample_message(first, 5)  # re-posted: the newer message replaces it
    assert (await store.get_sample(first)).message_id == 5
    assert (await store.get_sample(second)).message_id is None


async def test_sample_message_rejects_bad_input_and_unknown_samples(store: JobStore) -> None:
    _, (sample_id,) = await finished_job(store)
    before = await row_counts(store.engine)
    for bad in (-1, 2**63, True, "123", None):
        with pytest.raises(InvalidSample, match=r"the message id must be a Discord message id"):
            await store.set_sample_message(sample_id, bad)  # type: ignore[arg-type]
    with pytest.raises(SampleNotFound, match="There is no sample #77"):
        await store.set_sample_message(77, 1)
    assert await row_counts(store.engine) == before
    assert (await store.get_sample(sample_id)).message_id is None
