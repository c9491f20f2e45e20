"""The worker in-process: a real store (SQLite and Postgres), the toy runner in its thread."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

import sampler.worker.runtime
from sampler.audio import decode_audio
from sampler.jukebox.registry import MODELS
from sampler.model_files import model_path
from sampler.worker.contract import DeviceSpec, JobInterrupted, JobTask, ProgressReporter, StopCheck
from sampler.worker.runtime import (
    JobOutcome,
    Worker,
    WorkerConfig,
    WorkerConfigError,
    make_worker_id,
    pid_of,
    predecessor_is_gone,
)
from storage import JobKind, JobStatus, JobStore, create_engine
from storage.migrate import upgrade_to_head
from storage.records import ClaimedJob
from storage.store import workers
from tests.holding import EventGate, HoldingRunner
from tests.sampler.worker.toy_runner import (
    SECONDS_PER_WINDOW,
    TOKENS_PER_WINDOW,
    ToyRunner,
    read_log,
    reference_codes,
)
from tests.throwaway_postgres import ThrowawayPostgres
from tests.waiting import wait_until

USER = 333_333_333_333_333_333
CHANNEL = 222_222_222_222_222_222
FAST = WorkerConfig(
    lease_seconds=30.0,
    poll_seconds=0.05,
    max_poll_seconds=0.2,
    progress_seconds=0.1,
    cancel_poll_seconds=0.1,
    requeue_seconds=0.5,
)

EVERY_CHECKPOINT = dataclasses.replace(FAST, checkpoint_seconds=0)


@pytest.fixture
def toy_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    log_dir = tmp_path / "toy-log"
    log_dir.mkdir()
    monkeypatch.setenv("JUKEBOT_TOY_LOG_DIR", str(log_dir))
    monkeypatch.setenv("JUKEBOT_TOY_WORK", "20")
    monkeypatch.delenv("JUKEBOT_TOY_MODEL_DIR", raising=False)
    monkeypatch.delenv("JUKEBOT_TOY_MODELS", raising=False)
    return log_dir


@pytest.fixture
def live_store(engine: AsyncEngine) -> JobStore:
    """A store on the wall clock: leases really expire."""
    return JobStore(engine)


@pytest.fixture
def make_worker(live_store: JobStore, toy_env: Path) -> Iterator[Any]:
    workers: list[Worker] = []

    def make(config: WorkerConfig = FAST, store: JobStore | None = None) -> Worker:
        worker = Worker(store or live_store, ToyRunner(DeviceSpec.cpu()), DeviceSpec.cpu(), config=config)
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.close()


class StoreWithCheckpointHook(JobStore):
    """Runs `hook` once, right after the first checkpoint is stored: a test acts mid-job at a known
    point instead of racing a fast toy job to its end. With `EVERY_CHECKPOINT` the runner waits
    for that store before its second window ends, so the job is still running when the hook acts."""

    def __init__(self, engine: AsyncEngine, hook: Callable[[], Awaitable[None] | None]) -> None:
        super().__init__(engine)
        self._hook: Callable[[], Awaitable[None] | None] | None = hook

    async def save_checkpoint(self, job_id: int, worker_id: str, checkpoint: bytes) -> None:
        await super().save_checkpoint(job_id, worker_id, checkpoint)
        hook, self._hook = self._hook, None
        if hook is not None:
            result = hook()
            if result is not None:
                await result


async def enqueue(store: JobStore, **fields: Any) -> int:
    params = {"artist": "the beatles", "genres": ["rock"], "seconds": 1.0, "seed": 7}
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


async def claim(store: JobStore, worker: Worker) -> Any:
    job = await store.claim(worker.worker_id, worker.runner.models, worker.config.lease_seconds)
    assert job is not None
    return job


@pytest.fixture
async def serving(make_worker: Any) -> AsyncIterator[Any]:
    """Start `worker.serve` in the background; stopped (and awaited) at teardown."""
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    def start(worker: Worker) -> asyncio.Event:
        stop = asyncio.Event()
        running.append((stop, asyncio.create_task(worker.serve(stop))))
        return stop

    yield start
    for stop, task in running:
        stop.set()
        await asyncio.wait_for(task, 30)


async def assert_sampled_once_and_stored(store: JobStore, claimed: ClaimedJob, toy_env: Path) -> None:
    """The toy job of 2 s succeeded on its first attempt, sampled in one unbroken run (each window once),
    and its stored codes are the reference's: what riding out a database outage must leave."""
    job = await store.get_job(claimed.id)
    assert job.status is JobStatus.SUCCEEDED and job.attempts == 0 and job.error is None
    sample = await store.get_sample((await store.samples_for_job(claimed.id))[0].id)
    np.testing.assert_array_equal(codes_of(sample, 2), reference_codes(JobTask(job=claimed))[2][0])
    log = read_log(toy_env, claimed.id)
    assert [event["event"] for event in log].count("start") == 1  # one run, never restarted
    windows = [event["start"] for event in log if event["event"] == "window"]
    assert windows == [w * TOKENS_PER_WINDOW for w in range(round(2.0 / SECONDS_PER_WINDOW))]


