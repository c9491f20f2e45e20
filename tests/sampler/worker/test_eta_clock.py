"""A worker whose machine's clock was an hour ahead stored a job's ETA an hour late, and Discord showed a
job ending in seconds as "done in an hour". The worker now sends the time left, and the store dates it
by the clock leases follow."""

from __future__ import annotations

import asyncio
import datetime as dt
from datetime import UTC, datetime, timedelta

import pytest

import sampler.worker.runtime as runtime
from sampler.worker.contract import DeviceSpec
from sampler.worker.runtime import Worker, WorkerConfig
from storage.store import JobStore
from tests.sampler.worker.test_runtime import toy_env  # noqa: F401  (a fixture)
from tests.sampler.worker.toy_runner import ToyRunner
from tests.waiting import wait_until


class _HourAhead(dt.datetime):
    @classmethod
    def now(cls, tz: dt.tzinfo | None = None) -> _HourAhead:  # type: ignore[override]
        real = datetime.now(tz) + timedelta(hours=1)
        return cls.fromtimestamp(real.timestamp(), tz)


@pytest.mark.usefixtures("toy_env")
async def test_an_eta_is_dated_by_the_stores_clock_not_the_workers(
    sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUKEBOT_TOY_WORK", "2000")  # a job of some seconds, its ETA well under an hour
    monkeypatch.setattr(runtime, "datetime", _HourAhead)  # this machine's clock is an hour ahead
    config = WorkerConfig(progress_seconds=0.1, poll_seconds=0.05)
    worker = Worker(sqlite_store, ToyRunner(DeviceSpec.cpu()), DeviceSpec.cpu(), config=config)
    params = {"artist": "a", "genres": ["rock"], "seconds": 3.0, "seed": 1, "n_samples": 1, "levels": "all"}
    job_id = await sqlite_store.enqueue(kind="generate", model="5b", params=params, channel_id=1, user_id=2)
    claimed = await sqlite_store.claim(worker.worker_id, {"5b"}, 60)
    assert claimed is not None
    running = asyncio.create_task(worker.run_job(claimed))
    try:

        async def eta_left() -> float | None:
            job = await sqlite_store.get_job(job_id)
            return None if job.eta_at is None else (job.eta_at - datetime.now(UTC)).total_seconds()

        left = await wait_until(eta_left, 30.0, "the job's first ETA")
        assert 0 <= left < 600, f"the ETA is {left:.0f} s away"
    finally:
        await running
        worker.close()
