"""A worker that stops while the database is unreachable: it waits for the database only until the
running job's lease has run out, then exits, freeing its device.

Before, its release was tried again for as long as the outage lasted: a worker whose pool was killed
(nobody left to kill it after a shutdown timeout) held its GPU for ever. Past the lease the job is no
longer the worker's to release, and the lease brings it back anyway, from its last stored checkpoint.
Not stopping, a worker still waits out any outage (tests/sampler/worker/test_runtime.py,
test_blackholed_database.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from sampler.worker.contract import DeviceSpec
from sampler.worker.runtime import JobOutcome, Worker, pid_of
from storage import JobStatus, JobStore, create_engine
from storage.records import ClaimedJob, Job
from tests.holding import HOLD_DIR_VARIABLE, EventGate, HoldingRunner
from tests.sampler.worker import test_runtime
from tests.sampler.worker.test_blackholed_database import BlackholeProxy, end_run
from tests.sampler.worker.test_pool import HELD_RUNNER, _gone, held
from tests.sampler.worker.test_runtime import EVERY_CHECKPOINT, claim, enqueue
from tests.sampler.worker.toy_runner import ToyRunner
from tests.waiting import wait_until
from tests.worker_processes import ServiceProcess, pool_command, repo_environment

toy_env = test_runtime.toy_env  # the fixture: the toy runner's log directory

# Short leases, so that waiting one out takes seconds; each database call is given up after a
# quarter of it.
LEASE_SECONDS = 4.0
POOL_LEASE_SECONDS = 6.0  # a worker process on a loaded machine still renews it in time


def _proxy(db_url: str) -> BlackholeProxy:
    """A proxy in front of `db_url`'s Postgres that the test can make go silent."""
    address = make_url(db_url)
    return BlackholeProxy(address.host or "127.0.0.1", address.port or 5432)


async def _through(proxy: BlackholeProxy, db_url: str) -> str:
    """`db_url` through `proxy` (started)."""
    return make_url(db_url).set(host="127.0.0.1", port=await proxy.start()).render_as_string(False)