def codes_of(sample: Any, level: int) -> np.ndarray:
    data = sample.codes(level)
    assert data is not None, f"level {level} missing"
    return np.frombuffer(data, dtype="<i2")


async def test_generate_job_produces_codes_and_playable_audio(
    live_store: JobStore, make_worker: Any, toy_env: Path
) -> None:
    worker = make_worker()
    job_id = await enqueue(live_store, params={"n_samples": 2, "levels": "all"})
    job = await claim(live_store, worker)

    assert await worker.run_job(job) is JobOutcome.SUCCEEDED

    finished = await live_store.get_job(job_id)
    assert finished.status is JobStatus.SUCCEEDED and finished.progress == 1.0
    expected = reference_codes(JobTask(job=job))
    infos = await live_store.samples_for_job(job_id)
    assert [info.index for info in infos] == [0, 1]
    for info in infos:
        sample = await live_store.get_sample(info.id)
        assert sample.levels == (0, 1, 2) and sample.seed == 7 + info.index
        for level in (0, 1, 2):
            np.testing.assert_array_equal(codes_of(sample, level), expected[level][info.index])
        audio = decode_audio(sample.audio, silence_threshold_db=None)
        assert sample.audio_format == "ogg"
        assert abs(audio.size / 44_100 - 1.0) < 0.05 and np.abs(audio).max() > 0.1
    windows = [event for event in read_log(toy_env, job_id) if event["event"] == "window"]
    assert len(windows) == 3 * round(1.0 / SECONDS_PER_WINDOW)  # three levels, nothing sampled twice


