"""One damaged row, a worker machine's clock, a writer holding SQLite's lock: none of them may take the
queue, the listings or the bot's quick reads down."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

import storage.store
from storage import JobStatus, JobStore
from storage.models import utcnow
from tests.conftest import FakeClock
from tests.storage.helpers import GUILD, MODEL, USER, enqueue, finished_job, write_held

# Far beyond a read's few milliseconds; a read that waits for the writer never finishes in the test.
READ_DEADLINE_S = 10.0


async def _damage_params(engine: AsyncEngine, job_id: int, stored: str) -> None:
    """Put `stored` in the job's params column as a hand edit would (Postgres: it must parse as JSON)."""
    value = "CAST(:stored AS JSON)" if engine.dialect.name == "postgresql" else ":stored"
    async with engine.begin() as connection:
        await connection.execute(
            text(f"UPDATE jobs SET params = {value} WHERE id = :job_id"), {"stored": stored, "job_id": job_id}
        )


async def test_jobs_whose_stored_params_are_no_json_object_fail_at_claim_and_list_as_unreadable(
    store: JobStore, engine: AsyncEngine, clock: FakeClock
) -> None:
    damaged = {"list": "[1, 2]", "string": '"rock"', "number": "5"}
    if engine.dialect.name == "sqlite":  # Postgres' JSON column refuses text that is not JSON
        damaged["not JSON"] = '{"artist": '
    bad = {}
    for what, stored in damaged.items():
        bad[what] = await enqueue(store, user_id=USER + len(bad))
        await _damage_params(engine, bad[what], stored)
    clock.advance(1)
    good = await enqueue(store, user_id=USER + 100)

    # Listings read every row; the damaged ones read as unreadable params, not as an exception.
    listed = {job.id: job for job in await store.unfinished_jobs(GUILD)}
    assert sorted(listed) == sorted([*bad.values(), good])
    for job_id in bad.values():
        assert storage.store.unreadable_params(listed[job_id].params) is not None
        assert storage.store.unreadable_params((await store.get_job(job_id)).params) is not None
    assert storage.store.unreadable_params(listed[good].params) is None
    assert [job.id for job in await store.recent_jobs(USER)] == [bad["list"]]

    # A worker gets the good job; each damaged one (ahead of it in the queue) fails, saying why.
    claimed = await store.claim("worker-a", [MODEL], lease_seconds=60)
    assert claimed is not None and claimed.id == good
    assert claimed.params["artist"] == "the beatles"
    for what, job_id in bad.items():
        job = await store.get_job(job_id)
        assert job.status == JobStatus.FAILED, what
        assert job.error is not None and job.error.startswith("This job cannot run: "), job.error
        assert job.lease_owner is None and job.finished_at == clock.now
    assert "not an object" in ((await store.get_job(bad["list"])).error or "")
    if "not JSON" in bad:
        assert "not valid JSON" in ((await store.get_job(bad["not JSON"])).error or "")
    assert await store.claim("worker-a", [MODEL], lease_seconds=60) is None
    # The failures are posted as any other: the relay lists them.
    assert {job.id for job in await store.finished_jobs_unposted(GUILD)} == set(bad.values())


async def test_damaged_params_of_a_finished_job_do_not_break_the_top_list(
    store: JobStore, engine: AsyncEngine
) -> None:
    job_id, (sample_id,) = await finished_job(store)
    await _damage_params(engine, job_id, "[]")
    (ranked,) = await store.top_samples(GUILD)
    assert ranked.sample.id == sample_id and storage.store.unreadable_params(ranked.params) is not None


async def test_params_cannot_use_the_key_that_marks_unreadable_params(store: JobStore) -> None:
    with pytest.raises(Exception, match="cannot use the key"):
        await enqueue(store, params={storage.store.UNREADABLE_PARAMS_KEY: "x"})


@pytest.mark.parametrize("db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
async def test_a_worker_machine_whose_clock_is_minutes_slow_is_still_seen_serving(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Postgres, where workers run on other machines: presence is stamped by the database's clock."""
    bot_store = JobStore(engine)  # the bot's machine: the right time

    def worker_machine_clock() -> datetime:  # 3 minutes behind
        return utcnow() - timedelta(minutes=3)

    monkeypatch.setattr(storage.store, "utcnow", worker_machine_clock)  # what that machine's store reads
    worker_store = JobStore(engine)
    monkeypatch.undo()

    await worker_store.record_worker("gpu-box/1/cuda:0", ["1b_lyrics"])
    assert await bot_store.served_models() == {"1b_lyrics"}
    # A row stamped far back by the database's clock is still stale, and a day old is forgotten.
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE workers SET last_seen_at = statement_timestamp() - interval '10 minutes'")
        )
    assert await bot_store.served_models() == frozenset()
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE workers SET last_seen_at = statement_timestamp() - interval '2 days'")
        )
    await worker_store.record_worker("gpu-box/2/cuda:0", ["5b"])
    assert await bot_store.served_models() == {"5b"}
    async with engine.connect() as connection:
        assert (await connection.execute(text("SELECT count(*) FROM workers"))).scalar() == 1


async def test_the_bots_and_workers_quick_reads_do_not_wait_for_a_writer(
    store: JobStore, engine: AsyncEngine
) -> None:
    """On SQLite a write transaction holds the only write lock: `/jukebox` asks which models are served
    (within Discord's 3 s), a worker whether its job was cancelled; neither may queue behind it."""
    job_id = await enqueue(store)
    claimed = await store.claim("worker-a", [MODEL], lease_seconds=60)
    assert claimed is not None
    await store.save_checkpoint(job_id, "worker-a", b"codes")
    await store.record_worker("gpu-box/1/cuda:0", [MODEL])
    async with write_held(engine, job_id):
        reads = asyncio.gather(
            store.served_models(),
            store.is_cancel_requested(job_id),
            store.get_checkpoint(job_id),
            store.active_lease_owners(),
        )
        served, cancel, checkpoint, owners = await asyncio.wait_for(reads, READ_DEADLINE_S)
    assert (served, cancel, checkpoint, owners) == ({MODEL}, False, b"codes", ["worker-a"])


async def test_results_given_back_with_a_wait_are_neither_listed_nor_claimable_until_it_is_over(
    store: JobStore, clock: FakeClock
) -> None:
    job_id, _ = await finished_job(store)
    other, _ = await finished_job(store, user_id=USER + 1)
    assert await store.claim_results_posting(job_id, "bot-a", 30.0)
    with pytest.raises(Exception, match="retry_after_s"):
        await store.release_results_posting(job_id, "bot-a", retry_after_s=-1.0)
    await store.release_results_posting(job_id, "bot-a", retry_after_s=60.0)
    assert [job.id for job in await store.finished_jobs_unposted(GUILD)] == [other]
    assert await store.claim_results_posting(job_id, "bot-b", 30.0) is None
    clock.advance(61)
    assert [job.id for job in await store.finished_jobs_unposted(GUILD)] == [job_id, other]
    assert await store.claim_results_posting(job_id, "bot-b", 30.0)