async def _comes_back_after_its_lease(direct: JobStore, job_id: int, within: float) -> ClaimedJob:
    """Another worker takes the job over once its lease has run out: the lease brought it back."""

    async def taken() -> ClaimedJob | None:
        return await direct.claim("another-machine/1/cpu", ["5b_lyrics"], lease_seconds=60)

    job = await wait_until(taken, within, f"job #{job_id} to come back once its lease ran out")
    assert job.id == job_id and job.has_checkpoint  # resumed from its last stored checkpoint
    return job


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_a_worker_stopping_while_the_database_is_silent_gives_up_once_the_lease_ran_out(
    db_url: str, toy_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stop while every call hangs unanswered: the release is tried until the job's lease has run
    out (not sooner: releasing would have put the job back sooner), then given up with one warning,
    nothing written."""
    proxy = _proxy(db_url)
    direct_engine = create_engine(db_url)
    direct = JobStore(direct_engine)  # the test's own view, not through the proxy
    worker_engine = create_engine(await _through(proxy, db_url))
    gate = EventGate()
    config = dataclasses.replace(EVERY_CHECKPOINT, lease_seconds=LEASE_SECONDS, retry_max_seconds=0.2)
    runner = HoldingRunner(ToyRunner(DeviceSpec.cpu()), gate)
    worker = Worker(JobStore(worker_engine), runner, DeviceSpec.cpu(), config=config)
    stop = asyncio.Event()
    running: asyncio.Task[JobOutcome] | None = None
    try:
        job_id = await enqueue(direct, params={"seconds": 2.0})
        claimed = await claim(direct, worker)
        running = asyncio.create_task(worker.run_job(claimed, stop))
        assert await asyncio.to_thread(gate.held["checkpoint 1"].wait, 60), "no first checkpoint"
        await wait_until(lambda: direct.get_checkpoint(job_id), what="the first checkpoint stored")

        proxy.go_dark()
        stop.set()  # as when the pool is gone: the hold ends, the run stops and is to be released

        async def ended() -> bool:
            assert running is not None
            return running.done()

        # The lease (4 s) from its last renewal, plus the tries then in flight (a quarter lease each).
        await wait_until(ended, 4 * LEASE_SECONDS, "the stopping worker to give up on the silent database")
        gave_up_at = datetime.now(UTC)
        assert running is not None and running.result() is JobOutcome.LEFT_TO_LEASE

        job = await direct.get_job(job_id)
        # Nothing was written: the job is still the worker's, and its lease had run out when the worker
        # gave up (give or take a heartbeat in flight as the path went silent, which may have renewed it
        # without the worker hearing so).
        assert job.status is JobStatus.RUNNING and job.lease_owner == worker.worker_id
        assert job.lease_expires_at is not None
        assert job.lease_expires_at <= gave_up_at + timedelta(seconds=config.call_seconds)

        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        left = [message for message in warnings if "leaves job" in message]
        away = [message for message in warnings if "the database is unreachable" in message]
        assert away and "the worker is stopping: it waits for the database until its job's lease" in away[0]
        assert len(left) == 1, warnings
        assert f"job #{job_id}: releasing it is given up" in left[0]
        assert "until the job's lease of 4 s ran out" in left[0]
        assert "resumes from its last stored checkpoint" in left[0]

        await _comes_back_after_its_lease(direct, job_id, 2 * LEASE_SECONDS)
    finally:
        await proxy.close()  # hung calls fail at once (reset): nothing below waits on them
        stop.set()
        await end_run(running, worker, worker_engine, direct_engine)  # the unfixed worker retried for ever


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_an_orphaned_worker_exits_once_its_lease_ran_out_while_the_database_is_away(
    db_url: str, tmp_path: Path
) -> None:
    """kill -9 of the pool while the database path is silent: the worker notices its pool is gone, tries
    to release its job until the lease has run out, then exits (its device freed) instead of trying
    for ever with nobody left to stop it."""
    proxy = _proxy(db_url)
    direct_engine = create_engine(db_url)
    direct = JobStore(direct_engine)
    hold_dir, log_dir = tmp_path / "holds", tmp_path / "toy-log"
    hold_dir.mkdir()
    log_dir.mkdir()
    env = repo_environment(
        {"JUKEBOT_TOY_LOG_DIR": str(log_dir), "JUKEBOT_TOY_WORK": "20", HOLD_DIR_VARIABLE: str(hold_dir)}
    )
    lease = ["--lease-seconds", f"{POOL_LEASE_SECONDS:g}"]  # after the fast flags: this one counts
    command = pool_command(await _through(proxy, db_url), HELD_RUNNER, lease)
    pool = ServiceProcess(command, env, tmp_path / "pool.log")
    worker_pid: int | None = None
    try:
        await pool.ready()
        job_id = await enqueue(direct, params={"seconds": 5.0})
        job: Job = await held(direct, hold_dir, job_id)  # mid-job, its first checkpoint stored
        assert job.lease_owner is not None
        worker_pid = pid_of(job.lease_owner)

        proxy.go_dark()
        pool.process.kill()  # no chance to stop its worker: the orphan must notice by itself
        await asyncio.to_thread(pool.process.wait, 30)

        async def exited() -> bool:
            assert worker_pid is not None
            return _gone(worker_pid)

        # Noticing the pool is gone (1 s), the lease from its last renewal, the tries then in flight,
        # saying goodbye to the workers table (a quarter lease each), then exiting.
        await wait_until(exited, 5 * POOL_LEASE_SECONDS, "the orphaned worker to give up and exit")
        log = pool.log()
        assert "the pool (pid" in log and "is gone; stopping" in log
        assert f"job #{job_id}: releasing it is given up" in log and "leaves job" in log

        job = await direct.get_job(job_id)
        assert job.status is JobStatus.RUNNING and job.attempts == 0  # nothing written
        await _comes_back_after_its_lease(direct, job_id, 2 * POOL_LEASE_SECONDS)
    finally:
        await proxy.close()  # the unfixed worker's hung calls fail (reset), so SIGTERM can end it
        if worker_pid is not None and not _gone(worker_pid):
            os.kill(worker_pid, signal.SIGKILL)
        await pool.stop(within=30)
        await direct_engine.dispose()


class SlowComplete(JobStore):
    """The database answers at once, but the finished samples take 1.5 leases to store (a slow link);
    the worker is told to stop as they start."""

    def __init__(self, engine: Any, stop: asyncio.Event) -> None:
        super().__init__(engine)
        self.stop = stop
        self.tries = 0

    async def complete(self, *args: Any, **kwargs: Any) -> Any:
        self.tries += 1
        self.stop.set()
        await asyncio.sleep(1.5 * LEASE_SECONDS)  # the upload's time, not a wait for something
        return await super().complete(*args, **kwargs)


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_a_stopping_worker_still_stores_a_finished_job_over_a_slow_link(
    db_url: str,
    toy_env: Path,
) -> None:
    """Only a database that is away is waited for no longer than the lease: one that answers slowly
    (heartbeats renew the lease meanwhile) gets more time, as when not stopping (review: the finished
    samples were thrown away, the job queued again with an attempt spent)."""
    engine = create_engine(db_url)
    stop = asyncio.Event()
    store = SlowComplete(engine, stop)
    config = dataclasses.replace(EVERY_CHECKPOINT, lease_seconds=LEASE_SECONDS)
    worker = Worker(store, ToyRunner(DeviceSpec.cpu()), DeviceSpec.cpu(), config=config)
    try:
        job_id = await enqueue(store)
        outcome = await worker.run_job(await claim(store, worker), stop)
        job = await store.get_job(job_id)
        assert outcome is JobOutcome.SUCCEEDED and job.status is JobStatus.SUCCEEDED, (outcome, job.error)
        assert job.attempts == 0 and len(await store.samples_for_job(job_id)) == 1
    finally:
        worker.close()
        await engine.dispose()