async def test_shutdown_releases_the_job_and_a_later_run_resumes_to_the_same_codes(
    engine: AsyncEngine, make_worker: Any, toy_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUKEBOT_TOY_WORK", "400")  # ~40 ms a window
    stop = asyncio.Event()
    live_store = StoreWithCheckpointHook(engine, hook=stop.set)  # shut down once a window is stored
    worker = make_worker(EVERY_CHECKPOINT, live_store)
    job_id = await enqueue(live_store, params={"seconds": 2.0})
    job = await claim(live_store, worker)

    assert await worker.run_job(job, stop) is JobOutcome.RELEASED
    released = await live_store.get_job(job_id)
    assert released.status is JobStatus.QUEUED and released.attempts == 0 and released.has_checkpoint
    assert released.lease_owner is None and released.stage == "sampling" and released.level == 2
    assert released.tokens_done and 0 < released.tokens_done < released.tokens_total  # type: ignore[operator]
    assert released.progress > 0 and released.tokens_per_second and released.eta_at is not None

    resumed = await claim(live_store, make_worker(store=live_store))
    assert resumed.checkpoint is not None
    assert await make_worker(store=live_store).run_job(resumed) is JobOutcome.SUCCEEDED

    sample = await live_store.get_sample((await live_store.samples_for_job(job_id))[0].id)
    np.testing.assert_array_equal(codes_of(sample, 2), reference_codes(JobTask(job=job))[2][0])
    log = read_log(toy_env, job_id)
    starts = [event for event in log if event["event"] == "start"]
    assert len(starts) == 2 and starts[1]["resumed_tokens"] > 0
    windows = [event["start"] for event in log if event["event"] == "window"]
    total = round(2.0 / SECONDS_PER_WINDOW)
    assert sorted(windows) == [w * TOKENS_PER_WINDOW for w in range(total)]  # each window exactly once


async def test_cancel_stops_inside_a_window_within_seconds(
    live_store: JobStore, toy_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUKEBOT_TOY_WORK", "20000")  # a window takes seconds
    gate = EventGate(at=("progress 1",))  # held after the first chunk of the first window
    worker = Worker(
        live_store, HoldingRunner(ToyRunner(DeviceSpec.cpu()), gate), DeviceSpec.cpu(), config=FAST
    )
    job_id = await enqueue(live_store, params={"seconds": 10.0})
    running = asyncio.create_task(worker.run_job(await claim(live_store, worker)))
    assert await asyncio.to_thread(gate.held["progress 1"].wait, 60), "the job never reported progress"
    assert not [event for event in read_log(toy_env, job_id) if event["event"] == "window"]

    asked = time.monotonic()
    assert await live_store.request_cancel(job_id, USER) is JobStatus.CANCELLING
    assert await asyncio.wait_for(running, 10) is JobOutcome.CANCELLED
    assert time.monotonic() - asked < 5
    assert (await live_store.get_job(job_id)).status is JobStatus.CANCELLED
    assert not [event for event in read_log(toy_env, job_id) if event["event"] == "window"]
    worker.close()


async def _job_if(store: JobStore, job_id: int, predicate: Any) -> Any:
    job = await store.get_job(job_id)
    return job if predicate(job) else None


async def test_model_files_gone_after_the_claim_send_the_job_back_for_another_worker(
    live_store: JobStore, make_worker: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    model_dir = tmp_path / "models"
    for name in MODELS["5b_lyrics"].checkpoints:  # 5b_lyrics is there; 1b_lyrics is not
        model_path(model_dir, name).parent.mkdir(parents=True, exist_ok=True)
        model_path(model_dir, name).write_bytes(b"x")
    monkeypatch.setenv("JUKEBOT_TOY_MODEL_DIR", str(model_dir))
    worker = make_worker()
    assert worker.runner.models == {"5b_lyrics"}
    present = await enqueue(live_store)
    missing = await enqueue(live_store, model="1b_lyrics")

    assert await worker.run_job(await claim(live_store, worker)) is JobOutcome.SUCCEEDED
    assert await live_store.claim(worker.worker_id, worker.runner.models, 10) is None  # not claimed here
    # as if its files were deleted between a claim and the load
    raced = await live_store.claim(worker.worker_id, ["1b_lyrics"], 10)
    assert raced is not None and await worker.run_job(raced) is JobOutcome.RELEASED
    back = await live_store.get_job(missing)
    assert back.status is JobStatus.QUEUED and back.attempts == 0 and back.error is None
    assert (await live_store.get_job(present)).status is JobStatus.SUCCEEDED


async def test_a_worker_serves_only_models_complete_on_disk_and_takes_up_new_ones(
    live_store: JobStore,
    make_worker: Any,
    serving: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    monkeypatch.setenv("JUKEBOT_TOY_MODEL_DIR", str(model_dir))
    worker = make_worker()
    job_id = await enqueue(live_store, model="1b_lyrics")
    caplog.set_level("INFO", logger="sampler.worker.runtime")
    serving(worker)

    async def advertised() -> list[Any] | None:
        async with live_store.engine.connect() as connection:
            rows = (await connection.execute(workers.select())).all()
        return [(row.worker_id, row.models) for row in rows] or None

    assert await wait_until(advertised, what="the worker's row") == [(worker.worker_id, [])]
    assert "serves no model: its runner has none it can run now" in caplog.text
    assert "serving models" not in caplog.text
    assert await live_store.served_models() == frozenset()
    assert (await live_store.get_job(job_id)).status is JobStatus.QUEUED  # never claimed, never failed

    for name in MODELS["1b_lyrics"].checkpoints:  # the download finishes while the worker runs
        model_path(model_dir, name).parent.mkdir(parents=True, exist_ok=True)
        model_path(model_dir, name).write_bytes(b"x")

    async def succeeded() -> bool:
        return (await live_store.get_job(job_id)).status is JobStatus.SUCCEEDED

    await wait_until(succeeded, what="the job to run once its model is complete")
    assert await live_store.served_models() == {"1b_lyrics"}
    assert f"worker {worker.worker_id} serving models 1b_lyrics" in caplog.text


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"seconds": -1}, "seconds: Input should be greater than 0"),
        ({"colour": "red"}, "colour"),
        ({"artist": "!oom"}, "Out of memory on cpu (toy runner). Lower n_samples"),
    ],
)
async def test_unfixable_failures_are_final_and_specific(
    live_store: JobStore, make_worker: Any, params: dict[str, Any], expected: str
) -> None:
    worker = make_worker()
    job_id = await enqueue(live_store, params=params, max_attempts=5)
    assert await worker.run_job(await claim(live_store, worker)) is JobOutcome.FAILED
    job = await live_store.get_job(job_id)
    assert job.status is JobStatus.FAILED and job.attempts == 0
    assert expected in (job.error or "")


