"""A worker left running while a newer jukebot migrated the database (a bot upgraded first, a worker on
another machine not yet) never noticed: it went on claiming with its old rules (a newer per-user limit
the claim does not know of, a newer kind of job), for as long as it ran. It now reads the schema on its
recovery tick, stops, its job back in the queue for a worker of that version, and exits with
EXIT_CONFIG (its pool does not restart it; a restart of this version refuses the database, saying so)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy import text

from sampler.worker.contract import DeviceSpec
from sampler.worker.runtime import EXIT_CONFIG, WorkerConfig, _serve_process
from storage import JobStatus
from storage.store import JobStore
from tests.holding import FIRST_CHECKPOINT, EventGate, HoldingRunner
from tests.sampler.worker.test_runtime import toy_env  # noqa: F401  (a fixture)
from tests.sampler.worker.toy_runner import ToyRunner
from tests.waiting import wait_until


@pytest.mark.usefixtures("toy_env")
async def test_a_worker_stops_once_a_newer_jukebot_migrated_its_database(
    sqlite_url: str, sqlite_store: JobStore, caplog: pytest.LogCaptureFixture
) -> None:
    config = WorkerConfig(poll_seconds=0.05, progress_seconds=0.05, requeue_seconds=0.2)
    params = {"artist": "a", "genres": ["rock"], "seconds": 2.0, "seed": 1, "n_samples": 1}
    job_id = await sqlite_store.enqueue(kind="generate", model="5b", params=params, channel_id=1, user_id=2)
    cpu = DeviceSpec.cpu()
    gate = EventGate()  # held after its first checkpoint until the worker stops: never released here
    serving = asyncio.create_task(
        _serve_process(sqlite_url, cpu, HoldingRunner(ToyRunner(cpu), gate), config, None)
    )

    async def held() -> bool:
        return gate.held[FIRST_CHECKPOINT].is_set()

    await wait_until(held, 30.0, "the job to be held after its first checkpoint")
    assert not serving.done()  # the schema is its own: it serves on
    async with sqlite_store.engine.begin() as connection:
        await connection.execute(text("UPDATE alembic_version SET version_num = '0099'"))

    assert await asyncio.wait_for(serving, 60) == EXIT_CONFIG
    job = await sqlite_store.get_job(job_id)
    assert (job.status, job.attempts, job.lease_owner) == (JobStatus.QUEUED, 0, None)
    assert job.has_checkpoint  # what it made before the stop is kept
    (said,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "stops: the database's schema (revision 0099) is not one this jukebot knows: a newer" in said
    assert said.endswith(f"; job #{job_id} goes back to the queue")
