"""`jukebot run` (the bot and its local workers) signalled while a job runs: every worker releases its
job with its checkpoint, costing no attempt, and the whole process exits 0.

`jukebot run` runs in a session (process group) of its own, as a terminal's foreground job does, with
one CPU worker whose runner is the toy runner held after the job's first checkpoint (tests/holding.py:
the job is mid-run when the signal comes, on any machine). The signal goes where an operator's would:
SIGTERM to the process (Docker), SIGTERM to the whole group (systemd's default), SIGINT to the group
(Ctrl-C) and SIGHUP to the group (the terminal or ssh session closed). A signal to the group reaches
the pool's worker process directly too, before the bot has stopped: it must neither die mid-write nor
cost the job an attempt, nor be restarted by the pool to take the job again.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from sampler.worker.runtime import pid_of
from storage import JobKind, JobStatus, JobStore
from storage.records import Job
from tests.bot.fake_discord import FakeDiscord
from tests.bot.harness import queue_song
from tests.bot.test_graceful_stop_mid_post import (
    START_TIMEOUT_S,
    JukebotRun,
    jukebot_environment,
    settings_environment,
    start_jukebot_run,
)
from tests.holding import HOLD_DIR_VARIABLE, held_files
from tests.waiting import wait_until
from tests.worker_processes import CHANNEL, USER

# `jukebot run` exactly, with the toy runner held after each run's first checkpoint in its workers.
LAUNCH = (
    "import jukebot.commands.serve as serve; serve.RUNNER = 'tests.holding:held_toy_runner'; "
    "from jukebot.cli import main; main(prog_name='jukebot')"
)
STOP_TIMEOUT_S = 60.0
QUEUED = re.compile(r"Queued as job #(\d+)")


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as fake:
        guild = fake.add_guild("Test Server", channels=("general",))
        fake.add_member(guild, fake.add_user("alice"))
        yield fake


@pytest.fixture
def hold_dir(tmp_path: Path) -> Path:
    path = tmp_path / "holds"
    path.mkdir()
    return path


def worker_settings(hold_dir: Path) -> dict[str, str]:
    """One CPU worker running the held toy runner, with leases long enough that a job a worker left
    behind stays running (visible), not requeued meanwhile."""
    return {
        "JUKEBOT_GPUS": "cpu",
        "JUKEBOT_WORKER_LEASE_SECONDS": "600",
        "JUKEBOT_WORKER_REQUEUE_SECONDS": "600",
        "JUKEBOT_WORKER_CHECKPOINT_SECONDS": "0",
        "JUKEBOT_TOY_WORK": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        HOLD_DIR_VARIABLE: str(hold_dir),
    }


@pytest.fixture
async def launch(tmp_path: Path) -> AsyncIterator[Callable[[list[str], dict[str, str]], JukebotRun]]:
    """`launch(args, env)`: `jukebot ARGS` (held toy runner) in a process group of its own; killed
    with its group if the test leaves it running, its log printed at the end."""
    started: list[JukebotRun] = []

    def start(args: list[str], env: dict[str, str]) -> JukebotRun:
        cwd = tmp_path / f"cwd-{len(started)}"  # no stray .env is read
        cwd.mkdir()
        log_file = tmp_path / f"jukebot-{args[0]}-{len(started)}.log"
        run = JukebotRun(
            start_jukebot_run([sys.executable, "-c", LAUNCH, *args], env, cwd, log_file), log_file
        )
        started.append(run)
        return run

    try:
        yield start
    finally:
        for run in started:
            if run.process.poll() is None:
                os.killpg(run.pgid, signal.SIGKILL)
                run.process.wait()
            print(f"---- {run.log_file.name}\n{run.log()[-8000:]}")


@pytest.fixture
def jukebot_run(
    fake: FakeDiscord,
    sqlite_url: str,
    hold_dir: Path,
    launch: Callable[[list[str], dict[str, str]], JukebotRun],
) -> JukebotRun:
    env = jukebot_environment(fake, sqlite_url, **worker_settings(hold_dir))
    return launch(["run", "--sync-guild", str(fake.default_guild.id)], env)


def gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie not yet reaped counts)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


async def held_mid_job(store: JobStore, hold_dir: Path, job_id: int) -> Job:
    """The job once its run holds after its first checkpoint, which is stored."""

    async def holding() -> Job | None:
        job = await store.get_job(job_id)
        assert not job.finished, f"job #{job_id} ended ({job.status}) before it was held"
        return job if held_files(hold_dir, job_id) and job.has_checkpoint and job.lease_owner else None

    return await wait_until(holding, START_TIMEOUT_S, f"job #{job_id} to hold after its first checkpoint")


@pytest.mark.parametrize(
    "how",
    ["SIGTERM", "SIGTERM group", "SIGINT group", "SIGHUP group"],
    ids=["sigterm", "sigterm-to-the-group", "ctrl-c", "hangup"],
)
async def test_a_signal_mid_job_releases_the_job_with_its_checkpoint_at_no_attempt(
    fake: FakeDiscord, sqlite_store: JobStore, hold_dir: Path, jukebot_run: JukebotRun, how: str
) -> None:
    store = sqlite_store  # on the database `jukebot run` uses
    await fake.wait_for(
        lambda: fake.live_sessions and fake.synced_commands(fake.default_guild), timeout_s=START_TIMEOUT_S
    )
    reply = await queue_song(fake, artist="queen", genre="pop", samples=1, seed=1)
    match = QUEUED.search(reply)
    assert match is not None, reply
    job_id = int(match.group(1))

    running = await held_mid_job(store, hold_dir, job_id)
    assert running.status is JobStatus.RUNNING and running.attempts == 0
    assert running.lease_owner is not None
    worker_pid = pid_of(running.lease_owner)
    assert worker_pid != jukebot_run.process.pid
    assert os.getpgid(worker_pid) == jukebot_run.pgid  # a signal to the group reaches it directly
    checkpoint = await store.get_checkpoint(job_id)
    assert checkpoint

    jukebot_run.stop_as(how)
    assert await jukebot_run.exit_code(STOP_TIMEOUT_S) == 0, "jukebot run did not stop gracefully"

    released = await store.get_job(job_id)
    assert released.status is JobStatus.QUEUED, released
    assert released.attempts == 0 and released.lease_owner is None and released.error is None
    assert released.has_checkpoint and await store.get_checkpoint(job_id) == checkpoint
    assert gone(worker_pid), "the worker outlived jukebot run"

    log = jukebot_run.log()
    name = how.split()[0]
    assert f"{name} received: stopping after releasing job #{job_id} to the queue" in log
    assert f"job #{job_id} released" in log
    assert "stopping: closing the Discord connection" in log
    assert "all workers stopped" in log
    # The pool saw its worker exit before it was told to stop: it must not start another.
    assert log.count("worker on cpu started") == 1, "the pool restarted its worker while stopping"
    assert "restarting in" not in log
    assert "Traceback" not in log and "KeyboardInterrupt" not in log
    assert "killing it" not in log
    await fake.wait_for(lambda: not fake.live_sessions)


async def test_ctrl_c_on_jukebot_worker_mid_job_releases_the_job_and_no_worker_restarts(
    sqlite_store: JobStore,
    sqlite_url: str,
    hold_dir: Path,
    launch: Callable[[list[str], dict[str, str]], JukebotRun],
) -> None:
    """`jukebot worker` (no bot) in a terminal: Ctrl-C reaches the pool and its worker at once."""
    store = sqlite_store
    env = settings_environment(sqlite_url, **worker_settings(hold_dir))
    worker = launch(["worker"], env)
    params = {"artist": "the beatles", "genres": ["rock"], "seconds": 5.0, "seed": 11}
    job_id = await store.enqueue(
        kind=JobKind.GENERATE, model="5b_lyrics", params=params, channel_id=CHANNEL, user_id=USER
    )
    running = await held_mid_job(store, hold_dir, job_id)
    assert running.lease_owner is not None
    worker_pid = pid_of(running.lease_owner)
    assert os.getpgid(worker_pid) == worker.pgid
    checkpoint = await store.get_checkpoint(job_id)
    assert checkpoint

    worker.stop_as("SIGINT group")
    assert await worker.exit_code(STOP_TIMEOUT_S) == 0, "jukebot worker did not stop gracefully"

    released = await store.get_job(job_id)
    assert released.status is JobStatus.QUEUED, released
    assert released.attempts == 0 and released.lease_owner is None and released.error is None
    assert await store.get_checkpoint(job_id) == checkpoint
    assert gone(worker_pid)
    log = worker.log()
    assert "SIGINT received: stopping the workers gracefully" in log
    assert f"SIGINT received: stopping after releasing job #{job_id} to the queue" in log
    assert log.count("worker on cpu started") == 1 and "restarting in" not in log
    assert "Traceback" not in log and "KeyboardInterrupt" not in log and "killing it" not in log
