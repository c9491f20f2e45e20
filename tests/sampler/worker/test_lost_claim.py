"""A claim the database committed whose answer never reached the worker (the connection dropped after
the commit, or the call timed out): the job is running under the worker's own id while the worker,
idle, runs nothing. Its next claim takes the job back at once, costing no attempt, instead of leaving
it to wait out its lease and then count an attempt (failing a job of one attempt)."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from sampler.worker.contract import DeviceSpec
from sampler.worker.runtime import Worker
from storage import JobKind, JobStatus, JobStore
from storage.records import ClaimedJob, Job
from tests.conftest import FakeClock
from tests.sampler.worker.test_runtime import FAST, toy_env
from tests.sampler.worker.toy_runner import ToyRunner
from tests.waiting import wait_until

__all__ = ["toy_env"]


class AnswerLostOnce(JobStore):
    """The first claim that takes a job commits it, then fails as a connection dropped right after the
    commit does: the worker never hears which job it holds."""

    def __init__(self, engine: AsyncEngine, clock: FakeClock) -> None:
        super().__init__(engine, clock=clock)
        self.lost: list[int] = []

    async def claim(
        self, worker_id: str, models: Collection[str], lease_seconds: float, **options: Any
    ) -> ClaimedJob | None:
        job = await super().claim(worker_id, models, lease_seconds, **options)
        if job is not None and not self.lost:
            self.lost.append(job.id)
            raise ConnectionResetError("the connection was lost after the COMMIT")
        return job


@pytest.mark.parametrize("max_attempts", [1, 3])
@pytest.mark.usefixtures("toy_env")
async def test_an_idle_worker_takes_back_the_job_whose_claim_answer_was_lost(
    engine: AsyncEngine, clock: FakeClock, max_attempts: int
) -> None:
    # Leases run by a clock the test holds still: the lost job's lease never runs out, so only the
    # worker's taking it back can run it.
    store = AnswerLostOnce(engine, clock)
    params = {"artist": "the beatles", "genres": ["rock"], "seconds": 1.0, "seed": 7}
    job_id = await store.enqueue(
        kind=JobKind.GENERATE,
        model="5b_lyrics",
        params=params,
        channel_id=2,
        user_id=3,
        max_attempts=max_attempts,
    )
    worker = Worker(store, ToyRunner(DeviceSpec.cpu()), DeviceSpec.cpu(), config=FAST)
    stop = asyncio.Event()
    serving = asyncio.create_task(worker.serve(stop))
    try:

        async def finished() -> Job | None:
            assert not serving.done(), "the worker stopped"
            job = await store.get_job(job_id)
            return job if job.status not in (JobStatus.QUEUED, JobStatus.RUNNING) else None

        job = await wait_until(finished, 30, "the job whose claim's answer was lost to finish")
    finally:
        stop.set()
        await asyncio.wait_for(serving, 30)
        worker.close()
    assert store.lost == [job_id]
    assert job.status is JobStatus.SUCCEEDED and job.attempts == 0 and job.error is None
    assert len(await store.samples_for_job(job_id)) >= 1
