"""Workers that cannot serve, or keep dying: a device that cannot run stops its worker for good
(EXIT_CONFIG) before it claims a job; a crash makes the worker wait before claiming again; a worker
killed before it ever finished warming up is restarted after a growing wait, whatever its lifetime;
running out of CPU memory fails the job at once, as on a GPU; the logs say what happened."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy.ext.asyncio import AsyncEngine

from sampler.worker import runtime
from sampler.worker.contract import DeviceSpec, JobTask, ProgressReporter, StopCheck
from sampler.worker.memory import is_out_of_memory
from sampler.worker.pool import WorkerPool
from sampler.worker.runtime import EXIT_CONFIG, EXIT_OK, JobOutcome, Worker, pid_of
from storage import JobStatus, JobStore, NewSample
from tests.holding import release_file
from tests.sampler.worker.test_pool import RUNNER, PoolProcess, enqueue, held, hold_dir, log_dir, pools
from tests.sampler.worker.test_runtime import FAST, claim, toy_env
from tests.sampler.worker.toy_runner import ToyRunner
from tests.waiting import wait_until
from tests.worker_processes import ServiceProcess, job_finished, pool_command, repo_environment

__all__ = ["hold_dir", "log_dir", "pools", "toy_env"]

# What torch 2's CPU allocator raises for an allocation the machine cannot satisfy.
CPU_ALLOCATOR_MESSAGE = (
    "[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: you tried "
    "to allocate 1125899906842624 bytes. Error code 12 (Cannot allocate memory)"
)


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[JobStore]:
    from storage import create_engine

    engine = create_engine(db_url)
    yield JobStore(engine)
    await engine.dispose()


# ----------------------------------------------------------------------------- C: a device that cannot run


async def test_a_pool_on_a_device_that_cannot_run_stops_that_worker_without_claiming(
    tmp_path: Path, db_url: str, store: JobStore, toy_env: Path
) -> None:
    # A GPU index this machine does not have (cuda:0 with a CPU build of torch, as the review ran it).
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = f"cuda:{visible}"
    job_id = await enqueue(store)
    command = pool_command(db_url, RUNNER)
    command[command.index("cpu")] = device
    pool = ServiceProcess(
        command, repo_environment({"JUKEBOT_TOY_LOG_DIR": str(toy_env)}), tmp_path / "p.log"
    )
    try:

        async def exited() -> int | None:
            return pool.process.poll()

        await wait_until(exited, 90, "the pool to give up its only worker")
        assert pool.process.returncode == EXIT_CONFIG
    finally:
        await pool.stop()
    log = pool.log()
    assert log.count("started (pid") == 1, log  # not restarted
    assert re.search(rf"cannot start a worker on {device}: {device} is not (usable|there)", log), log
    assert "not restarting it" in log and "warming up" not in log
    job = await store.get_job(job_id)
    assert job.status is JobStatus.QUEUED and job.attempts == 0 and job.error is None


class WarmUpFails(ToyRunner):
    def __init__(self, error: Exception) -> None:
        super().__init__(DeviceSpec.cpu())
        self.error = error

    def warm_up(self, alive: Callable[[], None]) -> None:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        AssertionError("Torch not compiled with CUDA enabled"),
        RuntimeError("CUDA error: CUDA-capable device(s) is/are busy or unavailable"),
        RuntimeError("Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU"),
    ],
    ids=["no CUDA", "exclusive mode", "no driver"],
)
async def test_a_warm_up_that_finds_the_device_unusable_claims_nothing(
    engine: AsyncEngine, toy_env: Path, error: Exception
) -> None:
    store = JobStore(engine)
    job_id = await enqueue(store)
    worker = Worker(store, WarmUpFails(error), DeviceSpec.cpu(), config=FAST)
    try:
        with pytest.raises(
            runtime.DeviceUnusable, match="cpu cannot run jobs: warming up its runner failed with"
        ):
            await asyncio.wait_for(worker.serve(asyncio.Event()), 30)
    finally:
        worker.close()
    job = await store.get_job(job_id)
    assert job.status is JobStatus.QUEUED and job.attempts == 0


async def test_a_warm_up_that_runs_out_of_memory_still_serves(engine: AsyncEngine, toy_env: Path) -> None:
    # Loading every prior at once did not fit: jobs load one level at a time, so they may well run.
    store = JobStore(engine)
    job_id = await enqueue(store, params={"seconds": 0.25})
    error = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.78 GiB total)")
    worker = Worker(store, WarmUpFails(error), DeviceSpec.cpu(), config=FAST)
    stop = asyncio.Event()
    serving = asyncio.create_task(worker.serve(stop))
    try:
        assert (await job_finished(store, job_id)).status is JobStatus.SUCCEEDED
    finally:
        stop.set()
        await asyncio.wait_for(serving, 30)
        worker.close()


# ----------------------------------------------------------------------------- C: back off after a crash


class ClaimTimes(JobStore):
    """Notes when each claim that got a job happened."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.times: list[float] = []

    async def claim(self, *args: Any, **kwargs: Any) -> Any:
        job = await super().claim(*args, **kwargs)
        if job is not None:
            self.times.append(time.monotonic())
        return job


