"""SQLite's outage: another process holds the database file's write lock past the busy timeout. The
worker treats it as it treats a Postgres it cannot reach: it keeps what the job made and writes it
once the lock is gone, at no cost of an attempt (before, one 'database is locked' threw a finished
job's samples away and left it running under a worker that had moved on)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sampler.worker.contract import DeviceSpec
from sampler.worker.runtime import JobOutcome, Worker, WorkerConfig
from storage import JobStatus, JobStore, create_engine
from tests.sampler.worker.test_runtime import FAST, claim, enqueue, toy_env  # noqa: F401
from tests.sampler.worker.toy_runner import ToyRunner
from tests.sqlite_lock import WriteLock
from tests.waiting import wait_until

BUSY_TIMEOUT_S = 0.5  # the worker's engine waits this long for the lock, not SQLite's default 60 s


class LockedStore(JobStore):
    """Takes the write lock just before the `lock_at`-th call of method `method` goes to the database."""

    def __init__(self, engine: Any, path: Path, method: str, lock_at: int = 1) -> None:
        super().__init__(engine)
        self.lock = WriteLock(path)
        calls = 0
        unlocked = getattr(self, method)

        async def locked_at(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == lock_at:
                self.lock.take()
            return await unlocked(*args, **kwargs)

        setattr(self, method, locked_at)


@contextlib.asynccontextmanager
async def _worker_on_a_locked_store(
    sqlite_template: Path, tmp_path: Path, method: str, lock_at: int = 1, config: WorkerConfig = FAST
) -> AsyncIterator[tuple[LockedStore, Worker]]:
    path = tmp_path / "jukebot.sqlite3"
    shutil.copyfile(sqlite_template, path)
    engine = create_engine(f"sqlite+aiosqlite:///{path}?timeout={BUSY_TIMEOUT_S}")
    store = LockedStore(engine, path, method, lock_at)
    worker = Worker(store, ToyRunner(DeviceSpec.cpu()), DeviceSpec.cpu(), config=config)
    try:
        yield store, worker
    finally:
        store.lock.release()
        worker.close()
        await engine.dispose()


async def _released_once_noticed(worker: Worker, store: LockedStore, running: asyncio.Task[Any]) -> None:
    """Hold the lock until the worker says the database is away (or the run ended), then release it."""

    async def noticed() -> bool:
        return running.done() or (store.lock.held and worker.database_away)

    await wait_until(noticed, 60, "the worker to notice the locked database")
    store.lock.release()


async def _run_through_the_lock(store: LockedStore, worker: Worker) -> int:
    """Run a queued job; the lock taken on its way is released once the worker noticed it."""
    job_id = await enqueue(store, params={"seconds": 1.0})
    running = asyncio.create_task(worker.run_job(await claim(store, worker)))
    await _released_once_noticed(worker, store, running)
    assert await asyncio.wait_for(running, 60) is JobOutcome.SUCCEEDED
    return job_id


async def test_a_finished_job_is_stored_once_the_lock_is_gone(
    sqlite_template: Path,
    tmp_path: Path,
    toy_env: Path,  # noqa: F811
) -> None:
    async with _worker_on_a_locked_store(sqlite_template, tmp_path, "complete") as (store, worker):
        job_id = await _run_through_the_lock(store, worker)
        job = await store.get_job(job_id)
        assert job.status is JobStatus.SUCCEEDED and job.attempts == 0
        assert len(await store.samples_for_job(job_id)) == 1


async def test_a_lock_at_a_checkpoint_costs_no_attempt(
    sqlite_template: Path,
    tmp_path: Path,
    toy_env: Path,  # noqa: F811
) -> None:
    config = dataclasses.replace(FAST, checkpoint_seconds=0)
    async with _worker_on_a_locked_store(
        sqlite_template, tmp_path, "save_checkpoint", lock_at=2, config=config
    ) as (store, worker):
        job_id = await _run_through_the_lock(store, worker)
        job = await store.get_job(job_id)
        assert job.status is JobStatus.SUCCEEDED and job.attempts == 0, (job.status, job.attempts, job.error)


async def test_a_serving_worker_keeps_a_finished_job_on_its_last_attempt(
    sqlite_template: Path,
    tmp_path: Path,
    toy_env: Path,  # noqa: F811
) -> None:
    stop = asyncio.Event()
    async with _worker_on_a_locked_store(sqlite_template, tmp_path, "complete") as (store, worker):
        job_id = await enqueue(store, params={"seconds": 1.0}, max_attempts=1)
        serving = asyncio.create_task(worker.serve(stop))

        async def lock_taken() -> bool:
            return store.lock.held or serving.done()

        await wait_until(lock_taken, 60, "the worker to store the finished job")
        await _released_once_noticed(worker, store, serving)

        async def finished() -> bool:
            return (await store.get_job(job_id)).finished

        await wait_until(finished, 60, "the job to finish")
        stop.set()
        await asyncio.wait_for(serving, 30)
        job = await store.get_job(job_id)
        assert job.status is JobStatus.SUCCEEDED, (job.status, job.attempts, job.error)
