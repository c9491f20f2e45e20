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
    StorageError,
    create_engine,
)
from storage.records import MessageParts, ResultsClaim
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


LEASE = 60.0


async def test_claim_results_posting_is_for_finished_jobs_one_holder_at_a_time(
    store: JobStore, clock: FakeClock
) -> None:
    job_id = await running_job(store)
    with pytest.raises(JobNotFinished, match=r"Job #1 is still running; its results can only be posted"):
        await store.claim_results_posting(job_id, "bot-a", LEASE)
    assert (await store.get_job(job_id)).results_posting_owner is None

    await store.complete(job_id, "worker-a", [new_sample(0)])
    clock.advance(3)
    assert await store.claim_results_posting(job_id, "bot-a", LEASE) == ResultsClaim(taken_over_from=None)
    job = await store.get_job(job_id)
    assert (job.results_posting_owner, job.results_posting_expires_at, job.results_posted_at) == (
        "bot-a",
        clock.now + timedelta(seconds=LEASE),
        None,
    )
    assert await store.claim_results_posting(job_id, "bot-a", LEASE) is None  # held, even by itself
    assert await store.claim_results_posting(job_id, "bot-b", LEASE) is None

    clock.advance(3)
    assert await store.finish_results_posting(job_id, "bot-a") is True
    job = await store.get_job(job_id)
    assert (job.results_posted_at, job.results_posting_owner, job.results_posting_expires_at) == (
        clock.now,
        None,
        None,
    )
    clock.advance(LEASE * 10)  # posted is for good: no claim, renewal or second finish after that
    assert await store.claim_results_posting(job_id, "bot-b", LEASE) is None
    assert await store.renew_results_posting(job_id, "bot-a", LEASE) is False
    assert await store.finish_results_posting(job_id, "bot-a") is False
    assert (await store.get_job(job_id)).results_posted_at == clock.now - timedelta(seconds=LEASE * 10)
    with pytest.raises(JobNotFound):
        await store.claim_results_posting(42, "bot-a", LEASE)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(StorageError, match="a lease must last a positive number of seconds"):
            await store.claim_results_posting(job_id, "bot-a", bad)


async def test_a_bot_killed_mid_post_leaves_the_rest_to_the_next_once_its_claim_expires(
    store: JobStore, clock: FakeClock
) -> None:
    job_id, (first, second, third) = await finished_job(store, samples=3)
    await store.replace_progress_message(job_id, 10_000, replacing=None)
    assert await store.claim_results_posting(job_id, "bot-a", LEASE)
    await store.set_sample_message(first, 20_001)
    # bot-a dies here: it neither finishes nor gives the claim back.

    clock.advance(LEASE - 1)
    assert await store.claim_results_posting(job_id, "bot-b", LEASE) is None  # still bot-a's
    assert await store.finished_jobs_unposted() == []  # nobody else should try yet
    clock.advance(2)
    assert [job.id for job in await store.finished_jobs_unposted()] == [job_id]
    # bot-b is told whose claim it took over: that bot's last message may have gone out unrecorded.
    assert await store.claim_results_posting(job_id, "bot-b", LEASE) == ResultsClaim(taken_over_from="bot-a")
    unposted = [info.id for info in await store.samples_for_job(job_id) if info.message_id is None]
    assert unposted == [second, third]

    # bot-a, had it only hung, finds out before its next message and cannot undo bot-b's claim.
    assert await store.renew_results_posting(job_id, "bot-a", LEASE) is False
    await store.release_results_posting(job_id, "bot-a")
    assert await store.finish_results_posting(job_id, "bot-a") is False
    assert (await store.get_job(job_id)).results_posting_owner == "bot-b"

    clock.advance(LEASE - 1)
    assert await store.renew_results_posting(job_id, "bot-b", LEASE) is True
    await store.set_sample_message(second, 20_002)
    clock.advance(LEASE - 1)  # past the first expiry, within the renewed one
    assert await store.claim_results_posting(job_id, "bot-c", LEASE) is None
    await store.set_sample_message(third, 20_003)
    assert await store.finish_results_posting(job_id, "bot-b") is True
    assert [info.message_id for info in await store.samples_for_job(job_id)] == [20_001, 20_002, 20_003]
    assert (await store.get_job(job_id)).results_posted_at == clock.now
    assert await store.finished_jobs_unposted() == []


async def test_a_released_claim_can_be_taken_at_once(store: JobStore, clock: FakeClock) -> None:
    job_id, _ = await finished_job(store)
    assert await store.claim_results_posting(job_id, "bot-a", LEASE)
    await store.release_results_posting(job_id, "bot-a")  # e.g. Discord refused a message
    job = await store.get_job(job_id)
    assert (job.results_posting_owner, job.results_posting_expires_at, job.results_posted_at) == (None,) * 3
    assert await store.claim_results_posting(job_id, "bot-b", LEASE) == ResultsClaim(taken_over_from=None)


