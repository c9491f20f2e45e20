"""The workers `jukebot run` and `jukebot worker` spawn load downloaded checkpoints and never need the
Discord token: it was in their /proc/<pid>/environ, readable by any process of the user. The process
that spawns them (`jukebot worker`'s pool, like the bot) is undumpable; the workers themselves stay
dumpable, as another worker reads their environment to tell whether the two share a GPU."""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sampler.worker.contract import DeviceSpec, RunnerOptions
from storage.engine import create_engine
from storage.store import JobStore
from tests.bot.fake_discord import FakeDiscord
from tests.bot.test_graceful_stop_mid_post import JukebotRun, jukebot_environment, start_jukebot_run
from tests.waiting import wait_until

REPORT_DIR_VARIABLE = "JUKEBOT_TEST_REPORT_DIR"
PR_GET_DUMPABLE = 3
LAUNCH = (
    "import jukebot.commands.serve as serve; "
    "serve.RUNNER = 'tests.jukebot.test_private_workers:reporting_toy_runner'; "
    "from jukebot.cli import main; main(prog_name='jukebot')"
)


def reporting_toy_runner(device: DeviceSpec, options: RunnerOptions | None = None) -> object:
    """The toy runner, built in the worker process once it has written what that process is: whether
    it is dumpable, and whether a Discord token is in its environment."""
    from tests.sampler.worker.toy_runner import make_runner

    report = {
        "dumpable": ctypes.CDLL(None).prctl(PR_GET_DUMPABLE, 0, 0, 0, 0),
        "token": [name for name in os.environ if name.upper() in ("DISCORD_TOKEN", "JUKEBOT_DISCORD_TOKEN")],
    }
    (Path(os.environ[REPORT_DIR_VARIABLE]) / f"{os.getpid()}.json").write_text(json.dumps(report))
    return make_runner(device, options)


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as fake:
        fake.add_guild("Test Server", channels=("general",))
        yield fake


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
@pytest.mark.parametrize("command", ["run", "worker"])
async def test_a_spawned_worker_holds_no_token(
    fake: FakeDiscord, sqlite_url: str, tmp_path: Path, command: str
) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    cwd = tmp_path / "cwd"  # no stray .env is read
    cwd.mkdir()
    env = jukebot_environment(
        fake,
        sqlite_url,
        JUKEBOT_GPUS="cpu",
        JUKEBOT_TOY_WORK="1",
        OMP_NUM_THREADS="1",
        **{REPORT_DIR_VARIABLE: str(reports), "JUKEBOT_DISCORD_TOKEN": fake.token},
    )
    log_file = tmp_path / "jukebot.log"
    run = JukebotRun(start_jukebot_run([sys.executable, "-c", LAUNCH, command], env, cwd, log_file), log_file)
    try:

        async def reported() -> list[Path] | None:
            assert run.process.poll() is None, run.log()
            return sorted(reports.iterdir()) or None

        (report,) = await wait_until(reported, 120, "the worker to build its runner")
        assert json.loads(report.read_text()) == {"dumpable": 1, "token": []}, run.log()

        async def serving() -> bool:  # stopped once it serves, as an operator would
            engine = create_engine(sqlite_url)
            try:
                return bool(await JobStore(engine).live_workers())
            finally:
                await engine.dispose()

        await wait_until(serving, 120, "the worker to serve")
        run.stop_as("SIGTERM")
        try:
            code = await asyncio.to_thread(run.process.wait, 90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"it did not stop within 90 s of SIGTERM:\n{run.log()}")
        assert code == 0, run.log()
    finally:
        if run.process.poll() is None:
            os.killpg(run.pgid, signal.SIGKILL)
