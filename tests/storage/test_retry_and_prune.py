"""Operator maintenance (`jukebot jobs`): listing jobs, putting failed or cancelled jobs back in the
queue (`retry_job`), and freeing what old failed and cancelled jobs keep (`prune_finished`)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import update

from storage import JobKind, JobNotFound, JobStatus, JobStore, StorageError, create_engine
from storage.errors import JobNotRetryable
from storage.models import JobRow
from storage.records import PruneReport
from tests.conftest import FakeClock
from tests.storage.helpers import MODEL, USER, enqueue, finished_job, new_sample, row_counts

WORKER = "worker-a"
OTHER_MODEL = "5b"  # jobs meant to stay queued: a claim for MODEL never takes them
DAY = timedelta(days=1)
OOM = "CUDA out of memory (JUKEBOT_MAX_BATCH_SIZE too large)"


async def running_job(store: JobStore, checkpoint: bytes | None = None, **fields: object) -> int:
    job_id = await enqueue(store, **fields)
    claimed = await store.claim(WORKER, [str(fields.get("model", MODEL))], lease_seconds=60)
    assert claimed is not None and claimed.id == job_id
    if checkpoint is not None:
        await store.save_checkpoint(job_id, WORKER, checkpoint)
    return job_id


async def failed_job(store: JobStore, checkpoint: bytes | None = b"windows 1-7", **fields: object) -> int:
    job_id = await running_job(store, checkpoint, **fields)
    await store.fail(job_id, WORKER, OOM)
    return job_id


async def cancelled_job(store: JobStore, checkpoint: bytes | None = b"windows 1-3", **fields: object) -> int:
    job_id = await running_job(store, checkpoint, **fields)
    assert await store.request_cancel(job_id, None) is JobStatus.CANCELLING
    await store.mark_cancelled(job_id, WORKER)
    return job_id


async def prime(store: JobStore, size: int = 882) -> int:
    return await store.store_prime(
        user_id=USER, filename="clip.wav", pcm=b"\x01\x00" * (size // 2), sample_rate=44_100
    )


# ---------------------------------------------------------------------------- list


async def test_list_jobs_is_newest_first_filtered_by_status_and_limited(store: JobStore) -> None:
    failed = await failed_job(store)
    done, _ = await finished_job(store)
    queued = await enqueue(store, model=OTHER_MODEL)

    assert [job.id for job in await store.list_jobs()] == [queued, done, failed]
    assert [job.id for job in await store.list_jobs(limit=2)] == [queued, done]
    only_failed = await store.list_jobs(JobStatus.FAILED)
    assert [(job.id, job.error, job.has_checkpoint) for job in only_failed] == [(failed, OOM, True)]
    assert [job.id for job in await store.list_jobs("succeeded")] == [done]
    assert await store.list_jobs(JobStatus.CANCELLED) == []
    with pytest.raises(StorageError, match="Unknown job status 'broken'"):
        await store.list_jobs("broken")
    with pytest.raises(StorageError, match="1 to 1000"):
        await store.list_jobs(limit=0)


# ---------------------------------------------------------------------------- retry


async def test_a_retried_failed_job_is_queued_fresh_and_resumes_from_its_checkpoint(
    store: JobStore, clock: FakeClock
) -> None:
    job_id = await running_job(store, max_attempts=3)
    assert await store.retry(job_id, WORKER, "crash") is JobStatus.QUEUED  # one attempt used
    assert (await store.claim(WORKER, [MODEL], lease_seconds=60)) is not None
    await store.save_checkpoint(job_id, WORKER, b"windows 1-7")
    await store.report_progress(
        job_id, WORKER, stage="sampling", progress=0.9, level=0, window=7, window_count=8
    )
    await store.replace_progress_message(job_id, 777, replacing=None)
    await store.fail(job_id, WORKER, OOM)
    assert await store.claim_results_posting(job_id, "bot", 30)  # the bot posts the failure
    assert await store.finish_results_posting(job_id, "bot")
    clock.advance(3600)

    job = await store.retry_job(job_id)

    assert job == await store.get_job(job_id)
    assert (job.status, job.attempts, job.error, job.finished_at, job.has_checkpoint) == (
        JobStatus.QUEUED,
        0,
        None,
        None,
        True,
    )
    assert (job.results_posted_at, job.results_posting_owner, job.results_posting_expires_at) == (None,) * 3
    assert (job.lease_owner, job.lease_expires_at, job.updated_at) == (None, None, clock.now)
    assert job.progress_message_id == 777  # the bot edits the same message as it runs
    # the failed run's progress goes: the next run reports its own (it may start over after a prune)
    assert (job.stage, job.progress, job.level, job.window, job.window_count) == (None, 0.0, None, None, None)
    # The bot sees it again as a job to follow, not as results to post.
    assert [j.id for j in await store.unfinished_jobs()] == [job_id]
    assert await store.finished_jobs_unposted() == []
    # The next worker resumes it where the failed run stopped.
    claimed = await store.claim("worker-b", [MODEL], lease_seconds=60)
    assert claimed is not None and claimed.id == job_id and claimed.checkpoint == b"windows 1-7"


async def test_results_of_a_retried_job_are_posted_again_even_if_a_post_was_under_way(
    store: JobStore, clock: FakeClock
) -> None:
    job_id = await failed_job(store)
    assert await store.claim_results_posting(job_id, "bot-a", 600)  # a bot is posting the failure
    retried = await store.retry_job(job_id)
    assert retried.results_posting_owner is None

    claimed = await store.claim("worker-b", [MODEL], lease_seconds=60)
    assert claimed is not None and claimed.id == job_id
    await store.complete(job_id, "worker-b", [new_sample(0)])

    assert [job.id for job in await store.finished_jobs_unposted()] == [job_id]
    assert await store.claim_results_posting(job_id, "bot-b", 30)  # the old claim does not hold it back
    assert not await store.finish_results_posting(job_id, "bot-a")  # nor can its holder finish it


async def test_a_cancelled_job_can_be_retried(store: JobStore) -> None:
    with_checkpoint = await cancelled_job(store)
    never_ran = await enqueue(store)
    assert await store.request_cancel(never_ran, USER) is JobStatus.CANCELLED

    assert (await store.retry_job(with_checkpoint)).has_checkpoint
    started_over = await store.retry_job(never_ran)
    assert started_over.status is JobStatus.QUEUED and not started_over.has_checkpoint

    first = await store.claim(WORKER, [MODEL], lease_seconds=60)
    assert first is not None and (first.id, first.checkpoint) == (with_checkpoint, b"windows 1-3")


@pytest.mark.parametrize("status", ["queued", "running", "cancelling", "succeeded"])
async def test_jobs_not_failed_or_cancelled_are_refused_and_left_as_they_were(
    store: JobStore, status: str
) -> None:
    if status == "succeeded":
        job_id, _ = await finished_job(store)
    elif status == "queued":
        job_id = await enqueue(store)
    else:
        job_id = await running_job(store, b"windows")
        if status == "cancelling":
            await store.request_cancel(job_id, None)
    before = await store.get_job(job_id)

    with pytest.raises(JobNotRetryable) as refused:
        await store.retry_job(job_id)

    assert refused.value.status is JobStatus(status) and refused.value.job_id == job_id
    assert str(refused.value) == (
        f"Job #{job_id} was not retried: "
        f"{'it succeeded' if status == 'succeeded' else f'it is {status}'} (only a failed or cancelled job can be)."
    )
    assert await store.get_job(job_id) == before


@pytest.mark.parametrize("job_id", [12345, 2**31, 2**64, 0, -1])
async def test_an_unknown_job_is_not_found(store: JobStore, job_id: int) -> None:
    """Ids past the column's range too: Postgres refused them as an int4 parameter, SQLite past 64 bits
    with an OverflowError, so `jobs cancel 2147483648` named a database failure."""
    await failed_job(store)
    with pytest.raises(JobNotFound):
        await store.retry_job(job_id)
    with pytest.raises(JobNotFound):
        await store.request_cancel(job_id, None)
    with pytest.raises(JobNotFound):
        await store.get_job(job_id)
    with pytest.raises(JobNotFound):
        await store.get_checkpoint(job_id)
    # `jobs retry` recovers a dead worker's job first: `jobs retry 2147483648` named a database failure
    # on Postgres, and showed a traceback on SQLite past 64 bits.
    assert await store.requeue_expired(only_job=job_id) == []
    assert await store.requeue_expired(only_job=job_id, at_once=True) == []


async def test_of_concurrent_retries_of_one_job_exactly_one_wins(store: JobStore, db_url: str) -> None:
    job_id = await failed_job(store)
    other_engine = create_engine(db_url)  # another bot or operator, on connections of its own
    try:
        other = JobStore(other_engine)
        stores = [store, other] * 4
        results = await asyncio.gather(*(each.retry_job(job_id) for each in stores), return_exceptions=True)
    finally:
        await other_engine.dispose()

    won = [result for result in results if not isinstance(result, BaseException)]
    lost = [result for result in results if isinstance(result, BaseException)]
    assert len(won) == 1 and won[0].status is JobStatus.QUEUED
    assert len(lost) == 7
    assert all(isinstance(error, JobNotRetryable) and error.status is JobStatus.QUEUED for error in lost), (
        lost
    )
    assert (await store.get_job(job_id)).attempts == 0


async def test_an_upsample_is_not_retried_while_another_covers_its_sample(store: JobStore) -> None:
    _, (sample_id,) = await finished_job(store)
    first = await failed_job(store, kind=JobKind.UPSAMPLE, parent_sample_id=sample_id)
    second = await enqueue(store, kind=JobKind.UPSAMPLE, parent_sample_id=sample_id)  # allowed: first failed

    with pytest.raises(JobNotRetryable) as refused:
        await store.retry_job(first)
    assert str(refused.value) == (
        f"Job #{first} was not retried: sample #{sample_id} already has upsample job #{second} (queued)."
    )
    assert (await store.get_job(first)).status is JobStatus.FAILED

    await store.request_cancel(second, None)
    assert (await store.retry_job(first)).status is JobStatus.QUEUED


# ---------------------------------------------------------------------------- prune


async def test_prune_drops_only_old_failed_and_cancelled_checkpoints(
    store: JobStore, clock: FakeClock
) -> None:
    old_failed = await failed_job(store, b"f" * 1000)
    old_cancelled = await cancelled_job(store, b"c" * 500)
    no_checkpoint = await failed_job(store, None)
    done, (sample_id,) = await finished_job(store)
    await store.toggle_vote(sample_id, USER)
    sample = await store.get_sample(sample_id)
    running = await running_job(store, b"r" * 100, model=OTHER_MODEL)
    released = await running_job(store, b"q" * 200, model=OTHER_MODEL)
    assert await store.release(released, WORKER) is JobStatus.QUEUED  # queued, checkpoint kept
    clock.advance((10 * DAY).total_seconds())
    on_the_day = await failed_job(store, b"d" * 70)
    clock.advance(1)
    recent = await failed_job(store, b"n" * 300)
    counts = await row_counts(store.engine)
    clock.advance(10 * DAY.total_seconds() - 1)  # `on_the_day` finished exactly 10 days ago now

    report = await store.prune_finished(10 * DAY)

    assert report == PruneReport(
        job_ids=(old_failed, old_cancelled), checkpoint_bytes=1500, prime_ids=(), prime_bytes=0
    )
    assert report.freed_bytes == 1500
    for job_id in (old_failed, old_cancelled, no_checkpoint, done):
        assert await store.get_checkpoint(job_id) is None
    kept = {released: b"q" * 200, running: b"r" * 100, on_the_day: b"d" * 70, recent: b"n" * 300}
    for job_id, checkpoint in kept.items():
        assert await store.get_checkpoint(job_id) == checkpoint
    old = await store.get_job(old_failed)
    assert (old.status, old.error, old.checkpoint_updated_at) == (JobStatus.FAILED, OOM, None)
    assert await row_counts(store.engine) == counts  # no row deleted
    assert await store.get_sample(sample_id) == sample and await store.vote_count(sample_id) == 1
    assert (await store.get_job(done)).status is JobStatus.SUCCEEDED

    assert await store.prune_finished(10 * DAY) == PruneReport((), 0, (), 0)  # nothing left to drop


async def test_prune_empties_the_clips_only_old_failed_or_cancelled_jobs_use(
    store: JobStore, clock: FakeClock
) -> None:
    only_old = await prime(store, 1000)
    old_and_succeeded = await prime(store, 2000)
    old_and_queued = await prime(store, 4000)
    old_and_recent = await prime(store, 8000)
    two_old = await prime(store, 16000)
    unused = await prime(store, 32000)
    old_and_unknown_age = await prime(store, 64000)

    await failed_job(store, None, prime_id=only_old)
    for clip in (old_and_succeeded, old_and_queued, old_and_recent, old_and_unknown_age):
        await failed_job(store, None, prime_id=clip)
    await cancelled_job(store, None, prime_id=two_old)
    await failed_job(store, None, prime_id=two_old)
    primed_done, (primed_sample,) = await finished_job(store, prime_id=old_and_succeeded)
    upsample = await failed_job(store, None, kind=JobKind.UPSAMPLE, parent_sample_id=primed_sample)
    await enqueue(store, model=OTHER_MODEL, prime_id=old_and_queued)
    unknown_age = await failed_job(store, None, prime_id=old_and_unknown_age)
    async with store.engine.begin() as connection:  # a row from before finish times were kept
        await connection.execute(update(JobRow).where(JobRow.id == unknown_age).values(finished_at=None))
    clock.advance(30 * DAY.total_seconds())
    await failed_job(store, None, prime_id=old_and_recent)
    clock.advance(DAY.total_seconds())
    kept = {
        clip: (await store.get_prime(clip)).pcm
        for clip in (old_and_succeeded, old_and_queued, old_and_recent, old_and_unknown_age)
    }
    duration = (await store.get_prime(only_old)).duration_seconds

    report = await store.prune_finished(7 * DAY)

    # `unused`, no job's, was stored 31 days ago: left by a request that failed before its job was queued
    assert (report.prime_ids, report.prime_bytes) == ((only_old, two_old, unused), 1000 + 16000 + 32000)
    assert report.job_ids == () and report.freed_bytes == 49000
    for clip in (only_old, two_old, unused):
        emptied = await store.get_prime(clip)
        assert emptied.pcm == b"" and emptied.id == clip
    assert (await store.get_prime(only_old)).duration_seconds == duration  # the row and its length stay
    for clip, pcm in kept.items():
        assert (await store.get_prime(clip)).pcm == pcm
    # The succeeded job's samples keep their picture's clip, and so does the upsample of one of them.
    assert (await store.get_job(primed_done)).prime_id == old_and_succeeded
    assert (await store.get_job(upsample)).status is JobStatus.FAILED

    again = await store.prune_finished(7 * DAY)
    assert (again.prime_ids, again.prime_bytes) == ((), 0)


async def test_a_clip_no_job_uses_is_emptied_once_older_than_the_age_asked_and_a_day(
    store: JobStore, clock: FakeClock
) -> None:
    """A request that failed between storing its clip and queueing its job (the database went away, the
    bot stopped) left the clip to nobody, and no prune ever freed it."""
    two_days_old = await prime(store, 1000)
    clock.advance(2 * DAY.total_seconds() - 12 * 3600)
    half_a_day_old = await prime(store, 2000)
    clock.advance(12 * 3600)

    assert (await store.prune_finished(3 * DAY)).prime_ids == ()  # younger than the age asked
    # younger than a day (the gap is seconds; the bot's clock may be off): kept even for a smaller age
    report = await store.prune_finished(timedelta(hours=1))
    assert (report.prime_ids, report.prime_bytes) == ((two_days_old,), 1000)
    assert (await store.get_prime(two_days_old)).pcm == b""
    assert (await store.get_prime(half_a_day_old)).pcm == b"\x01\x00" * 1000
    queued = await enqueue(store, model=OTHER_MODEL, prime_id=half_a_day_old)  # the request went on after all
    clock.advance(DAY.total_seconds())
    assert (await store.prune_finished(timedelta(hours=1))).prime_ids == ()
    assert (await store.get_job(queued)).prime_id == half_a_day_old


async def test_a_job_whose_clip_was_pruned_is_not_retried_and_one_without_checkpoint_starts_over(
    store: JobStore, clock: FakeClock
) -> None:
    clip = await prime(store)
    primed = await failed_job(store, b"x" * 10, prime_id=clip)
    plain = await failed_job(store, b"y" * 20)
    clock.advance(2 * DAY.total_seconds())
    report = await store.prune_finished(DAY)
    assert (report.job_ids, report.prime_ids) == ((primed, plain), (clip,))

    with pytest.raises(JobNotRetryable) as refused:
        await store.retry_job(primed)
    assert f"the audio of its prime clip #{clip} was pruned" in str(refused.value)
    assert refused.value.status is JobStatus.FAILED

    assert not (await store.retry_job(plain)).has_checkpoint
    claimed = await store.claim(WORKER, [MODEL], lease_seconds=60)
    assert claimed is not None and (claimed.id, claimed.checkpoint) == (plain, None)


async def test_a_dry_run_reports_the_same_and_changes_nothing(store: JobStore, clock: FakeClock) -> None:
    clip = await prime(store, 440)
    failed = await failed_job(store, b"a" * 123, prime_id=clip)
    cancelled = await cancelled_job(store, b"b" * 77)
    clock.advance(5 * DAY.total_seconds())
    before = [await store.get_job(failed), await store.get_job(cancelled), await store.get_prime(clip)]
    counts = await row_counts(store.engine)

    dry = await store.prune_finished(DAY, dry_run=True)

    assert dry == PruneReport(
        job_ids=(failed, cancelled), checkpoint_bytes=200, prime_ids=(clip,), prime_bytes=440
    )
    assert [
        await store.get_job(failed),
        await store.get_job(cancelled),
        await store.get_prime(clip),
    ] == before
    assert await store.get_checkpoint(failed) == b"a" * 123
    assert await row_counts(store.engine) == counts
    assert await store.prune_finished(DAY) == dry  # the real run frees exactly that


@pytest.mark.parametrize("older_than", [timedelta(0), -DAY])
async def test_prune_needs_a_positive_age(store: JobStore, older_than: timedelta) -> None:
    job_id = await failed_job(store)
    with pytest.raises(StorageError, match="positive"):
        await store.prune_finished(older_than)
    assert await store.get_checkpoint(job_id) is not None


async def test_an_age_older_than_any_date_prunes_nothing(store: JobStore) -> None:
    await failed_job(store)
    assert await store.prune_finished(timedelta.max) == PruneReport((), 0, (), 0)