async def test_after_a_crash_the_worker_waits_longer_and_longer_before_claiming_again(
    engine: AsyncEngine, toy_env: Path
) -> None:
    store = ClaimTimes(engine)
    poison = await enqueue(store, params={"artist": "!crash"}, max_attempts=3)
    config = dataclasses.replace(FAST, crash_backoff_seconds=0.4)
    worker = Worker(store, ToyRunner(DeviceSpec.cpu()), DeviceSpec.cpu(), config=config)
    stop = asyncio.Event()
    serving = asyncio.create_task(worker.serve(stop))
    try:
        failed = await job_finished(store, poison)
        good = await enqueue(store, params={"seconds": 0.25})
        assert (await job_finished(store, good)).status is JobStatus.SUCCEEDED
    finally:
        stop.set()
        await asyncio.wait_for(serving, 30)
        worker.close()
    assert failed.status is JobStatus.FAILED and failed.attempts == 3
    gaps = [later - earlier for earlier, later in zip(store.times, store.times[1:], strict=False)]
    assert len(gaps) == 3 and gaps[0] >= 0.4 and gaps[1] >= 0.8 and gaps[2] >= 1.6, gaps


# ----------------------------------------------------------------------------- K: CPU out of memory


class AllocatesTooMuch(ToyRunner):
    def run(self, task: JobTask, report: ProgressReporter, should_stop: StopCheck) -> list[NewSample]:
        torch.empty(1 << 50, dtype=torch.uint8)  # 1 PiB: the CPU allocator refuses it
        raise AssertionError("unreachable")


def test_the_cpu_allocators_error_is_out_of_memory() -> None:
    assert is_out_of_memory(RuntimeError(CPU_ALLOCATOR_MESSAGE))
    assert is_out_of_memory(OSError(12, "Cannot allocate memory"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


async def test_running_out_of_cpu_memory_fails_the_job_at_once_with_the_advice(
    engine: AsyncEngine, toy_env: Path
) -> None:
    store = JobStore(engine)
    job_id = await enqueue(store, max_attempts=3)
    worker = Worker(store, AllocatesTooMuch(DeviceSpec.cpu()), DeviceSpec.cpu(), config=FAST)
    try:
        assert await worker.run_job(await claim(store, worker)) is JobOutcome.FAILED
    finally:
        worker.close()
    job = await store.get_job(job_id)
    assert job.status is JobStatus.FAILED and job.attempts == 0
    assert (job.error or "").startswith("Out of memory on cpu (RuntimeError: "), job.error
    assert "Lower the number of samples" in (job.error or "")


# ----------------------------------------------------------------------------- L: restarts and their log


def test_a_worker_killed_before_it_finished_warming_up_restarts_after_a_growing_wait(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # It lives longer than `stable_seconds` every time (a 5B model loading for minutes before the OOM
    # killer strikes): only that it never got to serve says it would die the same way again.
    pool = WorkerPool(
        db_url,
        [DeviceSpec.cpu()],
        "tests.sampler.worker.dying_runner:make",
        restart_backoff=0.2,
        stable_seconds=0,
    )
    with caplog.at_level(logging.INFO, logger="sampler.worker.pool"):
        pool.start()
        try:
            deadline = time.monotonic() + 120
            while pool.slots[0].restarts < 2:
                assert time.monotonic() < deadline, "the worker was not restarted twice within 120 s"
                pool.supervise()
        finally:
            pool.stop(30)
    deaths = [r.getMessage() for r in caplog.records if "restarting in" in r.getMessage()]
    assert len(deaths) >= 2, deaths
    for message in deaths:
        assert "was killed by SIGKILL (often the kernel's out-of-memory killer: check `dmesg`)" in message
        assert "before it finished warming up" in message and "resumes" not in message
    assert "restarting in 0.2 s" in deaths[0] and "restarting in 0.4 s" in deaths[1], deaths


@pytest.mark.slow
async def test_a_worker_killed_mid_job_is_logged_with_its_job(
    pools: Any, store: JobStore, hold_dir: Path
) -> None:
    pool: PoolProcess = pools(held=True, extra=["--lease-seconds", "600", "--requeue-seconds", "600"])
    job_id = await enqueue(store, params={"seconds": 3.0})
    owner = (await held(store, hold_dir, job_id)).lease_owner
    assert owner is not None
    os.kill(pid_of(owner), signal.SIGKILL)
    release_file(hold_dir, job_id).touch()
    assert (await job_finished(store, job_id, within=90)).status is JobStatus.SUCCEEDED
    death = next(line for line in pool.log().splitlines() if "restarting in" in line)
    assert "killed by SIGKILL (often the kernel's out-of-memory killer" in death
    assert f"(job #{job_id} resumes from its checkpoint)" in death
    assert "before it finished warming up" not in death


async def test_sigterm_to_an_idle_worker_says_no_job_was_running(pools: Any) -> None:
    pool: PoolProcess = pools()
    await pool.ready()
    assert await pool.terminate() == EXIT_OK
    log = pool.log()
    assert "SIGTERM received: stopping (no job running)" in log, log
    assert "releasing" not in log
