"""`jukebot workers [--here]`: the workers sharing the database, and the worker image's health check."""

from __future__ import annotations

import asyncio
import re
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from jukebot.cli import main
from sampler.worker.runtime import this_machine
from storage import WORKER_STALE_SECONDS, JobStore, create_engine
from tests.conftest import FakeClock
from tests.waiting import wait_until
from tests.worker_processes import ServiceProcess, pool_command, repo_environment

TOY_RUNNER = "tests.sampler.worker.toy_runner:make_runner"


async def _workers(monkeypatch: pytest.MonkeyPatch, url: str, *args: str) -> Result:
    """The command as an operator runs it (its own event loop, so in a thread of its own here)."""
    monkeypatch.setenv("DATABASE_URL", url)
    return await asyncio.to_thread(CliRunner().invoke, main, ["workers", *args])


async def _seen(db_url: str, worker_id: str, models: list[str], seconds_ago: float) -> None:
    """Record `worker_id` as the workers table would have it `seconds_ago` seconds ago."""
    engine = create_engine(db_url)
    try:
        clock = FakeClock(datetime.now(UTC) - timedelta(seconds=seconds_ago))
        await JobStore(engine, clock=clock).record_worker(worker_id, models)
    finally:
        await engine.dispose()


async def test_a_running_worker_is_alive_here_until_it_is_killed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, db_url: str
) -> None:
    """A real worker process: listed alive with its models while it runs; a graceful stop removes its
    line, so `--here` (the health check) then fails."""
    log_dir = tmp_path / "toy-log"
    log_dir.mkdir()
    env = repo_environment({"JUKEBOT_TOY_LOG_DIR": str(log_dir)})
    pool = ServiceProcess(pool_command(db_url, TOY_RUNNER), env, tmp_path / "pool.log")
    try:
        await pool.ready()
        engine = create_engine(db_url)
        try:  # it logs that it serves just before it records so
            await wait_until(JobStore(engine).live_workers, 30, "the worker's row")
        finally:
            await engine.dispose()
        result = await _workers(monkeypatch, db_url, "--here")
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert len(lines) == 2, result.output
        assert lines[0].startswith(f"{this_machine()}/") and "/cpu alive (seen " in lines[0], lines[0]
        assert lines[0].endswith(", serves 1b_lyrics, 5b, 5b_lyrics"), lines[0]  # the toy runner's
        assert lines[1] == f"1 worker alive on this machine ({this_machine()}), 0 silent"
        assert await pool.terminate(signal.SIGTERM) == 0
    finally:
        await pool.stop()
    result = await _workers(monkeypatch, db_url, "--here")
    assert result.exit_code == 1
    assert f"no worker on this machine ({this_machine()}) said it was alive in the last" in result.output


async def test_a_silent_worker_and_other_machines(monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:
    """A worker of this machine that stopped without saying so (killed) is silent: `--here` fails even
    while a worker of another machine is alive, which the plain listing shows."""
    here = f"{this_machine()}/4242/cuda:0"
    elsewhere = "gpu-box-2~0123abcd/77/cuda:1"
    await _seen(db_url, here, ["5b_lyrics"], seconds_ago=WORKER_STALE_SECONDS + 60)
    await _seen(db_url, elsewhere, [], seconds_ago=5)

    listing = await _workers(monkeypatch, db_url)
    assert listing.exit_code == 0, listing.output
    lines = listing.output.splitlines()
    # (seen 5 s ago when recorded; the command reads it a moment later, longer on a loaded machine)
    seen = re.fullmatch(
        r"gpu-box-2~0123abcd/77/cuda:1 alive \(seen (\d+) s ago\), serves no model \(none it can run now: "
        r"its log says why\)",
        lines[0],
    )
    assert seen is not None and 5 <= int(seen[1]) < 30, lines[0]
    assert lines[1:] == [f"{here} silent for 3 min, serves 5b_lyrics", "1 worker alive, 1 silent"]

    result = await _workers(monkeypatch, db_url, "--here")
    assert result.exit_code == 1
    assert result.output.splitlines()[:2] == [
        f"{here} silent for 3 min, serves 5b_lyrics",
        f"0 workers alive on this machine ({this_machine()}), 1 silent",
    ]

    await _seen(db_url, here, ["5b_lyrics"], seconds_ago=0)  # it is back
    result = await _workers(monkeypatch, db_url, "--here")
    assert result.exit_code == 0, result.output
    assert "gpu-box-2" not in result.output


async def test_no_worker_at_all(monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:
    assert (await _workers(monkeypatch, db_url)).output == "no worker has been heard of in the last day\n"
    result = await _workers(monkeypatch, db_url, "--here")
    assert result.exit_code == 1
    assert result.output.startswith(f"no worker on this machine ({this_machine()}) has been heard of")


async def test_an_empty_database_says_to_upgrade(monkeypatch: pytest.MonkeyPatch, empty_db_url: str) -> None:
    result = await _workers(monkeypatch, empty_db_url, "--here")
    assert result.exit_code == 1
    assert "run `jukebot db upgrade`" in result.output
