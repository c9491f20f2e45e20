"""A worker told to stop while its runner loads models (minutes for a 5B prior, with no point to stop
at) outlasted the pool's shutdown timeout and was killed: its job stayed held until its lease ran out,
then cost an attempt. A job that has made nothing yet in this run now goes back to the queue at once."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from sampler.worker.contract import DeviceSpec, Stage
from sampler.worker.runtime import Worker, WorkerConfig
from storage import JobStatus
from storage.store import JobStore
from tests.sampler.worker.test_runtime import toy_env  # noqa: F401  (a fixture)
from tests.sampler.worker.toy_runner import ToyRunner
from tests.waiting import wait_until


class _SlowToLoad(ToyRunner):
    """Loads its models until the test lets it (`loaded`), checking for a stop nowhere meanwhile."""

    def __init__(self, device: DeviceSpec) -> None:
        super().__init__(device)
        self.loaded = threading.Event()

    def run(self, task: Any, report: Any, should_stop: Any) -> Any:
        report.progress(Stage.LOADING, None, None, None, 0, 1)
        self.loaded.wait(60)
        return super().run(task, report, should_stop)


@pytest.mark.usefixtures("toy_env")
async def test_a_job_whose_models_still_load_goes_back_to_the_queue_as_the_worker_stops(
    sqlite_store: JobStore,
) -> None:
    runner = _SlowToLoad(DeviceSpec.cpu())
    config = WorkerConfig(poll_seconds=0.05, progress_seconds=0.05, lease_seconds=1.0)
    worker = Worker(sqlite_store, runner, DeviceSpec.cpu(), config=config)
    params = {"artist": "a", "genres": ["rock"], "seconds": 0.5, "seed": 1, "n_samples": 1}
    job_id = await sqlite_store.enqueue(kind="generate", model="5b", params=params, channel_id=1, user_id=2)
    stop = asyncio.Event()
    serving = asyncio.create_task(worker.serve(stop))
    try:

        async def loading() -> bool:
            return (await sqlite_store.get_job(job_id)).stage == Stage.LOADING

        await wait_until(loading, 30.0, "the job's models to be loading")
        stop.set()

        async def queued() -> bool:
            return (await sqlite_store.get_job(job_id)).status == JobStatus.QUEUED

        await wait_until(queued, 30.0, "the job to be back in the queue while its models load")
        job = await sqlite_store.get_job(job_id)
        assert (job.attempts, job.lease_owner) == (0, None)
        assert not serving.done()  # the runner thread still loads
    finally:
        runner.loaded.set()
        await asyncio.wait_for(serving, 60)
        worker.close()
    job = await sqlite_store.get_job(job_id)
    assert (job.status, job.attempts, job.error) == (JobStatus.QUEUED, 0, None)
