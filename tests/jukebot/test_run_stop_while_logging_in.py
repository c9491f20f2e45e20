"""`jukebot run` told to stop while it is still logging in (Discord, or a proxy, slow to answer): a
stop that was asked for is no failure. It exited 1 saying "Cannot reach Discord … (Connector is
closed.)", what closing the connection did to the login in flight, so a supervisor recorded a failed
stop and the operator looked for a network problem."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.bot.test_graceful_stop_mid_post import (
    JukebotRun,
    settings_environment,
    start_jukebot_run,
)

STOP_TIMEOUT_S = 60.0


class SilentServer:
    """A TCP server on loopback that takes connections and never answers (a proxy or a Discord that
    hangs); `connected` is set by the first connection."""

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self._held: list[asyncio.StreamWriter] = []

    async def _take(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._held.append(writer)
        self.connected.set()

    async def __aenter__(self) -> int:
        self._server = await asyncio.start_server(self._take, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def __aexit__(self, *_exc: object) -> None:
        for writer in self._held:
            writer.close()
        self._server.close()


@pytest.fixture
async def silent() -> AsyncIterator[tuple[SilentServer, int]]:
    server = SilentServer()
    async with server as port:
        yield server, port


async def test_a_stop_while_logging_in_exits_0_without_a_network_error(
    silent: tuple[SilentServer, int], sqlite_url: str, tmp_path: Path
) -> None:
    server, port = silent
    cwd = tmp_path / "cwd"  # no stray .env is read
    cwd.mkdir()
    env = settings_environment(
        sqlite_url,
        DISCORD_TOKEN="MTIz.abc.def",
        JUKEBOT_DISCORD_API_BASE=f"http://127.0.0.1:{port}/api/v10",
        JUKEBOT_GPUS="none",
    )
    log_file = tmp_path / "jukebot-run.log"
    run = JukebotRun(
        start_jukebot_run([sys.executable, "-m", "jukebot", "run"], env, cwd, log_file), log_file
    )
    try:
        await asyncio.wait_for(server.connected.wait(), STOP_TIMEOUT_S)  # the login's first request
        run.stop_as("SIGTERM")
        code = await run.exit_code(STOP_TIMEOUT_S)
        assert (code, "Cannot reach Discord" in run.log()) == (0, False), run.log()
    finally:
        if run.process.poll() is None:
            os.killpg(run.pgid, signal.SIGKILL)
