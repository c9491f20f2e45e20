"""A sampler that hangs (a GPU that stopped answering, a deadlock) while its worker's loop goes on: the
heartbeats kept the lease forever, so the job never moved, a cancel was never seen, and the worker held
its GPU for nothing. A runner silent for `stall_seconds` now has its job recorded as crashed (back to the
queue from its last checkpoint, an attempt counted) and its process exits for the pool to start a fresh
one, without waiting for the thread that cannot end."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sampler.worker.contract import DeviceSpec, JobTask, ProgressReporter, Stage, StopCheck
from sampler.worker.runtime import EXIT_HUNG, RunnerHung, Worker, WorkerConfig
from storage import Job, JobKind, JobStatus, JobStore, NewSample
from tests.holding import NEVER_RELEASED_SECONDS
from tests.sampler.worker.test_pool import enqueue as enqueue_for_pool
from tests.waiting import wait_until
from tests.worker_processes import FAST_FLAGS, ServiceProcess, job_finished, pool_command, repo_environment

MODEL = "5b_lyrics"
# Far above the gaps between a busy runner's stop checks even on a loaded machine (0.5 s was crossed
# once in a review's runs), yet short enough for the hangs to be seen in seconds.
STALL_SECONDS = 2.0


class QuietRunner:
    """Reports once and stores a checkpoint, then does what the test says: `hang` (no report, no stop
    check, until `unhang` is set or the test ends), `busy` (stop checks only, for a while),
    `checkpoints` (a second one), or nothing; then returns one sample."""

    def __init__(self, mode: str, busy_seconds: float = 0.0) -> None:
        self.mode, self.busy_seconds = mode, busy_seconds
        self.hanging, self.unhang = threading.Event(), threading.Event()

    @property
    def models(self) -> frozenset[str]:
        return frozenset({MODEL})

    def run(self, task: JobTask, report: ProgressReporter, should_stop: StopCheck) -> list[NewSample]:
        report.progress(Stage.SAMPLING, 2, 1, 2, 8, 16)
        report.checkpoint(b"the first window")
        if self.mode == "hang":
            self.hanging.set()
            self.unhang.wait(NEVER_RELEASED_SECONDS)
            raise RuntimeError("came back after the test ended")
        if self.mode == "checkpoints":  # waits for the first to be stored before it sends this one
            report.checkpoint(b"the second window")
        if self.mode == "busy":  # quiet on progress, but asking whether to stop
            end = time.monotonic() + self.busy_seconds
            while time.monotonic() < end:
                assert should_stop() is None
                threading.Event().wait(0.02)
        return [NewSample(index=0, seed=1, duration_seconds=1.0, audio=b"OggS", audio_format="ogg")]


async def _enqueue(store: JobStore) -> int:
    params = {"artist": "the beatles", "genres": ["rock"], "seconds": 1.0, "seed": 7}
    return await store.enqueue(kind=JobKind.GENERATE, model=MODEL, params=params, channel_id=2, user_id=3)


def _worker(store: JobStore, runner: QuietRunner) -> Worker:
    # Every checkpoint sent as it comes: the runner then waits for the one before to be stored.
    config = WorkerConfig(
        poll_seconds=0.05, max_poll_seconds=0.1, stall_seconds=STALL_SECONDS, checkpoint_seconds=0
    )
    return Worker(store, runner, DeviceSpec.cpu(), config=config)


async def _stops_hung(store: JobStore, runner: QuietRunner, said: str) -> Job:
    """Serve one job with `runner`, which hangs: the worker stops with RunnerHung (saying `said`, a
    pattern) and closes without waiting for the hung thread; returns the job then."""
    worker = _worker(store, runner)
    job_id = await _enqueue(store)
    try:
        with pytest.raises(RunnerHung, match=said.replace("#", f"#{job_id}")):
            await asyncio.wait_for(worker.serve(asyncio.Event()), 60)
        assert runner.hanging.is_set() and worker.runner_hung
        closed = threading.Thread(target=worker.close)  # (joining the hung thread would never end)
        closed.start()
        closed.join(10)
        assert not closed.is_alive()
    finally:
        runner.unhang.set()
        worker.close()
    return await store.get_job(job_id)


async def _hangs(store: JobStore) -> Job:
    """A job whose sampler hangs goes back to the queue with an attempt counted; returns it."""
    job = await _stops_hung(store, QuietRunner("hang"), "job #")
    assert (job.status, job.attempts) == (JobStatus.QUEUED, 1)
    assert job.error is not None and "showed no sign of life" in job.error, job.error
    return job


async def test_a_hung_sampler_sends_its_job_back_and_stops_its_worker(sqlite_store: JobStore) -> None:
    job = await _hangs(sqlite_store)
    assert job.error is not None and "while sampling" in job.error and "its worker process stops" in job.error
    assert await sqlite_store.get_checkpoint(job.id) == b"the first window"  # resumes from there


class HangsWarmingUp(QuietRunner):
    def warm_up(self, alive: Callable[[], None]) -> None:
        self.hanging.set()
        self.unhang.wait(NEVER_RELEASED_SECONDS)


async def test_a_warm_up_that_hangs_stops_the_worker(sqlite_store: JobStore) -> None:
    """The worker says it serves its models before it warms up, so queued jobs waited for a worker that
    would never claim them; it now stops, its row gone, for its pool to start a fresh one."""
    job = await _stops_hung(
        sqlite_store,
        HangsWarmingUp("return"),
        rf"warming up its runner showed no sign of life for {STALL_SECONDS:g} s",
    )
    assert (job.status, job.attempts) == (JobStatus.QUEUED, 0)  # never claimed
    assert await sqlite_store.live_workers() == []  # the bot no longer counts on its models


class WarmsUpSlowlyInSteps(QuietRunner):
    """Three steps (a prior loaded, a decoder compiled…), each well within the stall limit, together
    well past it."""

    def warm_up(self, alive: Callable[[], None] = lambda: None) -> None:  # (called without before)
        for _ in range(3):
            threading.Event().wait(0.6 * STALL_SECONDS)  # a step's work
            alive()


async def test_a_warm_up_longer_than_the_stall_limit_in_steps_that_show_life_is_no_hang(
    sqlite_store: JobStore,
) -> None:
    """The whole warm-up was held to the stall limit, a job's quiet stretch: a worker that loads three
    priors from a slow disk (or compiles on a cold cache) was restarted over and over, never serving,
    under a lowered `--stall-seconds` (found by a review). Each of its steps is now a sign of life."""
    await _serves_a_job(sqlite_store, _worker(sqlite_store, WarmsUpSlowlyInSteps("return")))


async def _serves_a_job(store: JobStore, worker: Worker) -> None:
    """`worker` serves until a job enqueued now succeeds, without stopping as hung."""
    job_id = await _enqueue(store)
    stop = asyncio.Event()
    serving = asyncio.create_task(worker.serve(stop))
    try:

        async def succeeded() -> bool:
            assert not serving.done(), serving
            return (await store.get_job(job_id)).status == JobStatus.SUCCEEDED

        await wait_until(succeeded, 60, "the job to succeed")
    finally:
        stop.set()
        await asyncio.wait_for(serving, 60)
        worker.close()
    assert not worker.runner_hung


class TimesOutWarmingUp(QuietRunner):
    def warm_up(self, alive: Callable[[], None]) -> None:
        raise TimeoutError("the model mirror did not answer")  # the warm-up's own: no hang


async def test_a_warm_up_that_fails_with_a_time_out_of_its_own_is_no_hang(sqlite_store: JobStore) -> None:
    """The worker logs it and serves anyway, as for any warm-up error (`asyncio.wait_for` had taken it
    for the watch's own time-out)."""
    runner = TimesOutWarmingUp("return")
    worker = _worker(sqlite_store, runner)
    await _serves_a_job(sqlite_store, worker)


class CheckpointRefused(JobStore):
    """Every checkpoint refused, not for an outage: storing the last one fails on the way out of the run."""

    async def save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("checkpoint refused (not an outage)")


async def test_an_error_storing_the_last_checkpoint_does_not_hide_the_hang(sqlite_store: JobStore) -> None:
    """That error replaced the watchdog's cancel: the job was recorded as an ordinary crash, the worker
    claimed the next job behind the hung thread, and its process never exited (found by a review)."""
    await _hangs(CheckpointRefused(sqlite_store.engine))


async def _run_one(store: JobStore, runner: QuietRunner) -> JobStatus:
    """Claim and run one job to its end in a worker of its own; its status then."""
    worker = _worker(store, runner)
    job_id = await _enqueue(store)
    try:
        job = await store.claim(worker.worker_id, runner.models, worker.config.lease_seconds)
        assert job is not None and job.id == job_id
        await worker.run_job(job)
    finally:
        worker.close()
    assert not worker.runner_hung
    return (await store.get_job(job_id)).status


async def test_a_quiet_runner_that_asks_whether_to_stop_is_alive(sqlite_store: JobStore) -> None:
    """Stop checks are signs of life: a long stretch without progress reports is not a hang."""
    runner = QuietRunner("busy", busy_seconds=3 * STALL_SECONDS)
    assert await _run_one(sqlite_store, runner) == JobStatus.SUCCEEDED


class SlowToComplete(JobStore):
    """Storing the samples takes longer than the stall limit (a slow link)."""

    async def complete(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(2 * STALL_SECONDS)
        return await super().complete(*args, **kwargs)


async def test_a_slow_store_after_the_sampler_finished_is_no_hang(sqlite_store: JobStore) -> None:
    """The watchdog watches the sampler only: a worker waiting on the database is not hung."""
    store = SlowToComplete(sqlite_store.engine)
    assert await _run_one(store, QuietRunner("return")) == JobStatus.SUCCEEDED


class SlowToCheckpoint(JobStore):
    """Storing a checkpoint takes longer than the stall limit (a full disk being waited out)."""

    async def save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(2 * STALL_SECONDS)
        await super().save_checkpoint(*args, **kwargs)


async def test_a_sampler_waiting_for_its_checkpoint_to_be_stored_is_no_hang(sqlite_store: JobStore) -> None:
    store = SlowToCheckpoint(sqlite_store.engine)
    assert await _run_one(store, QuietRunner("checkpoints")) == JobStatus.SUCCEEDED


async def test_a_pool_restarts_a_worker_whose_sampler_hangs_and_the_job_finishes(
    tmp_path: Path, db_url: str, store: JobStore
) -> None:
    """Real processes: the toy sampler hangs in its first attempt; its worker exits without joining that
    thread (EXIT_HUNG), the pool starts a fresh one, which resumes the job from its checkpoint."""
    log_dir = tmp_path / "toy-log"
    log_dir.mkdir()
    job_id = await enqueue_for_pool(store, params={"artist": "!hang"})
    env = repo_environment({"JUKEBOT_TOY_LOG_DIR": str(log_dir)})
    assert "--stall-seconds" not in FAST_FLAGS
    pool = ServiceProcess(
        pool_command(str(db_url), "tests.sampler.worker.toy_runner:make_runner", ["--stall-seconds", "2"]),
        env,
        tmp_path / "pool.log",
    )
    try:
        job = await job_finished(store, job_id, within=120)
        log = pool.log()
    finally:
        await pool.stop()
    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 1), job
    events = [
        json.loads(line)["event"] for line in (log_dir / f"job-{job_id}.jsonl").read_text().splitlines()
    ]
    assert events.count("hang") == 1 and events[-1] == "done", events
    assert events.count("start") == 2, events
    assert f"job #{job_id}: the sampler showed no sign of life" in log, log
    assert f"worker on cpu exited ({EXIT_HUNG}: its sampler hung) after" in log, log
    assert log.count("started (pid") == 2, log


async def test_the_stall_limit_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from jukebot.settings import Settings

    monkeypatch.setenv("JUKEBOT_WORKER_STALL_SECONDS", "600")
    assert Settings(_env_file=None).worker_config().stall_seconds == 600  # type: ignore[call-arg]
    monkeypatch.setenv("JUKEBOT_WORKER_STALL_SECONDS", "5")
    with pytest.raises(ValueError, match="greater than or equal to 60"):
        Settings(_env_file=None)  # type: ignore[call-arg]


class NewsHeldBack(concurrent.futures.Future):  # type: ignore[type-arg]
    """A runner's future whose completion the event loop hears of only once the test says so: the window
    between the thread returning and the loop running the callback, held open."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Any] = []

    def add_done_callback(self, fn: Any) -> None:
        self.held.append(fn)


class HoldsBackTheRunnersNews(concurrent.futures.ThreadPoolExecutor):
    """Runs `runner.run` and `runner.warm_up` in a thread as the worker's executor does, but never tells
    the loop that they returned: everything else runs as usual."""

    def __init__(self, runner: QuietRunner) -> None:
        super().__init__(max_workers=1)
        self.runner = runner

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        if fn not in (self.runner.run, getattr(self.runner, "warm_up", None)):
            return super().submit(fn, *args, **kwargs)
        news = NewsHeldBack()
        ran = super().submit(fn, *args, **kwargs)

        def finished(ran: concurrent.futures.Future) -> None:  # type: ignore[type-arg]
            if ran.exception() is not None:
                news.set_exception(ran.exception())
            else:
                news.set_result(ran.result())

        ran.add_done_callback(finished)
        return news


async def test_a_runner_that_returned_just_as_the_watch_fired_keeps_its_samples(
    sqlite_store: JobStore,
) -> None:
    """The watch looked only at when the runner last showed life: a runner that returned its samples
    after a long silent stretch, in the moment before the loop heard of it, was taken for hung, its
    samples thrown away and its job sampled again from the last checkpoint. The watch now asks whether
    the runner has returned before it gives up on it."""
    runner = QuietRunner("return")
    worker = _worker(sqlite_store, runner)
    worker._executor.shutdown()
    worker._executor = HoldsBackTheRunnersNews(runner)
    job_id = await _enqueue(sqlite_store)
    try:
        job = await sqlite_store.claim(worker.worker_id, runner.models, worker.config.lease_seconds)
        assert job is not None and job.id == job_id
        await asyncio.wait_for(worker.run_job(job), 60)
    finally:
        worker.close()
    assert not worker.runner_hung
    job = await sqlite_store.get_job(job_id)
    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 0), job
    assert [s.index for s in await sqlite_store.samples_for_job(job_id)] == [0]


class WarmsUpQuietly(QuietRunner):
    def warm_up(self, alive: Callable[[], None]) -> None:
        pass


async def test_a_warm_up_that_ended_just_as_time_ran_out_is_no_hang(sqlite_store: JobStore) -> None:
    """Likewise for the warm-up: the worker stopped as hung though its runner had warmed up. It now
    serves, and its job (whose end the loop never hears of either) succeeds."""
    runner = WarmsUpQuietly("return")
    worker = _worker(sqlite_store, runner)
    worker._executor.shutdown()
    worker._executor = HoldsBackTheRunnersNews(runner)
    await _serves_a_job(sqlite_store, worker)


async def test_a_worker_whose_sampler_hung_exits_despite_an_error_on_the_way_out(
    db_url: str, store: JobStore
) -> None:
    """Only a clean EXIT_HUNG ended the process with os._exit: an error after the hang (closing the
    database engine failed) left Python's exit joining the hung runner thread, forever, a process the
    pool could not replace (found by a review)."""
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.sampler.worker.hanging_runner",
        db_url,
        env=repo_environment(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(worker.communicate(), 60)
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
    log = output.decode(errors="replace")
    assert worker.returncode == EXIT_HUNG, log
    assert "warming up its runner showed no sign of life" in log, log
    assert "closing the database's connections failed" in log, log  # said, not swallowed