async def test_poison_job_fails_after_max_attempts_and_the_worker_serves_the_next(
    live_store: JobStore, make_worker: Any, serving: Any
) -> None:
    poison = await enqueue(live_store, params={"artist": "!crash"}, max_attempts=2)
    good = await enqueue(live_store)
    worker = make_worker()
    serving(worker)

    done = await wait_until(
        lambda: _job_if(live_store, good, lambda job: job.finished), what="the good job to finish"
    )
    assert done.status is JobStatus.SUCCEEDED
    failed = await live_store.get_job(poison)
    assert failed.status is JobStatus.FAILED and failed.attempts == 2
    assert failed.error == (
        "The sampler crashed on all 2 attempts; the last error was: RuntimeError: toy runner crashed on "
        "purpose"
    )


async def test_a_crash_keeps_the_error_and_requeues_with_one_more_attempt(
    live_store: JobStore, make_worker: Any
) -> None:
    worker = make_worker()
    job_id = await enqueue(live_store, params={"artist": "!crash"}, max_attempts=3)
    assert await worker.run_job(await claim(live_store, worker)) is JobOutcome.RETRYING
    job = await live_store.get_job(job_id)
    assert job.status is JobStatus.QUEUED and job.attempts == 1 and job.lease_owner is None
    assert (
        job.error
        == "Attempt 1 of 3 crashed (RuntimeError: toy runner crashed on purpose); it will be retried."
    )


async def test_a_crash_while_the_user_cancels_ends_cancelled_without_an_attempt(
    live_store: JobStore, make_worker: Any
) -> None:
    worker = make_worker()
    job_id = await enqueue(live_store, params={"artist": "!crash"}, max_attempts=3)
    claimed = await claim(live_store, worker)
    assert await live_store.request_cancel(job_id, USER) is JobStatus.CANCELLING
    assert await worker.run_job(claimed) is JobOutcome.CANCELLED
    job = await live_store.get_job(job_id)
    assert job.status is JobStatus.CANCELLED and job.attempts == 0 and job.error is None


