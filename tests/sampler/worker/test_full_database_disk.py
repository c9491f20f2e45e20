"""The database's disk full for a big write (a job's samples) while small ones (heartbeats) still fit:
the worker took it for a slow link, gave up after three tries (`StoreCallTooSlow`), and requeued the job
with an attempt counted, dropping the samples it had made. Such a write is now waited out as an outage
is, until there is room again."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from sampler.worker.contract import DeviceSpec
from sampler.worker.runtime import SLOW_CALL_TRIES, JobOutcome, Worker, WorkerConfig
from storage import JobStatus
from storage.store import JobStore
from tests.sampler.worker.test_runtime import toy_env  # noqa: F401  (a fixture)
from tests.sampler.worker.toy_runner import ToyRunner
from tests.waiting import wait_until


def disk_full() -> OperationalError:
    error = sqlite3.OperationalError("database or disk is full")
    error.sqlite_errorcode = 13  # type: ignore[attr-defined]
    error.sqlite_errorname = "SQLITE_FULL"  # type: ignore[attr-defined]
    return OperationalError("INSERT INTO samples ...", {}, error)


@pytest.mark.usefixtures("toy_env")
async def test_samples_the_disk_has_no_room_for_wait_for_room_and_cost_no_attempt(
    sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = WorkerConfig(lease_seconds=3.0, progress_seconds=0.1, retry_max_seconds=0.2)
    worker = Worker(sqlite_store, ToyRunner(DeviceSpec.cpu()), DeviceSpec.cpu(), config=config)
    complete = sqlite_store.complete
    refused = 0

    async def complete_once_there_is_room(*args: Any, **kwargs: Any) -> Any:
        nonlocal refused
        if refused <= SLOW_CALL_TRIES:  # more full-disk refusals than a slow link is given
            refused += 1
            answered = worker._answered

            async def heartbeat_got_through() -> bool:
                return worker._answered > answered

            await wait_until(heartbeat_got_through, 30.0, "a heartbeat to get through meanwhile")
            raise disk_full()
        return await complete(*args, **kwargs)

    monkeypatch.setattr(sqlite_store, "complete", complete_once_there_is_room)
    params = {"artist": "a", "genres": ["rock"], "seconds": 0.5, "seed": 1, "n_samples": 1}
    job_id = await sqlite_store.enqueue(kind="generate", model="5b", params=params, channel_id=1, user_id=2)
    claimed = await sqlite_store.claim(worker.worker_id, {"5b"}, 3.0)
    assert claimed is not None
    caplog.set_level(logging.WARNING, logger="sampler.worker.runtime")
    try:
        await worker.run_job(claimed)
    finally:
        worker.close()
    job = await sqlite_store.get_job(job_id)
    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 0)
    assert refused == SLOW_CALL_TRIES + 1
    said = [r.getMessage() for r in caplog.records if "waits: the database's disk is full" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]


@pytest.mark.usefixtures("toy_env")
async def test_a_worker_told_to_stop_waits_for_room_a_lease_at_most(
    sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Waiting for room never ended: a stopping worker held its GPU until its pool killed it."""
    config = WorkerConfig(lease_seconds=1.0, progress_seconds=0.1, retry_max_seconds=0.2)
    worker = Worker(sqlite_store, ToyRunner(DeviceSpec.cpu()), DeviceSpec.cpu(), config=config)
    stop = asyncio.Event()

    async def never_room(*args: Any, **kwargs: Any) -> Any:
        answered = worker._answered

        async def heartbeat_got_through() -> bool:
            return worker._answered > answered

        await wait_until(heartbeat_got_through, 30.0, "a heartbeat to get through meanwhile")
        stop.set()  # the worker is told to stop while the disk stays full
        raise disk_full()

    monkeypatch.setattr(sqlite_store, "complete", never_room)
    params = {"artist": "a", "genres": ["rock"], "seconds": 0.5, "seed": 1, "n_samples": 1}
    await sqlite_store.enqueue(kind="generate", model="5b", params=params, channel_id=1, user_id=2)
    claimed = await sqlite_store.claim(worker.worker_id, {"5b"}, 1.0)
    assert claimed is not None
    try:
        outcome = await asyncio.wait_for(worker.run_job(claimed, stop), 60)
    finally:
        worker.close()
    assert outcome is JobOutcome.LEFT_TO_LEASE


@pytest.mark.usefixtures("toy_env")
async def test_a_full_disk_refusing_at_once_is_waited_out_too_and_a_stop_ends_the_wait(
    sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite refuses at once (no heartbeat lands during a try): the wait counted as an outage whose
    lease heartbeats kept renewing, so a stopping worker never left, the log flapping "unreachable" and
    "reachable again" at every try."""
    config = WorkerConfig(lease_seconds=1.0, progress_seconds=0.1, retry_max_seconds=0.2)
    worker = Worker(sqlite_store, ToyRunner(DeviceSpec.cpu()), DeviceSpec.cpu(), config=config)
    stop = asyncio.Event()

    async def no_room(*args: Any, **kwargs: Any) -> Any:
        stop.set()
        raise disk_full()

    monkeypatch.setattr(sqlite_store, "complete", no_room)
    params = {"artist": "a", "genres": ["rock"], "seconds": 0.5, "seed": 1, "n_samples": 1}
    await sqlite_store.enqueue(kind="generate", model="5b", params=params, channel_id=1, user_id=2)
    claimed = await sqlite_store.claim(worker.worker_id, {"5b"}, 1.0)
    assert claimed is not None
    caplog.set_level(logging.WARNING, logger="sampler.worker.runtime")
    try:
        outcome = await asyncio.wait_for(worker.run_job(claimed, stop), 60)
    finally:
        worker.close()
    assert outcome is JobOutcome.LEFT_TO_LEASE
    flapping = [r for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(flapping) <= 1
