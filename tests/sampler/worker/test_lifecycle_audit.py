"""Process lifecycle at the edges an audit found: a pool that dies, or a stop signal that arrives,
while its worker still starts; `nohup` (SIGHUP ignored at start) honoured by the pool, its workers
and the bot.

Workers here build their runner through `gated_runner`: it notes that it started, then waits for the
test to open a gate, so a test acts while the worker is starting however fast or slow the machine."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from sampler.worker.contract import DeviceSpec, RunnerOptions
from sampler.worker.pool import run_pool
from sampler.worker.runtime import EXIT_OK, WorkerConfig, pid_of
from storage import JobStatus, JobStore, create_engine
from tests.holding import release_file
from tests.sampler.worker.test_pool import _gone, enqueue, held, hold_dir, log_dir, pools
from tests.sampler.worker.toy_runner import ToyRunner
from tests.waiting import wait_until
from tests.worker_processes import ServiceProcess, job_finished, pool_command, repo_environment

__all__ = ["hold_dir", "log_dir", "pools"]  # fixtures

GATE_VARIABLE = "JUKEBOT_AUDIT_GATE_DIR"
GATED_RUNNER = "tests.sampler.worker.test_lifecycle_audit:gated_runner"


def gated_runner(device: DeviceSpec, options: RunnerOptions | None = None) -> ToyRunner:
    """A runner factory that writes `building-<pid>`, then waits (bounded) for the file `open`."""
    gate = Path(os.environ[GATE_VARIABLE])
    (gate / f"building-{os.getpid()}").touch()
    deadline = time.monotonic() + 60
    while not (gate / "open").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return ToyRunner(device)


@pytest.fixture
def gate(tmp_path: Path) -> Path:
    path = tmp_path / "gate"
    path.mkdir()
    return path


def building(gate: Path) -> int | None:
    """The pid of a worker that is building its runner, if one is."""
    found = sorted(gate.glob("building-*"))
    return int(found[0].name.split("-")[1]) if found else None


def started_pids(log: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"worker on cpu started \(pid (\d+)\)", log)]


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[JobStore]:
    engine = create_engine(db_url)
    yield JobStore(engine)
    await engine.dispose()


# ----------------------------------------------------------------------------- pool gone at start


@pytest.mark.slow
async def test_a_worker_whose_pool_dies_while_it_starts_exits_without_claiming(
    db_url: str, store: JobStore, log_dir: Path, gate: Path, tmp_path: Path
) -> None:
    """The worker is reparented before it looks at its parent: it must still know its pool is gone."""
    env = repo_environment({"JUKEBOT_TOY_LOG_DIR": str(log_dir), GATE_VARIABLE: str(gate)})
    pool = ServiceProcess(pool_command(db_url, GATED_RUNNER), env, tmp_path / "pool.log")
    try:

        async def worker_building() -> int | None:
            assert pool.process.poll() is None, pool.log()
            return building(gate)

        worker_pid = await wait_until(worker_building, 60, "the worker to build its runner")
        pool.process.kill()  # no chance to stop its worker
        await asyncio.to_thread(pool.process.wait, 30)
        job_id = await enqueue(store)
        (gate / "open").touch()

        async def worker_exited() -> bool:
            return _gone(worker_pid)

        try:
            await wait_until(worker_exited, 30, f"the orphaned worker {worker_pid} to exit")
        finally:
            if not _gone(worker_pid):
                os.kill(worker_pid, signal.SIGKILL)
        job = await store.get_job(job_id)
        assert job.status is JobStatus.QUEUED and job.attempts == 0 and job.lease_owner is None
        assert "is gone; stopping" in pool.log()
    finally:
        await pool.stop()


# ----------------------------------------------------------------------------- nohup


@pytest.mark.slow
async def test_a_nohup_pool_and_its_worker_outlive_the_sessions_hangup(
    db_url: str, store: JobStore, log_dir: Path, tmp_path: Path
) -> None:
    """`nohup jukebot worker &`, then logging out: the shell sends SIGHUP to the job's process group."""
    env = repo_environment({"JUKEBOT_TOY_LOG_DIR": str(log_dir)})
    log_file = tmp_path / "pool.log"
    process = _start_in_own_session(
        ["nohup", *pool_command(db_url, "tests.sampler.worker.toy_runner:make_runner")], env, log_file
    )
    try:

        async def serving() -> bool:
            assert process.poll() is None, log_file.read_text()
            return "serving models" in log_file.read_text()

        await wait_until(serving, 60, "the worker to serve")
        os.killpg(process.pid, signal.SIGHUP)
        # Still serving, with the same worker: a job enqueued after the hangup finishes.
        job = await job_finished(store, await enqueue(store))
        assert job.status is JobStatus.SUCCEEDED
        assert process.poll() is None
        log = log_file.read_text()
        assert "SIGHUP" not in log and len(started_pids(log)) == 1
        process.terminate()
        assert await asyncio.to_thread(process.wait, 30) == EXIT_OK
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        print(log_file.read_text()[-4000:])


def _start_in_own_session(command: list[str], env: dict[str, str], log_file: Path) -> subprocess.Popen[bytes]:
    with open(log_file, "ab") as output:
        return subprocess.Popen(
            command,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, like a shell's job
        )