async def test_bots_racing_to_post_results_never_both_hold_the_claim(db_url: str) -> None:
    """Bot processes (separate engines, separate connection pools) claim the same jobs at once:
    fresh ones, and ones whose claimer was killed and whose claim just expired."""
    clock = FakeClock()
    engines = [create_engine(db_url) for _ in range(3)]
    try:
        bots = [JobStore(engine, clock=clock) for engine in engines]
        job_ids = [(await finished_job(bots[0]))[0] for _ in range(4)]
        for job_id in job_ids:
            names = [f"bot-{n}-{k}" for n in range(len(bots)) for k in range(2)]
            calls = [
                bots[n % len(bots)].claim_results_posting(job_id, name, LEASE) for n, name in enumerate(names)
            ]
            results = await asyncio.gather(*calls)
            assert results.count(None) == 5, job_id
            (winner,) = [n for n, claim in enumerate(results) if claim is not None]
            assert results[winner] == ResultsClaim(taken_over_from=None)
            holder = (await bots[0].get_job(job_id)).results_posting_owner
            assert holder == names[winner]

        clock.advance(LEASE + 1)  # every holder was killed: their claims run out together
        for job_id in job_ids:
            calls = [bot.claim_results_posting(job_id, f"next-{n}", LEASE) for n, bot in enumerate(bots * 2)]
            taken_from = (await bots[0].get_job(job_id)).results_posting_owner
            results = await asyncio.gather(*calls)
            assert results.count(None) == 5, job_id
            (winner,) = [n for n, claim in enumerate(results) if claim is not None]
            assert results[winner] == ResultsClaim(taken_over_from=taken_from)
            holder = (await bots[0].get_job(job_id)).results_posting_owner
            assert holder == f"next-{winner}"
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
        await store.replace_progress_message(job_id, 10_000 + job_id, replacing=None)

    listed = await store.finished_jobs_unposted()
    # In the order they finished; also the one without a progress message (the bot posts its
    # results in a fresh message).
    assert [job.id for job in listed] == [succeeded, no_message, failed, cancelled]
    assert [job.id for job in await store.finished_jobs_unposted(guild_id=GUILD)] == [
        succeeded,
        no_message,
        failed,
    ]
    assert [job.id for job in await store.finished_jobs_unposted(guild_id=other_guild)] == [cancelled]
    assert [job.id for job in await store.finished_jobs_unposted(limit=1)] == [succeeded]

    assert await store.claim_results_posting(succeeded, "bot-a", LEASE)  # being posted: not listed
    assert [job.id for job in await store.finished_jobs_unposted()] == [no_message, failed, cancelled]

    # Posting failed part-way: the job is listed again for a later try.
    await store.release_results_posting(succeeded, "bot-a")
    assert [job.id for job in await store.finished_jobs_unposted()] == [
        succeeded,
        no_message,
        failed,
        cancelled,
    ]
    # Posted for good: never listed again.
    assert await store.claim_results_posting(succeeded, "bot-a", LEASE)
    assert await store.finish_results_posting(succeeded, "bot-a")
    clock.advance(LEASE * 2)
    assert [job.id for job in await store.finished_jobs_unposted()] == [no_message, failed, cancelled]


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


async def test_a_progress_message_is_recorded_only_over_the_one_the_caller_saw(store: JobStore) -> None:
    job_id = await enqueue(store)
    assert await store.replace_progress_message(job_id, 10, replacing=None)
    assert not await store.replace_progress_message(job_id, 11, replacing=None)  # another bot's, later
    assert not await store.replace_progress_message(job_id, 12, replacing=9)
    assert (await store.get_job(job_id)).progress_message_id == 10
    assert await store.replace_progress_message(job_id, 13, replacing=10)  # a fresh one for a deleted one
    assert (await store.get_job(job_id)).progress_message_id == 13
    with pytest.raises(JobNotFound):
        await store.replace_progress_message(job_id + 1, 14, replacing=None)


async def test_a_sample_posted_part_way_records_how_far_and_counts_as_posted_only_when_whole(
    store: JobStore,
) -> None:
    job_id, (sample_id,) = await finished_job(store)
    assert not (await store.get_sample_info(sample_id)).posted
    await store.set_sample_message(sample_id, 40, parts=MessageParts(1, 3, 20_000))
    await store.set_sample_message(sample_id, 40, parts=MessageParts(2, 3, 20_000))
    info = await store.get_sample_info(sample_id)
    assert (info.message_id, info.message_parts) == (40, MessageParts(2, 3, 20_000))
    assert not info.posted and not (await store.get_sample(sample_id)).posted
    assert [i.message_parts for i in await store.samples_for_job(job_id)] == [MessageParts(2, 3, 20_000)]

    await store.set_sample_message(sample_id, 40)  # the last part went out
    info = await store.get_sample_info(sample_id)
    assert (info.message_id, info.message_parts_sent, info.message_parts_total, info.message_parts_limit) == (
        40,
        None,
        None,
        None,
    )
    assert info.posted and info.message_parts is None

    bad_parts = [
        (0, 3, 1),
        (3, 3, 1),
        (4, 3, 1),
        (1, 2**31, 1),
        (True, 3, 1),
        (1.0, 3, 1),
        (1, 3, 0),
        (1, 3, 2**63),
    ]
    for bad in bad_parts:
        with pytest.raises(InvalidSample, match=r"parts must say 1 <= sent < total messages"):
            await store.set_sample_message(sample_id, 41, parts=MessageParts(*bad))  # type: ignore[arg-type]
    assert (await store.get_sample_info(sample_id)).message_id == 40