def test_the_worker_changes_jobs_only_through_the_store_api() -> None:
    """No SQL in the worker: every transition is a JobStore method (one conditional statement each)."""
    tree = ast.parse(Path(sampler.worker.runtime.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    assert not {name for name in imported if name and name.split(".")[0] == "sqlalchemy"}
    assert "storage.store" not in imported and "storage.models" not in imported


async def test_lost_lease_stops_the_run_without_writing_results(
    engine: AsyncEngine, make_worker: Any, toy_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUKEBOT_TOY_WORK", "400")

    async def lease_declared_dead() -> None:
        # Another worker's janitor decides this lease is dead (as if our heartbeats had stopped).
        lease_end = (await live_store.get_job(job_id)).lease_expires_at
        assert lease_end is not None
        after_lease = lease_end + timedelta(seconds=1)
        assert await live_store.requeue_expired(after_lease) == []  # seen: a lease more to renew it
        a_lease_after = after_lease + timedelta(days=1)
        assert await live_store.requeue_expired(a_lease_after) == [(job_id, JobStatus.QUEUED)]

    live_store = StoreWithCheckpointHook(engine, hook=lease_declared_dead)
    worker = make_worker(EVERY_CHECKPOINT, live_store)
    job_id = await enqueue(live_store, params={"seconds": 5.0})
    running = asyncio.create_task(worker.run_job(await claim(live_store, worker)))
    assert await asyncio.wait_for(running, 10) is JobOutcome.ABANDONED
    job = await live_store.get_job(job_id)
    assert job.status is JobStatus.QUEUED and job.attempts == 1 and job.lease_owner is None
    assert await live_store.samples_for_job(job_id) == []


async def test_progress_writes_are_throttled(
    engine: AsyncEngine, make_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    class CountingStore(JobStore):
        writes = 0

        async def report_progress(self, *args: Any, **kwargs: Any) -> None:
            CountingStore.writes += 1
            await super().report_progress(*args, **kwargs)

    store = CountingStore(engine)
    slow_progress = WorkerConfig(lease_seconds=30, poll_seconds=0.05, progress_seconds=60)
    worker = make_worker(slow_progress, store)
    job_id = await enqueue(store, params={"seconds": 2.0})
    assert await worker.run_job(await claim(store, worker)) is JobOutcome.SUCCEEDED
    # 8 windows x 4 chunks reported; one write happens at once, the rest wait out the 60 s throttle.
    assert CountingStore.writes == 1
    assert (await store.get_job(job_id)).status is JobStatus.SUCCEEDED


async def test_worker_only_claims_models_its_runner_serves(
    live_store: JobStore, make_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUKEBOT_TOY_MODELS", "1b_lyrics")
    worker = make_worker()
    await enqueue(live_store, model="5b_lyrics")
    assert await live_store.claim(worker.worker_id, worker.runner.models, 10) is None
    assert pid_of(worker.worker_id) > 0 and worker.worker_id.endswith("/cpu")


def test_a_lease_owner_is_gone_only_where_its_process_id_means_the_same_process() -> None:
    """Two machines cloned from one image (or two containers) can share a host name: a process id
    from the other says nothing here, so its lease must run out rather than be taken over."""
    me = make_worker_id(DeviceSpec.cpu())
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    here = me.rsplit("/", 2)[0]
    assert here.startswith(f"{socket.gethostname()}~")
    assert predecessor_is_gone(me, f"{here}/{exited.pid}/cpu")  # restarted here: resumed at once
    assert not predecessor_is_gone(me, f"{here}/{exited.pid}/cuda:0")  # another device's
    assert not predecessor_is_gone(me, f"{socket.gethostname()}~0000beef/{exited.pid}/cpu")  # a twin's
    assert not predecessor_is_gone(me, f"{socket.gethostname()}/{exited.pid}/cpu")  # an older worker's id
    assert not predecessor_is_gone(me, f"{here}/{os.getpid()}/cpu")  # running


class ScriptedCheckpoints:
    """A runner that hands over the checkpoints it is given at once, then keeps reporting progress
    (as a sampling loop does) until the worker stops it."""

    models = frozenset({"5b_lyrics"})

    def __init__(self, blobs: list[bytes]) -> None:
        self.blobs = blobs
        self.handed_over = threading.Event()

    def run(self, task: JobTask, report: ProgressReporter, should_stop: StopCheck) -> list[Any]:
        for blob in self.blobs:
            report.checkpoint(blob)
        self.handed_over.set()
        deadline = time.monotonic() + 30
        while should_stop() is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the test never stopped this run")
            report.progress("sampling", 2, 1, 1, 1, 2)
            threading.Event().wait(0.005)  # one "chunk of tokens"
        raise JobInterrupted("stopped")


async def test_fast_windows_store_the_first_checkpoint_and_the_newest_when_released(
    live_store: JobStore,
) -> None:
    runner = ScriptedCheckpoints([b"window 1", b"window 2", b"window 3"])
    worker = Worker(live_store, runner, DeviceSpec.cpu(), config=WorkerConfig(checkpoint_seconds=600))
    try:
        job_id = await enqueue(live_store)
        stop = asyncio.Event()
        running = asyncio.create_task(worker.run_job(await claim(live_store, worker), stop))
        await asyncio.to_thread(runner.handed_over.wait, 30)
        # The first is stored while sampling goes on; the next two came within 600 s of it: held back.
        stored = await wait_until(lambda: live_store.get_checkpoint(job_id), what="the first checkpoint")
        assert stored == b"window 1"
        stop.set()
        assert await asyncio.wait_for(running, 30) is JobOutcome.RELEASED
        job = await live_store.get_job(job_id)
        assert job.status is JobStatus.QUEUED and job.attempts == 0
        # Releasing stored the newest window: a stop loses none of the finished windows.
        assert await live_store.get_checkpoint(job_id) == b"window 3"
    finally:
        worker.close()


async def test_a_held_back_checkpoint_is_stored_once_its_time_comes_while_the_run_goes_on(
    live_store: JobStore,
) -> None:
    runner = ScriptedCheckpoints([b"window 1", b"window 2"])
    worker = Worker(live_store, runner, DeviceSpec.cpu(), config=WorkerConfig(checkpoint_seconds=0.2))
    try:
        job_id = await enqueue(live_store)
        stop = asyncio.Event()
        running = asyncio.create_task(worker.run_job(await claim(live_store, worker), stop))

        async def newest_stored_while_running() -> bool:
            job = await live_store.get_job(job_id)
            assert job.status is JobStatus.RUNNING, "the run ended before the held checkpoint was stored"
            return await live_store.get_checkpoint(job_id) == b"window 2"

        await wait_until(newest_stored_while_running, what="the held-back checkpoint")
        stop.set()
        assert await asyncio.wait_for(running, 30) is JobOutcome.RELEASED
    finally:
        worker.close()


@pytest.mark.parametrize("seconds", [-1.0, float("nan"), float("inf")])
def test_checkpoint_interval_must_be_zero_or_positive(seconds: float) -> None:
    with pytest.raises(WorkerConfigError, match="checkpoint_seconds"):
        WorkerConfig(checkpoint_seconds=seconds)
    assert WorkerConfig(checkpoint_seconds=0).checkpoint_seconds == 0


class CountingCheckpointStores(JobStore):
    """Counts checkpoint stores that failed (the database was away)."""

    failed_checkpoint_stores = 0

    async def save_checkpoint(self, job_id: int, worker_id: str, checkpoint: bytes) -> None:
        try:
            await super().save_checkpoint(job_id, worker_id, checkpoint)
        except Exception:
            self.failed_checkpoint_stores += 1
            raise


@pytest.fixture
def outage_postgres() -> Iterator[ThrowawayPostgres]:
    """A Postgres of this test's own, migrated, which the test stops and starts (an outage)."""
    cluster = ThrowawayPostgres()
    try:
        upgrade_to_head(cluster.url)
        yield cluster
    finally:
        cluster.destroy()


@pytest.mark.postgres
async def test_a_database_outage_mid_job_costs_no_attempt_and_changes_no_code(
    outage_postgres: ThrowawayPostgres, toy_env: Path
) -> None:
    engine = create_engine(outage_postgres.url)
    store = CountingCheckpointStores(engine)  # leases by the database's clock
    gate = EventGate(at=("checkpoint 1", "checkpoint 3"))
    config = dataclasses.replace(EVERY_CHECKPOINT, lease_seconds=60, retry_max_seconds=0.2)
    worker = Worker(store, HoldingRunner(ToyRunner(DeviceSpec.cpu()), gate), DeviceSpec.cpu(), config=config)
    try:
        job_id = await enqueue(store, params={"seconds": 2.0})
        claimed = await claim(store, worker)
        running = asyncio.create_task(worker.run_job(claimed))
        assert await asyncio.to_thread(gate.held["checkpoint 1"].wait, 60), "no first checkpoint"
        await wait_until(lambda: store.get_checkpoint(job_id), what="the first checkpoint stored")

        outage_postgres.stop()
        gate.release["checkpoint 1"].set()  # sampling goes on without a database

        async def still_running_past_the_old_retries() -> bool:
            assert not running.done(), f"the run ended during the outage: {running}"
            # three failed tries used to crash the run (and cost an attempt)
            return gate.held["checkpoint 3"].is_set() and store.failed_checkpoint_stores > 3

        await wait_until(still_running_past_the_old_retries, 60, "the job to sample on through the outage")
        outage_postgres.start()
        gate.release["checkpoint 3"].set()
        assert await asyncio.wait_for(running, 60) is JobOutcome.SUCCEEDED

        await assert_sampled_once_and_stored(store, claimed, toy_env)
    finally:
        worker.close()
        await engine.dispose()


class WritesHeldAfterOutage(JobStore):
    """The running worker's store: once `held`, its heartbeats and its job's end wait for `released`,
    so that the worker beside gets the first word after the outage, the moment that decides."""

    held = False

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.released = asyncio.Event()

    async def _after_release(self) -> None:
        if self.held:
            await self.released.wait()

    async def heartbeat(self, *args: Any, **kwargs: Any) -> Any:
        await self._after_release()
        return await super().heartbeat(*args, **kwargs)

    async def complete(self, *args: Any, **kwargs: Any) -> Any:
        await self._after_release()
        return await super().complete(*args, **kwargs)


class CountingClaims(JobStore):
    """The worker beside's store: counts its claims and recovery scans that the database answered."""

    answered = 0

    async def claim(self, *args: Any, **kwargs: Any) -> Any:
        job = await super().claim(*args, **kwargs)
        self.answered += 1
        return job

    async def requeue_expired(self, *args: Any, **kwargs: Any) -> Any:
        recovered = await super().requeue_expired(*args, **kwargs)
        self.answered += 1
        return recovered


@pytest.mark.postgres
async def test_an_outage_longer_than_the_lease_loses_no_work_to_a_worker_waiting_beside(
    outage_postgres: ThrowawayPostgres, toy_env: Path
) -> None:
    """A database away for longer than a lease, over the job's end: its worker stores the result once
    the database is back, and the idle worker beside it, which saw the outage too, neither takes the
    job over nor puts it back in the queue (which lost every window sampled meanwhile, and an
    attempt)."""
    lease = 4.0
    config = dataclasses.replace(EVERY_CHECKPOINT, lease_seconds=lease, retry_max_seconds=0.2)
    engines = [create_engine(outage_postgres.url) for _ in range(2)]
    store, beside_store = (
        WritesHeldAfterOutage(engines[0]),
        CountingClaims(engines[1]),
    )  # the database's clock
    gate = EventGate(at=("checkpoint 1",))
    worker = Worker(store, HoldingRunner(ToyRunner(DeviceSpec.cpu()), gate), DeviceSpec.cpu(), config=config)
    beside = Worker(
        beside_store,
        ToyRunner(DeviceSpec.cpu()),
        DeviceSpec.cpu(),
        config=config,
        worker_id="another-machine",
    )
    stop_beside = asyncio.Event()
    serving_beside: asyncio.Task[None] | None = None
    try:
        job_id = await enqueue(store, params={"seconds": 2.0})
        claimed = await claim(store, worker)
        serving_beside = asyncio.create_task(beside.serve(stop_beside))
        running = asyncio.create_task(worker.run_job(claimed))
        assert await asyncio.to_thread(gate.held["checkpoint 1"].wait, 60), "no first checkpoint"
        await wait_until(lambda: store.get_checkpoint(job_id), what="the first checkpoint stored")

        outage_postgres.stop()
        stopped_at = time.monotonic()
        gate.release["checkpoint 1"].set()  # sampling goes on to the end, without a database
        windows = round(2.0 / SECONDS_PER_WINDOW)

        async def outage_outlasted_the_lease_after_the_last_window() -> bool:
            sampled = [event for event in read_log(toy_env, job_id) if event["event"] == "window"]
            assert not running.done(), f"the run ended during the outage: {running}"
            return len(sampled) == windows and time.monotonic() - stopped_at > 2 * lease

        await wait_until(
            outage_outlasted_the_lease_after_the_last_window, 120, "the outage to outlast the lease"
        )
        assert beside.database_away, "the worker beside never saw the outage"
        store.held, answered = True, beside_store.answered
        outage_postgres.start()

        async def beside_had_its_say() -> bool:  # claims, and with `requeue_seconds` 0.5 a recovery scan
            return beside_store.answered >= answered + 10

        await wait_until(beside_had_its_say, 60, "the worker beside to claim and scan after the outage")
        store.released.set()
        assert await asyncio.wait_for(running, 60) is JobOutcome.SUCCEEDED
        await assert_sampled_once_and_stored(store, claimed, toy_env)
    finally:
        stop_beside.set()
        if serving_beside is not None:
            await asyncio.wait_for(serving_beside, 60)
        worker.close()
        beside.close()
        for engine in engines:
            await engine.dispose()