async def test_the_bot_leaves_an_ignored_sighup_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """`nohup jukebot run &`: the bot must not install a SIGHUP handler either."""
    from bot import bot as bot_module

    started = asyncio.Event()

    class StubBot:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.closed = asyncio.Event()
            self.must_stop = asyncio.Event()
            self.stop_reason = None

        async def __aenter__(self) -> StubBot:
            return self

        async def __aexit__(self, *exc: object) -> None:
            return None

        async def start(self, token: str) -> None:
            started.set()
            await self.closed.wait()

        async def close(self) -> None:
            self.closed.set()

    monkeypatch.setattr(bot_module, "JukeBot", StubBot)
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        running = asyncio.create_task(bot_module._run_until_stopped(None, None, "token", ()))  # type: ignore[arg-type]
        await asyncio.wait_for(started.wait(), 10)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGHUP)  # ignored: the bot keeps running
        os.kill(os.getpid(), signal.SIGTERM)  # delivered after it (lower numbers first)
        await asyncio.wait_for(running, 10)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


# ----------------------------------------------------------------------------- Ctrl-C at start


class PoolInThread:
    """`jukebot run`'s pool in a thread, and everything it logs from its start.

    The worker may be spawned before the test body runs, and `caplog.text` holds only the current
    phase's records (the spawn line landed in setup's on a fast machine), so this keeps its own."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.handler = _Collecting()

    def log(self) -> str:
        return "\n".join(record.getMessage() for record in list(self.handler.records))


class _Collecting(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def pool_in_thread(
    db_url: str, gate: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> Iterator[PoolInThread]:
    """run_pool in a thread, without signal handlers, stopped by an event."""
    monkeypatch.setenv(GATE_VARIABLE, str(gate))
    caplog.set_level(logging.INFO)
    pool = PoolInThread()
    pool_logger = logging.getLogger("sampler.worker.pool")
    pool_logger.addHandler(pool.handler)
    thread = threading.Thread(
        target=run_pool,
        args=(db_url, [DeviceSpec.cpu()], GATED_RUNNER),
        kwargs={
            "config": WorkerConfig(poll_seconds=0.05, max_poll_seconds=0.2),
            "stop": pool.stop,
            "install_signal_handlers": False,
            "shutdown_timeout": 20,
            "restart_backoff": 0.05,
        },
    )
    thread.start()
    try:
        yield pool
    finally:
        pool.stop.set()
        (gate / "open").touch()
        thread.join(60)
        pool_logger.removeHandler(pool.handler)
    assert not thread.is_alive()


@pytest.mark.slow
@pytest.mark.parametrize("when", ["at_spawn", "building_the_runner"])
async def test_ctrl_c_while_a_worker_starts_stops_it_quietly_for_good(
    when: str,
    pool_in_thread: PoolInThread,
    gate: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Ctrl-C signals the whole process group: a worker still importing or building its runner stops
    with exit 0 (no KeyboardInterrupt traceback), and the pool does not start another."""
    pool = pool_in_thread

    async def spawned() -> list[int]:
        return started_pids(pool.log())

    pid = (await wait_until(spawned, 30, "the worker to be spawned"))[0]
    if when == "building_the_runner":

        async def worker_building() -> int | None:
            return building(gate)

        assert await wait_until(worker_building, 60, "the worker to build its runner") == pid
    os.kill(pid, signal.SIGINT)

    async def noted() -> bool:
        log = pool.log()
        return "stopped on a stop signal" in log or "restarting" in log

    await wait_until(noted, 60, "the pool to note its worker's exit")
    err = capfd.readouterr().err
    log = pool.log()
    assert "stopped on a stop signal (exit 0); not restarting it" in log, log
    assert len(started_pids(log)) == 1
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


# ----------------------------------------------------------------------------- a killed worker's job


@pytest.mark.slow
async def test_a_job_being_cancelled_when_its_worker_is_killed_is_cancelled_at_once(
    pools: Any, store: JobStore, hold_dir: Path
) -> None:
    """The restarted worker knows its predecessor is dead: it does not leave the job to its lease, nor
    say it resumes it (it cannot: nobody runs a job being cancelled)."""
    pool = pools(held=True, extra=["--lease-seconds", "600", "--cancel-poll-seconds", "600"])
    job_id = await enqueue(store, params={"seconds": 5.0})
    owner = (await held(store, hold_dir, job_id)).lease_owner
    assert owner is not None
    assert await store.request_cancel(job_id, None) is JobStatus.CANCELLING
    os.kill(pid_of(owner), signal.SIGKILL)
    job = await job_finished(store, job_id, within=30)  # the lease: 600 s
    assert job.status is JobStatus.CANCELLED
    await wait_until(_logged(pool, "was being cancelled; it is cancelled now"), 30, "the note")
    assert "resuming it now" not in pool.log()


@pytest.mark.slow
async def test_a_killed_workers_job_out_of_attempts_is_not_said_to_resume(
    pools: Any, store: JobStore, hold_dir: Path
) -> None:
    pool = pools(held=True, extra=["--lease-seconds", "600"])
    job_id = await enqueue(store, params={"seconds": 5.0}, max_attempts=1)
    owner = (await held(store, hold_dir, job_id)).lease_owner
    assert owner is not None
    os.kill(pid_of(owner), signal.SIGKILL)
    await wait_until(_logged(pool, "which has no attempts left"), 30, "the restarted worker's note")
    # A job enqueued later runs to its end: the restarted worker went on claiming (and scanning).
    later = await enqueue(store)
    release_file(hold_dir, later).touch()
    assert (await job_finished(store, later)).status is JobStatus.SUCCEEDED
    log = pool.log()
    assert f"(job #{job_id} is out of attempts: it fails a lease after its lease is seen run out)" in log
    assert f"(job #{job_id} resumes from its checkpoint)" not in log
    assert "resuming it now" not in log and log.count("which has no attempts left") == 1
    assert (await store.get_job(job_id)).status is JobStatus.RUNNING  # until its lease runs out


def _logged(pool: ServiceProcess, text: str) -> Any:
    async def check() -> bool:
        return text in pool.log()

    return check
