"""Out of memory mid-window, with the priors loaded per level: the job failed at once ("Lower the number
of samples"), its finished windows kept but the user's only way on a new job from zero; an upsample,
always one sample, was told to lower what it cannot. A sample's draws do not depend on the batch it is
sampled in, so the runner now goes on from the newest window at half the batch, down to one sample at a
time, and the codes are those of an unbroken run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from sampler import cascade_runner
from sampler.cascade_runner import CascadeRunner
from sampler.jukebox.cascade import Cascade
from sampler.worker.contract import JobDidNotFit, JobTask
from storage.store import JobStore
from tests.sampler.test_cascade_runner import claim, model_dir, run  # noqa: F401  (a fixture)
from tests.sampler.test_runner_robustness import CUDA_OOM, FULL, cpu_runner

LEVELS = [2, 1, 0]


def out_of_memory_at(
    monkeypatch: pytest.MonkeyPatch, level: int, rows_at_least: int
) -> list[tuple[int, int, int]]:
    """Windows of `level` after its first run out of memory at `rows_at_least` samples at once or more;
    returns (level, window, rows) of every window sampled."""
    seen: list[tuple[int, int, int]] = []
    sample_tokens = Cascade._sample_tokens

    def short_of_memory(
        self: Cascade, prior: Any, cond: Any, known: torch.Tensor, window: Any, *a: Any, **k: Any
    ) -> Any:
        seen.append((window.level, window.index, known.shape[0]))
        if window.level == level and window.index >= 1 and known.shape[0] >= rows_at_least:
            raise torch.OutOfMemoryError(CUDA_OOM)
        return sample_tokens(self, prior, cond, known, window, *a, **k)

    monkeypatch.setattr(Cascade, "_sample_tokens", short_of_memory)
    return seen


async def _two_samples_two_at_a_time(models: Path, store: JobStore) -> tuple[CascadeRunner, JobTask]:
    """A runner of batches of 2, priors loaded per level, and a full-quality job of 2 samples."""
    runner = cpu_runner(models, "off", max_batch_size=(2, 2, 2))
    params = FULL.model_copy(update={"n_samples": 2, "lyrics": ""})
    return runner, await claim(store, kind="generate", model="5b", params=params)


@pytest.mark.parametrize("level", LEVELS)
async def test_a_window_out_of_memory_goes_on_at_half_the_batch_with_the_same_codes(
    model_dir: Path,  # noqa: F811
    sqlite_store: JobStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    level: int,
) -> None:
    runner, task = await _two_samples_two_at_a_time(model_dir, sqlite_store)
    unbroken = run(runner, task)
    seen = out_of_memory_at(monkeypatch, level, rows_at_least=2)
    caplog.set_level(logging.WARNING, logger=cascade_runner.__name__)
    resumed = run(runner, task)
    assert [s.codes_level_0 for s in resumed] == [s.codes_level_0 for s in unbroken]
    assert [s.codes_level_2 for s in resumed] == [s.codes_level_2 for s in unbroken]
    assert (level, 1, 1) in seen  # the window that ran out, again one sample at a time
    (said,) = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
    assert f"job #{task.job.id}: out of memory on cpu sampling 2,2,2 at once" in said
    assert said.endswith("going on from its newest window at 1,1,1")


async def test_out_of_memory_one_sample_at_a_time_sends_the_job_back_for_a_worker_with_more_memory(
    model_dir: Path,  # noqa: F811
    sqlite_store: JobStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not the member's doing (a window's memory does not grow with the song): it was told "Lower the
    number of samples"."""
    runner, task = await _two_samples_two_at_a_time(model_dir, sqlite_store)
    out_of_memory_at(monkeypatch, 1, rows_at_least=1)
    with pytest.raises(
        JobDidNotFit,
        match=r"^the 5b model \(a window of one sample\) does not fit in the memory cpu has free",
    ):
        run(runner, task)
    assert "5b" not in runner.models
