"""Resident priors: loaded once across levels and jobs (and at worker start), or per level when off.

The real runner on the tiny model directory; loads are counted at the real loader
(`ModelDirectory.load_prior`, wrapped, still loading).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from sampler import cascade_runner
from sampler.cascade_runner import CascadeRunner, make_runner
from sampler.jukebox.cascade import Cascade
from sampler.loading import ModelDirectory, resident_estimate
from sampler.residency import ResidentEstimate, ResidentPriors, keep_priors_resident, parse_resident_priors
from sampler.units import format_bytes
from sampler.worker.contract import DeviceSpec, WarmsUp
from sampler.worker.runtime import Worker
from storage import JobStatus
from storage.store import JobStore
from tests.sampler.test_cascade_runner import PREVIEW, claim, model_dir, run
from tests.sampler.worker.test_runtime import FAST
from tests.tiny_model_dir import write_tiny_model_dir
from tests.waiting import wait_until

__all__ = ["model_dir"]

FULL = PREVIEW.model_copy(update={"levels": "all", "n_samples": 1})  # levels 0, 1 and 2


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """(model, level) of every prior the real loader reads, in order."""
    seen: list[tuple[str, int]] = []
    load = ModelDirectory.load_prior

    def counted(self: ModelDirectory, level: int, *args: Any, **kwargs: Any) -> Any:
        seen.append((self.model, level))
        return load(self, level, *args, **kwargs)

    monkeypatch.setattr(ModelDirectory, "load_prior", counted)
    return seen


def cpu_runner(model_dir: Path, resident: ResidentPriors) -> CascadeRunner:
    torch.set_num_threads(1)
    return CascadeRunner(DeviceSpec.cpu(), model_dir, resident_priors=resident)


async def test_resident_priors_load_once_across_levels_and_jobs(
    model_dir: Path, sqlite_store: JobStore, loads: list[tuple[str, int]]
) -> None:
    runner = cpu_runner(model_dir, "auto")  # the CPU has no memory budget: resident
    run(runner, await claim(sqlite_store, kind="generate", model="5b", params=FULL))
    top = runner.cascade("5b").priors.acquire(2)
    run(runner, await claim(sqlite_store, kind="generate", model="5b", params=FULL))
    assert sorted(loads) == [("5b", 0), ("5b", 1), ("5b", 2)]
    assert runner.cascade("5b").priors.acquire(2) is top


@pytest.mark.parametrize(("spare", "resident"), [(0, True), (-1, False)])
async def test_auto_keeps_the_priors_where_the_free_memory_holds_the_estimate(
    model_dir: Path,
    sqlite_store: JobStore,
    loads: list[tuple[str, int]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    spare: int,
    resident: bool,
) -> None:
    runner = cpu_runner(model_dir, "auto")
    needed = resident_estimate(ModelDirectory(model_dir, "5b"), runner.dtype, runner.max_batch_size)
    # a GPU's free memory, as the device would report it
    monkeypatch.setattr(cascade_runner, "free_device_memory", lambda device: needed.total + spare)
    preview = PREVIEW.model_copy(update={"n_samples": 1})  # the top level only
    with caplog.at_level(logging.INFO, logger="sampler.cascade_runner"):
        for _ in range(2):
            run(runner, await claim(sqlite_store, kind="generate", model="5b", params=preview))
    assert loads == [("5b", 2)] * (1 if resident else 2)
    decisions = [r.getMessage() for r in caplog.records if r.getMessage().startswith("5b priors on cpu")]
    assert decisions == [
        f"5b priors on cpu: {'resident' if resident else 'loaded per level'} (resident_priors=auto): "
        f"they need {needed.describe()} at batch sizes 16,16,3; {format_bytes(needed.total + spare)} free"
    ]


async def test_auto_counts_no_more_samples_than_a_job_has(
    model_dir: Path,
    sqlite_store: JobStore,
    loads: list[tuple[str, int]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """JUKEBOT_MAX_BATCH_SIZE=64 estimated KV caches for 64 samples where a job has at most 16: a GPU
    with room for the priors loaded them per level (a 20-digit size raised from torch instead)."""
    torch.set_num_threads(1)
    runner = CascadeRunner(DeviceSpec.cpu(), model_dir, resident_priors="auto", max_batch_size=(64, 64, 64))
    needed = resident_estimate(ModelDirectory(model_dir, "5b"), runner.dtype, (16, 16, 16))
    monkeypatch.setattr(cascade_runner, "free_device_memory", lambda device: needed.total)
    preview = PREVIEW.model_copy(update={"n_samples": 1})
    with caplog.at_level(logging.INFO, logger="sampler.cascade_runner"):
        run(runner, await claim(sqlite_store, kind="generate", model="5b", params=preview))
    assert runner.keeps_priors("5b")
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("5b priors on cpu")]
    assert said and "at batch sizes 16,16,16;" in said[0], said


async def test_off_loads_each_level_for_each_job(
    model_dir: Path, sqlite_store: JobStore, loads: list[tuple[str, int]]
) -> None:
    runner = cpu_runner(model_dir, "off")
    for _ in range(2):
        run(runner, await claim(sqlite_store, kind="generate", model="5b", params=FULL))
    assert loads == [("5b", 2), ("5b", 1), ("5b", 0)] * 2  # top first, freed after its level


@pytest.mark.parametrize(("resident", "overlaps"), [("on", True), ("off", False)])
def test_levels_sample_at_once_by_default_only_while_their_priors_stay_resident(
    model_dir: Path, resident: ResidentPriors, overlaps: bool
) -> None:
    # None: the cascade's default for the device (on for CUDA), which holds two or three priors at once
    runner = cpu_runner(model_dir, resident)
    assert runner._overlaps("5b") is (None if overlaps else False)
    runner.overlap_levels = True  # an explicit choice is the operator's
    assert runner._overlaps("5b") is True


async def test_warm_up_loads_the_preferred_models_priors_before_any_job(
    model_dir: Path, sqlite_store: JobStore, loads: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared: list[tuple[Cascade, tuple[int, int, int]]] = []
    # the cascade's own warm-up (compiled, captured decoders) is tested with the cascade
    monkeypatch.setattr(Cascade, "warm_up", lambda self, sizes, done_one: prepared.append((self, sizes)))
    runner = cpu_runner(model_dir, "on")
    runner.max_batch_size = (4, 3, 2)
    assert isinstance(runner, WarmsUp)
    signs_of_life: list[int] = []  # the priors loaded by each
    runner.warm_up(lambda: signs_of_life.append(len(loads)))
    # 1b_lyrics before 5b, as the bot picks a model
    assert sorted(loads) == [("1b_lyrics", 0), ("1b_lyrics", 1), ("1b_lyrics", 2)]
    assert signs_of_life == [0, 1, 2, 3]  # for the stall watch: its VQ-VAE loaded, then each prior
    assert prepared == [(runner.cascade("1b_lyrics"), (3, 3, 2))]  # a default job's 3 samples
    run(runner, await claim(sqlite_store, kind="generate", model="1b_lyrics", params=FULL))
    assert len(loads) == 3  # the job loaded nothing more


async def test_a_worker_loads_the_priors_as_it_starts_and_its_jobs_reuse_them(
    model_dir: Path, sqlite_store: JobStore, loads: list[tuple[str, int]]
) -> None:
    worker = Worker(sqlite_store, cpu_runner(model_dir, "auto"), DeviceSpec.cpu(), config=FAST)
    stop = asyncio.Event()
    serving = asyncio.create_task(worker.serve(stop))
    try:

        async def loaded() -> bool:
            return len(loads) == 3

        await wait_until(loaded, what="the warm-up to load three priors")
        job_id = await sqlite_store.enqueue(
            kind="generate", model="1b_lyrics", params=FULL.to_json(), channel_id=1, user_id=2
        )

        async def succeeded() -> bool:
            return (await sqlite_store.get_job(job_id)).status is JobStatus.SUCCEEDED

        await wait_until(succeeded, within=60, what="the job to succeed")
    finally:
        stop.set()
        await asyncio.wait_for(serving, 60)
        worker.close()
    assert sorted(loads) == [("1b_lyrics", 0), ("1b_lyrics", 1), ("1b_lyrics", 2)]


def test_warm_up_loads_no_prior_when_they_load_per_level(
    model_dir: Path, loads: list[tuple[str, int]]
) -> None:
    runner = cpu_runner(model_dir, "off")
    runner.warm_up()
    assert loads == [] and runner.keeps_priors("1b_lyrics") is False


async def test_priors_that_run_out_of_memory_at_warm_up_load_per_level_after(
    model_dir: Path, sqlite_store: JobStore, loads: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    load = ModelDirectory.load_prior  # the counting loader
    failures = [torch.OutOfMemoryError("CUDA out of memory (the test)")]

    def short_of_memory(self: ModelDirectory, level: int, *args: Any, **kwargs: Any) -> Any:
        if level == 1 and failures:  # once, with level 0 loaded
            raise failures.pop()
        return load(self, level, *args, **kwargs)

    monkeypatch.setattr(ModelDirectory, "load_prior", short_of_memory)
    runner = cpu_runner(model_dir, "on")
    with pytest.raises(torch.OutOfMemoryError):
        runner.warm_up()
    assert runner.keeps_priors("1b_lyrics") is False and loads == [("1b_lyrics", 0)]
    loads.clear()
    run(runner, await claim(sqlite_store, kind="generate", model="1b_lyrics", params=FULL))
    assert loads == [("1b_lyrics", 2), ("1b_lyrics", 1), ("1b_lyrics", 0)]


@pytest.mark.parametrize(
    ("setting", "free", "needed", "resident"),
    [
        ("auto", 40 * 2**30, 31 * 2**30, True),
        ("auto", 31 * 2**30, 31 * 2**30, True),
        ("auto", 31 * 2**30 - 1, 31 * 2**30, False),
        ("auto", None, 31 * 2**30, True),  # the CPU
        ("on", 1, 31 * 2**30, True),
        ("off", 80 * 2**30, 1, False),
        ("off", None, 1, False),
    ],
)
def test_the_residency_decision(
    setting: ResidentPriors, free: int | None, needed: int, resident: bool
) -> None:
    assert keep_priors_resident(setting, free, needed) is resident


def test_the_setting_reads_auto_on_off_and_nothing_else(tmp_path: Path) -> None:
    assert parse_resident_priors(" OFF ") == "off"
    assert make_runner(DeviceSpec.cpu(), {"model_dir": str(tmp_path)}).resident_priors == "auto"
    runner = make_runner(DeviceSpec.cpu(), {"model_dir": str(tmp_path), "resident_priors": "On"})
    assert runner.resident_priors == "on"
    with pytest.raises(ValueError, match="resident_priors must be one of auto, on, off"):
        make_runner(DeviceSpec.cpu(), {"resident_priors": "yes"})


def test_the_estimate_counts_the_weights_as_they_load_and_kv_caches_per_sample(
    model_dir: Path, tmp_path: Path
) -> None:
    lyrics = write_tiny_model_dir(tmp_path, models=("5b_lyrics",))
    # a lyric prefix (1b_lyrics), a lyric encoder read by cross-attention (5b_lyrics)
    for directory in (ModelDirectory(model_dir, "1b_lyrics"), ModelDirectory(lyrics, "5b_lyrics")):
        priors = [directory.load_prior(level, "cpu", torch.float32) for level in range(3)]
        one: dict[torch.dtype, ResidentEstimate] = {}
        for dtype in (torch.float32, torch.float16):
            # as they load in `dtype`: the compute dtype is applied at construction
            loaded = sum(
                t.nbytes
                for prior in priors
                for t in (*prior.to_compute_dtype(dtype).parameters(), *prior.buffers())
            )
            one[dtype] = resident_estimate(directory, dtype, (1, 1, 1))
            assert one[dtype].weights == loaded
            assert one[dtype].total == loaded + one[dtype].kv_caches + one[dtype].working
        assert (
            resident_estimate(directory, torch.float16, (2, 2, 2)).kv_caches
            == 2 * one[torch.float16].kv_caches
        )
        assert one[torch.float32].kv_caches == 2 * one[torch.float16].kv_caches > 0
