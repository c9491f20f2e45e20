"""A CUDA error that breaks the process's CUDA context (an illegal memory access, a device-side assert):
the worker went on claiming, and every queued job crashed in it until all their attempts were spent.
The worker now records the crash (one attempt, for the job that hit it) and stops, and its process
exits with EXIT_CRASH for the pool to start a fresh one."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch

from sampler.cascade_runner import CascadeRunner
from sampler.jukebox.cascade import Cascade
from sampler.worker.contract import DeviceSpec
from sampler.worker.runtime import DeviceContextLost, Worker, WorkerConfig
from storage import JobStatus
from storage.store import JobStore
from tests.sampler.test_cascade_runner import PREVIEW, model_dir  # noqa: F401  (a fixture)
from tests.sampler.test_runner_robustness import enqueue

CONTEXT_LOST = (
    "CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be asynchronously "
    "reported at some other API call, so the stacktrace below might be incorrect."
)


async def test_a_broken_cuda_context_costs_one_jobs_attempt_and_stops_the_worker(
    model_dir: Path,  # noqa: F811
    sqlite_store: JobStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.set_num_threads(1)
    cpu = DeviceSpec.cpu()
    config = WorkerConfig(poll_seconds=0.05, max_poll_seconds=0.1, crash_backoff_seconds=0.05)
    worker = Worker(sqlite_store, CascadeRunner(cpu, model_dir), cpu, config=config)

    def context_lost(self: Cascade, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(CONTEXT_LOST)  # and so would every later kernel in this process

    monkeypatch.setattr(Cascade, "_sample_tokens", context_lost)
    jobs = [
        await enqueue(sqlite_store, "5b", params=PREVIEW.model_copy(update={"seed": seed}))
        for seed in range(3)
    ]
    try:
        with pytest.raises(DeviceContextLost, match="CUDA context is broken"):
            await asyncio.wait_for(worker.serve(asyncio.Event()), 120)
    finally:
        worker.close()
    first, *others = [await sqlite_store.get_job(job_id) for job_id in jobs]
    assert (first.status, first.attempts) == (JobStatus.QUEUED, 1)  # to try again in a fresh process
    assert all((job.status, job.attempts) == (JobStatus.QUEUED, 0) for job in others)
