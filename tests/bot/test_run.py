"""`run_bot`: what `jukebot run` calls. It connects, and SIGTERM closes it gracefully."""

from __future__ import annotations

import asyncio
import os
import signal

from bot.bot import run_bot
from storage.store import JobStore
from tests.bot.fake_discord import FakeDiscord
from tests.bot.harness import make_settings, sqlite_store

__all__ = ["sqlite_store"]


async def test_run_bot_stops_gracefully_on_sigterm(fake_discord: FakeDiscord, sqlite_store: JobStore) -> None:
    settings = make_settings(DISCORD_TOKEN=fake_discord.token)
    running = asyncio.create_task(run_bot(settings, sqlite_store))
    await fake_discord.wait_for(lambda: fake_discord.live_sessions and fake_discord.synced_commands())
    assert "jukebox" in fake_discord.synced_commands()  # global sync outside tests
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(running, timeout=10)
    await fake_discord.wait_for(lambda: not fake_discord.live_sessions)
    # The handler was removed again: the default disposition is back.
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
