"""A worker whose GPU cannot hold one of a model's priors (a smaller card in a mixed fleet, or another
process holding memory): each of the model's jobs ran out of memory loading it and failed at once,
telling its member to lower the number of samples, and the worker took the next, draining the queue in
a second. Such a job now goes back to the queue (an attempt counted: where no worker can hold the model
it fails in the end, saying so), and the worker takes no job of that model for a while (one with more
memory may). With levels sampled at once, a prior that does not fit beside the one above makes the
levels sample one after the other instead."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from sampler import cascade_runner
from sampler.loading import ModelDirectory
from sampler.worker.contract import DeviceSpec
from sampler.worker.runtime import JobOutcome, Worker
from storage import JobStatus
from storage.store import JobStore
from tests.sampler.test_cascade_runner import claim, model_dir, run  # noqa: F401  (a fixture)
from tests.sampler.test_runner_robustness import CUDA_OOM, FULL, PREVIEW, cpu_runner, enqueue, one_prior_fits


async def test_a_prior_too_big_for_the_device_sends_its_jobs_back_and_pauses_its_model(
    model_dir: Path,  # noqa: F811
    sqlite_store: JobStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    load_prior = ModelDirectory.load_prior

    def too_big(self: ModelDirectory, level: int, *args: Any, **kwargs: Any) -> Any:
        if self.model == "5b" and level == 2:
            raise torch.OutOfMemoryError(CUDA_OOM)
        return load_prior(self, level, *args, **kwargs)

    monkeypatch.setattr(ModelDirectory, "load_prior", too_big)
    runner = cpu_runner(model_dir, "off")
    worker = Worker(sqlite_store, runner, DeviceSpec.cpu())
    caplog.set_level(logging.WARNING)
    try:
        jobs = [await enqueue(sqlite_store, "5b", params=PREVIEW) for _ in range(3)]
        claimed = await sqlite_store.claim(worker.worker_id, runner.models, 60)
        assert claimed is not None and claimed.id == jobs[0]
        assert await worker.run_job(claimed) is JobOutcome.RETRYING
        first, *others = [await sqlite_store.get_job(job_id) for job_id in jobs]
        assert (first.status, first.attempts) == (JobStatus.QUEUED, 1)
        assert first.error is not None and "the 5b model (its level-2 prior) does not fit" in first.error
        assert "out of memory" not in first.error.lower()  # the runtime would fail such a job at once
        assert all((job.status, job.attempts) == (JobStatus.QUEUED, 0) for job in others)
        assert "5b" not in runner.models and "1b_lyrics" in runner.models
        said = [r.getMessage() for r in caplog.records if "does not fit in the memory" in r.getMessage()]
        assert said and said[0].startswith(f"job #{jobs[0]}: the 5b model (its level-2 prior) does not fit")
        assert "this worker takes no 5b job for the next 10 minutes" in said[0]

        # Once the pause is over the worker tries again (here at once).
        monkeypatch.setattr(cascade_runner, "DOES_NOT_FIT_PAUSE_S", 0.0)
        second = await sqlite_store.claim(worker.worker_id, runner.models | {"5b"}, 60)
        assert second is not None and await worker.run_job(second) is JobOutcome.RETRYING
        assert "5b" in runner.models
    finally:
        worker.close()


async def test_a_prior_that_fits_alone_but_not_beside_another_makes_the_levels_sample_in_turn(
    model_dir: Path,  # noqa: F811
    sqlite_store: JobStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    one_prior_fits(monkeypatch, lambda: torch.OutOfMemoryError(CUDA_OOM))
    runner = cpu_runner(model_dir, "off", overlap_levels=True)
    task = await claim(
        sqlite_store, kind="generate", model="5b", params=FULL.model_copy(update={"lyrics": ""})
    )
    samples = run(runner, task)  # the job was released, and the model paused, at every claim
    assert len(samples) == 1 and "5b" in runner.models
