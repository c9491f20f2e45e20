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
from storage.records import ClaimedJob
from storage.store import JobStore
from tests.sampler.worker.test_runtime import toy_env  # noqa: F401  (a fixture)
from tests.sampler.worker.toy_runner import ToyRunner
from tests.waiting import wait_until


def disk_full() -> OperationalError:
    error = sqlite3.OperationalError("database or disk is full")
    error.sqlite_errorcode = 13  # type: ignore[attr-defined]
    error.sqlite_errorname = "SQLITE_FULL"  # type: ignore[attr-defined]
    return OperationalError("INSERT INTO samples ...", {}, error)


def _worker(store: JobStore, lease_seconds: float) -> Worker:
    config = WorkerConfig(lease_seconds=lease_seconds, progress_seconds=0.1, retry_max_seconds=0.2)
    return Worker(store, ToyRunner(DeviceSpec.cpu()), DeviceSpec.cpu(), config=config)


async def _claimed(store: JobStore, worker: Worker) -> ClaimedJob:
    params = {"artist": "a", "genres": ["rock"], "seconds": 0.5, "seed": 1, "n_samples": 1}
    await store.enqueue(kind="generate", model="5b", params=params, channel_id=1, user_id=2)
    claimed = await store.claim(worker.worker_id, {"5b"}, worker.config.lease_seconds)
    assert claimed is not None
    return claimed


async def _until_a_heartbeat(worker: Worker) -> None:
    """Until the database answers a call of the worker's (its heartbeat) after now."""
    answered = worker._answered

    async def heartbeat_got_through() -> bool:
        return worker._answered > answered

    await wait_until(heartbeat_got_through, 30.0, "a heartbeat to get through meanwhile")


@pytest.mark.usefixtures("toy_env")
async def test_samples_the_disk_has_no_room_for_wait_for_room_and_cost_no_attempt(
    sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    worker = _worker(sqlite_store, 3.0)
    complete = sqlite_store.complete
    refused = 0

    async def complete_once_there_is_room(*args: Any, **kwargs: Any) -> Any:
        nonlocal refused
        if refused <= SLOW_CALL_TRIES:  # more full-disk refusals than a slow link is given
            refused += 1
            await _until_a_heartbeat(worker)
            raise disk_full()
        return await complete(*args, **kwargs)

    monkeypatch.setattr(sqlite_store, "complete", complete_once_there_is_room)
    claimed = await _claimed(sqlite_store, worker)
    caplog.set_level(logging.WARNING, logger="sampler.worker.runtime")
    try:
        await worker.run_job(claimed)
    finally:
        worker.close()
    job = await sqlite_store.get_job(claimed.id)
    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 0)
    assert refused == SLOW_CALL_TRIES + 1
    said = [r.getMessage() for r in caplog.records if "waits: the database's disk is full" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]


@pytest.mark.usefixtures("toy_env")
async def test_a_worker_told_to_stop_waits_for_room_a_lease_at_most(
    sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Waiting for room never ended: a stopping worker held its GPU until its pool killed it."""
    worker = _worker(sqlite_store, 1.0)
    stop = asyncio.Event()

    async def never_room(*args: Any, **kwargs: Any) -> Any:
        await _until_a_heartbeat(worker)
        stop.set()  # the worker is told to stop while the disk stays full
        raise disk_full()

    monkeypatch.setattr(sqlite_store, "complete", never_room)
    claimed = await _claimed(sqlite_store, worker)
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
    worker = _worker(sqlite_store, 1.0)
    stop = asyncio.Event()

    async def no_room(*args: Any, **kwargs: Any) -> Any:
        stop.set()
        raise disk_full()

    monkeypatch.setattr(sqlite_store, "complete", no_room)
    claimed = await _claimed(sqlite_store, worker)
    caplog.set_level(logging.WARNING, logger="sampler.worker.runtime")
    try:
        outcome = await asyncio.wait_for(worker.run_job(claimed, stop), 60)
    finally:
        worker.close()
    assert outcome is JobOutcome.LEFT_TO_LEASE
    flapping = [r for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(flapping) <= 1
