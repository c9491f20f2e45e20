"""The durable queue: claim order, leases, checkpoints, cancel, completion."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from storage import (
    ClaimedJob,
    InvalidSample,
    JobKind,
    JobStatus,
    JobStore,
    LeaseLost,
    LevelWindow,
    create_engine,
)
from storage.store import CLAIM_ORDER, jobs
from tests.conftest import FakeClock
from tests.storage.helpers import MODEL, USER, enqueue, new_sample, row_counts


async def claim(store: JobStore, worker: str = "worker-a", lease: float = 30) -> ClaimedJob:
    job = await store.claim(worker, [MODEL], lease_seconds=lease)
    assert job is not None
    return job


async def recovered_a_lease_after_seen(store: JobStore, clock: FakeClock, lease: float = 30) -> list[Any]:
    """Two recovery passes: the first sees the lease run out (its worker may be cut off from the database,
    and gets a lease to renew it), the next, a lease later, recovers the job."""
    assert await store.requeue_expired() == []
    clock.advance(lease + 1)
    return await store.requeue_expired()


async def test_enqueued_job_reads_back(store: JobStore, clock: FakeClock) -> None:
    job_id = await enqueue(store, params={"lyrics": "héllo", "seconds": 20, "tags": ("a", "b")})
    assert job_id == 1  # every test starts from an empty, freshly numbered database
    job = await store.get_job(job_id)
    assert job.status is JobStatus.QUEUED and job.kind is JobKind.GENERATE
    assert job.params == {"lyrics": "héllo", "seconds": 20, "tags": ["a", "b"]}
    assert job.created_at == clock.now and job.created_at.tzinfo is not None
    assert (job.attempts, job.max_attempts, job.progress, job.has_checkpoint) == (0, 3, 0.0, False)
    assert job.started_at is None and job.lease_owner is None and not job.finished


async def test_claim_takes_priority_then_age_and_only_served_models(
    store: JobStore, clock: FakeClock
) -> None:
    old = await enqueue(store)
    clock.advance(1)
    other_model = await enqueue(store, model="1b_lyrics")
    clock.advance(1)
    urgent = await enqueue(store, priority=-5)
    clock.advance(1)
    newer = await enqueue(store)

    assert [await store.queue_position(j) for j in (urgent, old, other_model, newer)] == [1, 2, 3, 4]
    order = [(await claim(store)).id for _ in range(3)]
    assert order == [urgent, old, newer]
    assert await store.claim("worker-a", [MODEL], lease_seconds=30) is None
    assert await store.claim("worker-a", [], lease_seconds=30) is None
    assert await store.queue_position(other_model) == 1
    assert await store.queue_position(urgent) is None

    claimed = await store.claim("worker-b", ["1b_lyrics"], lease_seconds=30)
    assert claimed is not None and claimed.id == other_model
    assert claimed.status is JobStatus.RUNNING and claimed.lease_owner == "worker-b"
    assert claimed.started_at == clock.now
    assert (
        claimed.lease_expires_at is not None and (claimed.lease_expires_at - clock.now).total_seconds() == 30
    )


def test_claim_statement_locks_and_skips_on_postgres() -> None:
    from sqlalchemy import select

    statement = select(jobs.c.id).order_by(*CLAIM_ORDER).limit(1).with_for_update(skip_locked=True)
    assert "FOR UPDATE SKIP LOCKED" in str(statement.compile(dialect=postgresql.dialect()))
    assert "FOR UPDATE" not in str(statement.compile(dialect=sqlite.dialect()))


async def test_eight_concurrent_claimers_take_each_job_exactly_once(db_url: str, clock: FakeClock) -> None:
    engines = [create_engine(db_url) for _ in range(8)]
    try:
        stores = [JobStore(engine, clock=clock) for engine in engines]
        job_ids = set()
        for i in range(200):
            job_ids.add(await enqueue(stores[0], priority=i % 3))

        async def drain(store: JobStore, worker: str) -> list[int]:
            taken = []
            while (job := await store.claim(worker, [MODEL], lease_seconds=60)) is not None:
                assert job.lease_owner == worker
                taken.append(job.id)
            return taken

        results = await asyncio.gather(*(drain(store, f"worker-{i}") for i, store in enumerate(stores)))
        claimed = [job_id for taken in results for job_id in taken]
        assert Counter(claimed).most_common(1)[0][1] == 1  # nobody got a job twice
        assert set(claimed) == job_ids  # and every job was taken
        running = await stores[0].running_jobs()
        assert len(running) == 200
        owners = {job.id: job.lease_owner for job in running}
        for i, taken in enumerate(results):
            assert all(owners[job_id] == f"worker-{i}" for job_id in taken)
    finally:
        for engine in engines:
            await engine.dispose()


async def test_stalled_worker_is_requeued_with_checkpoint_then_failed(
    store: JobStore, clock: FakeClock
) -> None:
    job_id = await enqueue(store, max_attempts=3)
    first = await claim(store, "gpu-0", lease=30)
    assert first.checkpoint is None and not first.has_checkpoint
    await store.save_checkpoint(job_id, "gpu-0", b"codes-after-window-1")
    clock.advance(20)
    await store.heartbeat(job_id, "gpu-0", lease_seconds=30)  # renewed: alive until t=50
    clock.advance(25)
    assert await store.requeue_expired() == []

    clock.advance(10)  # gpu-0 went silent: its lease ran out at t=50
    assert await recovered_a_lease_after_seen(store, clock) == [(job_id, JobStatus.QUEUED)]
    job = await store.get_job(job_id)
    assert (job.status, job.attempts, job.lease_owner, job.has_checkpoint) == (
        JobStatus.QUEUED,
        1,
        None,
        True,
    )
    with pytest.raises(LeaseLost, match="went back to the queue"):
        await store.heartbeat(job_id, "gpu-0", lease_seconds=30)

    second = await claim(store, "gpu-1", lease=30)
    assert second.id == job_id and second.checkpoint == b"codes-after-window-1" and second.attempts == 1
    assert second.started_at == first.started_at  # first start is kept
    with pytest.raises(LeaseLost, match="'gpu-1' holds it now"):
        await store.save_checkpoint(job_id, "gpu-0", b"stale")
    await store.save_checkpoint(job_id, "gpu-1", b"codes-after-window-2")

    clock.advance(31)
    assert await recovered_a_lease_after_seen(store, clock) == [(job_id, JobStatus.QUEUED)]
    third = await claim(store, "gpu-2", lease=30)
    assert third.checkpoint == b"codes-after-window-2" and third.attempts == 2

    assert await store.requeue_expired(now=clock.now.replace(year=2030)) == []
    assert await store.requeue_expired(now=clock.now.replace(year=2030, month=2)) == [
        (job_id, JobStatus.FAILED)
    ]
    failed = await store.get_job(job_id)
    assert failed.status is JobStatus.FAILED and failed.attempts == 3 and failed.finished
    assert failed.error is not None
    assert "stopped responding 3 times" in failed.error and "gpu-2" in failed.error
    assert await store.get_checkpoint(job_id) == b"codes-after-window-2"  # kept for inspection
    assert await store.claim("gpu-3", [MODEL], lease_seconds=30) is None
    assert await store.requeue_expired(now=clock.now.replace(year=2031)) == []


async def test_cancel_while_running_is_seen_by_the_worker(store: JobStore, clock: FakeClock) -> None:
    job_id = await enqueue(store)
    await claim(store, "gpu-0")
    assert not (await store.heartbeat(job_id, "gpu-0", 30)).cancel_requested
    assert not await store.is_cancel_requested(job_id)

    assert await store.request_cancel(job_id, USER) is JobStatus.CANCELLING
    assert await store.request_cancel(job_id, USER) is JobStatus.CANCELLING  # asking twice is fine
    beat = await store.heartbeat(job_id, "gpu-0", 30)
    assert beat.cancel_requested and beat.lease_expires_at == clock.now.replace(second=30)
    assert await store.is_cancel_requested(job_id)
    await store.report_progress(job_id, "gpu-0", stage="top level", progress=0.5)  # still allowed

    await store.mark_cancelled(job_id, "gpu-0")
    job = await store.get_job(job_id)
    assert job.status is JobStatus.CANCELLED and job.lease_owner is None and job.finished_at == clock.now
    with pytest.raises(LeaseLost, match="already cancelled"):
        await store.heartbeat(job_id, "gpu-0", 30)


async def test_cancelled_queued_job_never_runs(store: JobStore) -> None:
    cancelled = await enqueue(store)
    kept = await enqueue(store)
    assert await store.request_cancel(cancelled, USER) is JobStatus.CANCELLED
    assert await store.queue_position(kept) == 1
    assert (await claim(store)).id == kept
    assert await store.claim("worker-a", [MODEL], lease_seconds=30) is None
    assert (await store.get_job(cancelled)).status is JobStatus.CANCELLED


async def test_cancelling_job_whose_worker_died_becomes_cancelled(store: JobStore, clock: FakeClock) -> None:
    job_id = await enqueue(store)
    await claim(store, "gpu-0", lease=30)
    await store.request_cancel(job_id, USER)
    clock.advance(31)
    assert await recovered_a_lease_after_seen(store, clock) == [(job_id, JobStatus.CANCELLED)]
    job = await store.get_job(job_id)
    assert job.status is JobStatus.CANCELLED and job.attempts == 0


async def test_a_claim_without_the_checkpoint_says_whether_there_is_one(
    store: JobStore, clock: FakeClock
) -> None:
    with_one = await enqueue(store, user_id=USER)
    without = await enqueue(store, user_id=USER + 1)
    await claim(store, "gpu-0", lease=30)
    await store.save_checkpoint(with_one, "gpu-0", b"codes" * 1000)
    clock.advance(31)
    assert await recovered_a_lease_after_seen(store, clock) == [(with_one, JobStatus.QUEUED)]

    first = await store.claim("gpu-1", [MODEL], lease_seconds=30, with_checkpoint=False)
    assert first is not None and first.id == with_one
    assert first.has_checkpoint and first.checkpoint is None
    assert await store.get_checkpoint(with_one) == b"codes" * 1000
    second = await store.claim("gpu-2", [MODEL], lease_seconds=30, with_checkpoint=False)
    assert second is not None and second.id == without
    assert not second.has_checkpoint and second.checkpoint is None


async def test_release_requeues_without_an_attempt_and_keeps_the_checkpoint(store: JobStore) -> None:
    job_id = await enqueue(store)
    await claim(store, "gpu-0")
    await store.save_checkpoint(job_id, "gpu-0", b"partial")
    assert await store.release(job_id, "gpu-0") is JobStatus.QUEUED
    job = await store.get_job(job_id)
    assert (job.status, job.attempts, job.lease_owner, job.finished_at) == (JobStatus.QUEUED, 0, None, None)
    resumed = await claim(store, "gpu-1")
    assert resumed.checkpoint == b"partial"

    await store.request_cancel(job_id, USER)
    assert await store.release(job_id, "gpu-1") is JobStatus.CANCELLED


async def test_progress_and_completion(store: JobStore, clock: FakeClock) -> None:
    job_id = await enqueue(store, params={"seconds": 20})
    await claim(store, "gpu-0")
    eta = clock.now.replace(hour=13)
    await store.report_progress(
        job_id, "gpu-0", stage="upsampling", progress=1.7, level=1, window=2, window_count=5,
        tokens_done=1000, tokens_total=4000, tokens_per_second=120.5, eta_at=eta,
    )  # fmt: skip
    await store.replace_progress_message(job_id, 999_999_999_999, replacing=None)
    job = await store.get_job(job_id)
    assert (job.stage, job.progress, job.level, job.window, job.window_count) == ("upsampling", 1.0, 1, 2, 5)
    assert (job.tokens_done, job.tokens_total, job.tokens_per_second, job.eta_at) == (1000, 4000, 120.5, eta)
    assert job.progress_message_id == 999_999_999_999
    assert job.level_windows == ()  # one level at a time
    both = (LevelWindow(1, 3, 5), LevelWindow(0, 2, 20))
    await store.report_progress(
        job_id, "gpu-0", stage="upsampling", progress=0.5, level=0, level_windows=both
    )
    assert (await store.get_job(job_id)).level_windows == both
    await store.save_checkpoint(job_id, "gpu-0", b"x" * 10)

    clock.advance(5)
    sample_ids = await store.complete(job_id, "gpu-0", [new_sample(1), new_sample(0, model="other")])
    job = await store.get_job(job_id)
    assert job.status is JobStatus.SUCCEEDED and job.finished_at == clock.now and job.lease_owner is None
    assert not job.has_checkpoint  # the samples hold the codes now
    infos = await store.samples_for_job(job_id)
    assert [info.index for info in infos] == [0, 1]
    assert [info.id for info in infos] == sorted(sample_ids, reverse=True)
    assert infos[0].model == "other" and infos[1].model == MODEL
    sample = await store.get_sample(sample_ids[0])
    assert sample.index == 1 and sample.levels == (2,) and sample.audio == new_sample(1).audio
    assert sample.codes(2) == new_sample(1).codes_level_2 and sample.codes(0) is None
    assert sample.created_at == clock.now and sample.audio_bitrate == 96_000
    with pytest.raises(LeaseLost, match="already succeeded"):
        await store.complete(job_id, "gpu-0", [new_sample(2)])


async def test_bad_samples_write_nothing(store: JobStore) -> None:
    job_id = await enqueue(store)
    await claim(store, "gpu-0")
    before = await row_counts(store.engine)
    bad = [
        [],
        [new_sample(0), new_sample(0)],
        [new_sample(0), new_sample(1, codes_level_1=b"\x01\x02\x03")],
        [new_sample(0, audio=b"")],
        [new_sample(-1)],
    ]
    for samples in bad:
        with pytest.raises(InvalidSample):
            await store.complete(job_id, "gpu-0", samples)
    with pytest.raises(LeaseLost):
        await store.complete(job_id, "gpu-9", [new_sample(0)])
    assert await row_counts(store.engine) == before
    assert (await store.get_job(job_id)).status is JobStatus.RUNNING


async def test_counts_and_listings(store: JobStore, clock: FakeClock) -> None:
    other_user = USER + 1
    running = await enqueue(store)
    clock.advance(1)
    queued = [await enqueue(store) for _ in range(2)]
    clock.advance(1)
    elsewhere = await enqueue(store, guild_id=42)
    clock.advance(1)
    theirs = await enqueue(store, user_id=other_user)
    assert (await claim(store)).id == running

    counts = await store.user_job_counts(USER)
    assert (counts.running, counts.queued) == (1, 3)
    in_guild = await store.user_job_counts(USER, guild_id=42)
    assert (in_guild.running, in_guild.queued) == (0, 1)
    assert [job.id for job in await store.running_jobs()] == [running]
    assert [job.id for job in await store.unfinished_jobs()] == [running, *queued, elsewhere, theirs]
    assert [job.id for job in await store.unfinished_jobs(guild_id=42)] == [elsewhere]
    recent = await store.recent_jobs(USER, limit=2)
    assert [job.id for job in recent] == [elsewhere, queued[1]]
    assert [job.id for job in await store.recent_jobs(USER, limit=2, offset=2)] == [queued[0], running]
    assert [job.id for job in await store.recent_jobs(other_user)] == [theirs]


async def test_a_job_whose_lease_ran_out_is_claimed_without_waiting_for_a_scan_to_requeue_it(
    store: JobStore, clock: FakeClock
) -> None:
    job_id = await enqueue(store, max_attempts=3)
    await claim(store, "gpu-0", lease=30)
    await store.save_checkpoint(job_id, "gpu-0", b"window-1")
    clock.advance(29)
    assert await store.claim("gpu-1", [MODEL], lease_seconds=30) is None  # still gpu-0's

    clock.advance(2)  # gpu-0 went silent
    assert await store.claim("gpu-1", [MODEL], lease_seconds=30) is None  # nobody saw it so yet
    assert await store.requeue_expired() == []  # seen: gpu-0 has a lease more to renew it
    clock.advance(30)
    assert await store.claim("gpu-1", [MODEL], lease_seconds=30) is None  # not a whole lease yet
    clock.advance(1)
    taken = await store.claim("gpu-1", [MODEL], lease_seconds=30)
    assert taken is not None and taken.id == job_id
    assert taken.attempts == 1 and taken.checkpoint == b"window-1"  # the lost lease counts, as a scan's would
    with pytest.raises(LeaseLost, match="'gpu-1' holds it now"):
        await store.heartbeat(job_id, "gpu-0", lease_seconds=30)
    assert await store.requeue_expired() == []


async def test_a_lease_that_ran_out_stays_its_workers_until_someone_takes_the_job(
    store: JobStore, clock: FakeClock
) -> None:
    """A worker cut off from the database for longer than its lease (an outage of a minute) stores what
    it did meanwhile when the database is back, as long as nobody took the job; once someone has, it
    is told so."""
    job_id = await enqueue(store)
    await claim(store, "gpu-0", lease=30)
    clock.advance(31)
    await store.save_checkpoint(job_id, "gpu-0", b"made during the outage")
    await store.heartbeat(job_id, "gpu-0", lease_seconds=30)  # renewed
    assert await store.requeue_expired() == []
    clock.advance(31)
    assert await store.requeue_expired(spare_job=job_id) == []  # the worker scanning runs it itself
    assert await store.requeue_expired() == []  # another sees it run out: a lease more for gpu-0
    clock.advance(31)
    taken = await store.claim("gpu-1", [MODEL], lease_seconds=30)
    assert taken is not None and taken.checkpoint == b"made during the outage" and taken.attempts == 1
    with pytest.raises(LeaseLost, match="'gpu-1' holds it now"):
        await store.save_checkpoint(job_id, "gpu-0", b"late")
    assert (await store.get_job(job_id)).lease_owner == "gpu-1"


async def test_a_pass_that_saw_no_outage_leaves_a_lapsed_lease_to_its_worker_for_a_lease(
    store: JobStore, clock: FakeClock
) -> None:
    """The database was away for longer than the lease, between two recovery passes (or only on the
    worker's path): the first pass after it sees the lease run out before the worker, which sampled on
    meanwhile, renews it. The job stays the worker's, with what it stored after; put back in the queue,
    it lost every window sampled during the outage, and an attempt."""
    job_id = await enqueue(store, max_attempts=3)
    await claim(store, "gpu-0", lease=30)
    clock.advance(45)  # the outage: no heartbeat got through
    assert await store.requeue_expired() == []
    assert await store.claim("gpu-1", [MODEL], lease_seconds=30) is None
    clock.advance(25)  # the worker renews within the lease after the database's return
    await store.heartbeat(job_id, "gpu-0", lease_seconds=30)
    await store.save_checkpoint(job_id, "gpu-0", b"sampled during the outage")
    clock.advance(10)
    assert await store.requeue_expired() == []
    job = await store.get_job(job_id)
    assert (job.status, job.lease_owner, job.attempts) == (JobStatus.RUNNING, "gpu-0", 0)

    clock.advance(25)  # silent again, for good: a lapse seen before the renewal does not count
    assert await store.requeue_expired() == []
    assert await store.claim("gpu-1", [MODEL], lease_seconds=30) is None
    clock.advance(31)
    taken = await store.claim("gpu-1", [MODEL], lease_seconds=30)
    assert taken is not None and taken.checkpoint == b"sampled during the outage" and taken.attempts == 1


async def test_a_dead_predecessors_job_is_taken_over_at_once_and_first(
    store: JobStore, clock: FakeClock
) -> None:
    older = await enqueue(store)
    clock.advance(1)
    orphan = await enqueue(store, max_attempts=3)
    clock.advance(1)
    await claim(store, "host/100/cuda:0", lease=60)  # takes `older`
    assert await store.claim("host/200/cuda:0", [MODEL], lease_seconds=60) is not None  # takes `orphan`
    third = await enqueue(store)

    # The worker restarted on host/cuda:0 knows pid 200 is dead: it resumes that job now, not in 60 s.
    taken = await store.claim("host/300/cuda:0", [MODEL], lease_seconds=60, orphaned_by=["host/200/cuda:0"])
    assert taken is not None and taken.id == orphan and taken.attempts == 1
    assert await store.active_lease_owners() == ["host/100/cuda:0", "host/300/cuda:0"]
    assert (await store.get_job(older)).lease_owner == "host/100/cuda:0"
    assert (await store.get_job(third)).status is JobStatus.QUEUED


async def test_a_job_out_of_attempts_is_not_taken_over_but_failed_by_the_scan(
    store: JobStore, clock: FakeClock
) -> None:
    job_id = await enqueue(store, max_attempts=1)
    await claim(store, "gpu-0", lease=30)
    clock.advance(31)
    assert await store.claim("gpu-1", [MODEL], lease_seconds=30, orphaned_by=["gpu-0"]) is None
    assert await recovered_a_lease_after_seen(store, clock) == [(job_id, JobStatus.FAILED)]


async def test_a_completion_whose_answer_was_lost_is_made_again_harmlessly(store: JobStore) -> None:
    """A worker cut off mid-commit (its call timed out, or was cut short when the database came back)
    does not know its samples were stored, and tries again: that is the same success, not a crash on
    the samples' unique index, nor a lost lease."""
    job_id = await enqueue(store)
    await claim(store, "gpu-0")
    stored = await store.complete(job_id, "gpu-0", [new_sample(0), new_sample(1)])
    assert await store.complete(job_id, "gpu-0", [new_sample(1), new_sample(0)]) == stored[::-1]
    with pytest.raises(LeaseLost, match="it has already succeeded"):  # other samples: not this call's
        await store.complete(job_id, "gpu-0", [new_sample(0, seed=99), new_sample(1)])
    assert [sample.id for sample in await store.samples_for_job(job_id)] == stored


async def test_a_completion_for_a_job_no_longer_held_sends_no_samples(store: JobStore) -> None:
    job_id = await enqueue(store)
    await claim(store, "gpu-0")
    await store.request_cancel(job_id, USER)
    await store.mark_cancelled(job_id, "gpu-0")
    with pytest.raises(LeaseLost, match="it has already cancelled"):
        await store.complete(job_id, "gpu-0", [new_sample(0)])
    assert await store.samples_for_job(job_id) == []
