"""The pool as it runs in production: `python -m sampler.worker.pool` processes spawning real workers
that run the toy runner against a real database (SQLite and Postgres).

A test that kills or stops something mid-job starts the pool with `held=True`: each run of a job
waits after its first checkpoint until the test releases it (tests/holding.py), so the job is
mid-job when the test acts, however fast or slow the machine."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sampler.audio import decode_audio
from sampler.worker.contract import DeviceError, DeviceSpec, JobTask, RunnerFactoryError
from sampler.worker.pool import devices_from_setting, main
from sampler.worker.runtime import EXIT_CONFIG, EXIT_OK, pid_of
from storage import JobKind, JobStatus, JobStore, create_engine
from storage.records import ClaimedJob, Job
from tests.holding import HOLD_DIR_VARIABLE, held_files, release_file
from tests.sampler.worker.toy_runner import (
    SECONDS_PER_WINDOW,
    TOKENS_PER_WINDOW,
    read_log,
    reference_codes,
)
from tests.waiting import wait_until
from tests.worker_processes import (
    CHANNEL,
    REPO,
    USER,
    ServiceProcess,
    job_finished,
    pool_command,
    repo_environment,
)

RUNNER = "tests.sampler.worker.toy_runner:make_runner"
HELD_RUNNER = "tests.holding:held_toy_runner"


class PoolProcess(ServiceProcess):
    """One `python -m sampler.worker.pool` process running the toy runner."""

    def __init__(
        self, db_url: str, log_dir: Path, log_file: Path, work: int, extra: list[str], hold_dir: Path | None
    ) -> None:
        env = repo_environment({"JUKEBOT_TOY_LOG_DIR": str(log_dir), "JUKEBOT_TOY_WORK": str(work)})
        runner = RUNNER
        if hold_dir is not None:
            env[HOLD_DIR_VARIABLE], runner = str(hold_dir), HELD_RUNNER
        super().__init__(pool_command(db_url, runner, extra), env, log_file)

    async def ready(self, workers: int = 1, within: float = 60) -> None:
        await super().ready(workers, within)

    async def terminate(self, signum: int = signal.SIGTERM, within: float = 40) -> int:
        return await super().terminate(signum, within)


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    path = tmp_path / "toy-log"
    path.mkdir()
    return path


@pytest.fixture
def hold_dir(tmp_path: Path) -> Path:
    path = tmp_path / "holds"
    path.mkdir()
    return path


async def held(store: JobStore, hold_dir: Path, job_id: int) -> Job:
    """Wait until a run of the job holds after its first checkpoint, and that checkpoint is stored."""

    async def holding() -> Job | None:
        job = await store.get_job(job_id)
        assert not job.finished, f"job #{job_id} ended ({job.status}) before it was held"
        return job if held_files(hold_dir, job_id) and job.has_checkpoint else None

    return await wait_until(holding, 60, f"job #{job_id} to be held after its first checkpoint")


@pytest.fixture
async def pools(
    db_url: str, log_dir: Path, hold_dir: Path, tmp_path: Path
) -> AsyncIterator[Callable[..., PoolProcess]]:
    started: list[PoolProcess] = []

    def start(work: int = 20, extra: list[str] | None = None, held: bool = False) -> PoolProcess:
        log_file = tmp_path / f"pool-{len(started)}.log"
        pool = PoolProcess(db_url, log_dir, log_file, work, extra or [], hold_dir if held else None)
        started.append(pool)
        return pool

    yield start
    for pool in started:
        await pool.stop(within=40)


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[JobStore]:
    engine = create_engine(db_url)
    yield JobStore(engine)
    await engine.dispose()


async def enqueue(store: JobStore, **fields: Any) -> int:
    params = {"artist": "the beatles", "genres": ["rock"], "seconds": 1.0, "seed": 11}
    params.update(fields.pop("params", {}))
    values: dict[str, Any] = {
        "kind": JobKind.GENERATE,
        "model": "5b_lyrics",
        "params": params,
        "channel_id": CHANNEL,
        "user_id": USER,
    }
    values.update(fields)
    return await store.enqueue(**values)


finished = job_finished


def as_claimed(job: Job) -> ClaimedJob:
    values = {field.name: getattr(job, field.name) for field in dataclasses.fields(Job)}
    return ClaimedJob(**values, checkpoint=None)


async def assert_matches_reference(store: JobStore, job_id: int, parent_id: int | None = None) -> None:
    job = await store.get_job(job_id)
    assert job.status is JobStatus.SUCCEEDED, job.error
    parent = None if parent_id is None else await store.get_sample(parent_id)
    expected = reference_codes(JobTask(job=as_claimed(job), parent=parent))
    for info in await store.samples_for_job(job_id):
        sample = await store.get_sample(info.id)
        assert sample.levels == tuple(sorted(expected))
        for level, codes in expected.items():
            stored = np.frombuffer(sample.codes(level) or b"", dtype="<i2")
            np.testing.assert_array_equal(stored, codes[info.index])
        audio = decode_audio(sample.audio, silence_threshold_db=None)
        assert abs(audio.size / 44_100 - sample.duration_seconds) < 0.05 and np.abs(audio).max() > 0.1


def window_events(log_dir: Path, job_id: int) -> list[dict[str, Any]]:
    return [event for event in read_log(log_dir, job_id) if event["event"] == "window"]


@pytest.mark.slow
async def test_end_to_end_generate_preview_upsample_and_continue(
    pools: Any, store: JobStore, log_dir: Path
) -> None:
    pool = pools()
    preview = await enqueue(store, params={"n_samples": 2, "levels": "top"})
    full = await enqueue(store, params={"levels": "all", "seed": 3})
    await finished(store, preview)
    await finished(store, full)
    await assert_matches_reference(store, preview)
    await assert_matches_reference(store, full)

    parent = (await store.samples_for_job(preview))[1].id
    upsample = await enqueue(store, kind=JobKind.UPSAMPLE, parent_sample_id=parent)
    extend = await enqueue(store, kind=JobKind.CONTINUE, parent_sample_id=parent, params={"seconds": 0.5})
    await finished(store, upsample)
    await finished(store, extend)
    await assert_matches_reference(store, upsample, parent)
    await assert_matches_reference(store, extend, parent)
    extended = await store.get_sample((await store.samples_for_job(extend))[0].id)
    assert extended.duration_seconds == pytest.approx(1.5)

    assert await pool.terminate() == 0


@pytest.mark.slow
async def test_kill_9_mid_job_restarts_the_worker_and_resumes_from_the_checkpoint_at_once(
    pools: Any, store: JobStore, log_dir: Path, hold_dir: Path
) -> None:
    # The lease outlasts the test: only recognising its dead predecessor lets the new worker resume.
    pool = pools(held=True, extra=["--lease-seconds", "600", "--requeue-seconds", "600"])
    job_id = await enqueue(store, params={"seconds": 3.0})
    owner = (await held(store, hold_dir, job_id)).lease_owner
    assert owner is not None
    killed = pid_of(owner)
    os.kill(killed, signal.SIGKILL)
    release_file(hold_dir, job_id).touch()  # the next run goes straight through

    done = await finished(store, job_id, within=90)
    assert done.status is JobStatus.SUCCEEDED and done.attempts == 1  # the lost lease counted once
    assert f"{owner} exited holding a job; resuming it now" in pool.log()
    await assert_matches_reference(store, job_id)
    starts = [event for event in read_log(log_dir, job_id) if event["event"] == "start"]
    assert starts[0]["pid"] == killed and starts[-1]["pid"] != killed
    total = round(3.0 / SECONDS_PER_WINDOW)
    resampled = [event for event in window_events(log_dir, job_id) if event["pid"] != killed]
    assert 0 < len(resampled) < total
    covered = {event["start"] for event in window_events(log_dir, job_id)}
    assert covered == {w * TOKENS_PER_WINDOW for w in range(total)}
    assert "was killed by SIGKILL" in pool.log()


@pytest.mark.slow
@pytest.mark.postgres
async def test_two_pools_share_one_queue_without_running_a_job_twice(
    pools: Any, store: JobStore, log_dir: Path, db_url: str, hold_dir: Path
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("two machines share a queue through Postgres")
    first, second = pools(held=True), pools(held=True)
    await first.ready()
    await second.ready()
    jobs = [await enqueue(store, params={"seed": seed, "seconds": 0.5}) for seed in range(12)]

    async def two_held() -> bool:  # one worker each, one job at a time: each pool holds one
        return sum(bool(held_files(hold_dir, job_id)) for job_id in jobs) == 2

    await wait_until(two_held, 60, "each pool to hold a job")
    for job_id in jobs:
        release_file(hold_dir, job_id).touch()
    for job_id in jobs:
        await finished(store, job_id)

    pids = set()
    for job_id in jobs:
        await assert_matches_reference(store, job_id)
        events = read_log(log_dir, job_id)
        assert [event["event"] for event in events].count("start") == 1, events
        assert len(window_events(log_dir, job_id)) == 2
        pids.add(events[0]["pid"])
        assert (await store.get_job(job_id)).attempts == 0
    assert len(pids) == 2, "both pools should have taken jobs"
    assert await first.terminate() == 0 and await second.terminate() == 0


@pytest.mark.slow
async def test_a_hangup_stops_a_worker_and_its_pool_as_gracefully_as_sigterm(
    pools: Any, store: JobStore, hold_dir: Path
) -> None:
    """A closed terminal or ssh session sends SIGHUP to the pool and its workers: each releases its
    job with its checkpoint, costing no attempt (by default SIGHUP killed them where they stood, and
    the job waited for a new worker to take it over at the cost of an attempt)."""
    pool = pools(held=True, extra=["--lease-seconds", "600", "--requeue-seconds", "600"])
    job_id = await enqueue(store, params={"seconds": 5.0})
    owner = (await held(store, hold_dir, job_id)).lease_owner
    assert owner is not None
    os.kill(pid_of(owner), signal.SIGHUP)

    async def released() -> Job | None:
        job = await store.get_job(job_id)
        return job if job.status is JobStatus.QUEUED else None

    job = await wait_until(released, 30, "the worker to release its job")
    assert job.attempts == 0 and job.has_checkpoint and job.lease_owner is None
    assert "SIGHUP received: stopping after releasing job" in pool.log()
    # Its only worker stopped on a signal of its own, so is not restarted: a pool with none to serve
    # stops too, rather than look healthy with nothing running (a group signal stops both at once).
    assert await asyncio.to_thread(pool.process.wait, 60) == EXIT_OK
    assert "worker on cpu stopped on a stop signal (exit 0); not restarting it" in pool.log()
    assert "every worker stopped on a stop signal of its own; the pool stops too" in pool.log()


@pytest.mark.slow
async def test_sigterm_releases_the_running_job_and_the_next_start_finishes_it(
    pools: Any, store: JobStore, log_dir: Path, hold_dir: Path
) -> None:
    pool = pools(held=True)
    job_id = await enqueue(store, params={"seconds": 5.0})
    await held(store, hold_dir, job_id)

    assert await pool.terminate() == 0
    released = await store.get_job(job_id)
    assert released.status is JobStatus.QUEUED and released.attempts == 0
    assert released.has_checkpoint and released.lease_owner is None and released.error is None
    assert "released" in pool.log()

    release_file(hold_dir, job_id).touch()
    pools()
    done = await finished(store, job_id)
    assert done.attempts == 0
    await assert_matches_reference(store, job_id)
    total = round(5.0 / SECONDS_PER_WINDOW)
    assert len(window_events(log_dir, job_id)) == total  # a graceful stop re-samples nothing


async def test_poison_job_fails_and_the_pool_keeps_serving(pools: Any, store: JobStore) -> None:
    pools()
    poison = await enqueue(store, params={"artist": "!crash"}, max_attempts=2)
    good = await enqueue(store)
    assert (await finished(store, good)).status is JobStatus.SUCCEEDED
    failed = await finished(store, poison)
    assert failed.status is JobStatus.FAILED and failed.attempts == 2
    assert "RuntimeError: toy runner crashed on purpose" in (failed.error or "")


async def test_workers_log_at_the_pools_level_and_format(pools: Callable[..., PoolProcess]) -> None:
    pool = pools(extra=["-v", "--log-format", "json"])
    await pool.ready()
    assert await pool.terminate() == EXIT_OK
    entries = [json.loads(line) for line in pool.log().splitlines() if line.startswith("{")]
    assert len(entries) == len(pool.log().splitlines()), pool.log()  # every line is JSON
    worker_lines = [e for e in entries if e.get("process", "").startswith("worker cpu pid ")]
    assert any(e["level"] == "DEBUG" and "timings" in e["message"] for e in worker_lines), entries
    assert not [e for e in entries if e["logger"].startswith(("aiosqlite", "alembic"))]


async def test_a_bad_runner_path_stops_the_pool_with_a_config_error(tmp_path: Path) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [
            *(sys.executable, "-m", "sampler.worker.pool", "--devices", "cpu"),
            *("--database-url", f"sqlite+aiosqlite:///{tmp_path}/x.db"),
            *("--runner", "tests.sampler.worker.toy_runner:no_such_factory"),
        ],
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == EXIT_CONFIG
    assert "has no function 'no_such_factory'" in result.stderr


def test_bad_arguments_are_reported_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--database-url", "sqlite:///x.db", "--runner", "no_colon_here"]) == 2
    assert "must look like 'package.module:function'" in capsys.readouterr().err
    assert main(["--database-url", "sqlite:///x.db", "--runner", RUNNER, "--devices", "gpu0"]) == 2
    assert "Unknown device 'gpu0'" in capsys.readouterr().err
    assert main(["--database-url", "sqlite:///x.db", "--runner", "nowhere_at_all:make"]) == 2
    assert "there is no module 'nowhere_at_all'" in capsys.readouterr().err


def test_device_specs() -> None:
    assert DeviceSpec("cuda:1").index == 1 and DeviceSpec("cpu").index is None
    with pytest.raises(DeviceError, match="use 'cpu' or 'cuda:N'"):
        DeviceSpec("cuda")
    with pytest.raises(RunnerFactoryError):
        from sampler.worker.contract import split_factory_path

        split_factory_path("module:")


def test_devices_from_setting() -> None:
    import torch

    assert devices_from_setting([]) == [DeviceSpec.cpu()]
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    expected = [DeviceSpec.cuda(i) for i in range(visible)] or [DeviceSpec.cpu()]
    assert devices_from_setting(None) == expected
    hint = r" \(this machine shows [^)]+\); set JUKEBOT_GPUS to indices that exist, 'auto' or 'cpu'\.$"
    with pytest.raises(DeviceError, match=r"^GPU 99 is not visible" + hint):
        devices_from_setting([99])
    with pytest.raises(DeviceError, match=r"^GPUs 98, 99 are not visible" + hint):
        devices_from_setting([98, 99])
    if visible:
        assert devices_from_setting(None, require_gpu=True) == expected
    else:  # a GPU host whose CUDA does not work: no CPU worker that would hold jobs for hours
        with pytest.raises(
            DeviceError, match=r"JUKEBOT_GPUS=all, but torch .* sees no CUDA GPU here"
        ) as said:
            devices_from_setting(None, require_gpu=True)
        if (
            torch.version.cuda is None
        ):  # (this machine's build) it was "…new enough for CUDA none: a CPU-only…"
            assert "it is a CPU-only build: install a CUDA build" in str(said.value)
            assert "CUDA none" not in str(said.value)


def _gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie waiting for its new parent to reap it counts)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


@pytest.mark.slow
async def test_a_worker_whose_pool_is_killed_releases_its_job_and_exits(
    pools: Any, store: JobStore, log_dir: Path, hold_dir: Path
) -> None:
    pool = pools(held=True)
    job_id = await enqueue(store, params={"seconds": 5.0})
    owner = (await held(store, hold_dir, job_id)).lease_owner
    assert owner is not None
    pool.process.kill()  # no chance to stop its workers: the orphan must notice by itself

    async def released() -> Job | None:
        job = await store.get_job(job_id)
        return job if job.status is JobStatus.QUEUED else None

    job = await wait_until(released, 30, "the orphaned worker to release its job")
    assert job.attempts == 0 and job.has_checkpoint and job.lease_owner is None

    async def exited() -> bool:
        return _gone(pid_of(owner))

    await wait_until(exited, 30, "the orphaned worker to exit")
