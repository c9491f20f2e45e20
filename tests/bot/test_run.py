"""`run_bot`: what `jukebot run` calls. It connects, and SIGTERM closes it gracefully."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import pytest
from sqlalchemy import text

from bot import bot as bot_module
from bot.bot import JukeBot, run_bot
from storage.migrate import UnknownSchemaRevision
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord
from tests.bot.harness import answer_of, make_settings


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


async def test_the_bot_stops_once_a_newer_jukebot_migrated_its_database(
    fake_discord: FakeDiscord,
    sqlite_store: JobStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bot left running while a newer jukebot migrated the database (another machine upgraded first)
    went on taking requests and votes with its old rules. It now reads the schema now and then, and
    stops as a signal stops it; `jukebot run` then says to upgrade jukebot here."""
    monkeypatch.setattr(bot_module, "SCHEMA_CHECK_S", 0.05)
    settings = make_settings(DISCORD_TOKEN=fake_discord.token)
    running = asyncio.create_task(run_bot(settings, sqlite_store))
    await fake_discord.wait_for(lambda: fake_discord.live_sessions and fake_discord.synced_commands())
    checked = await fake_discord.invoke_command("queue")  # the bot serves: its schema is its own
    await fake_discord.wait_for(lambda: answer_of(checked))
    assert not running.done()
    async with sqlite_store.engine.begin() as connection:
        await connection.execute(text("UPDATE alembic_version SET version_num = '0099'"))

    with pytest.raises(UnknownSchemaRevision) as stopped:
        await asyncio.wait_for(running, timeout=10)
    assert stopped.value.revision == "0099" and stopped.value.newer
    await fake_discord.wait_for(lambda: not fake_discord.live_sessions)  # closed, not dropped
    (stop,) = [r for r in caplog.records if r.getMessage().startswith("the bot stops")]
    assert stop.levelno == logging.ERROR
    assert stop.getMessage().startswith("the bot stops: the database's schema (revision 0099) is not one")


def _scopes_listing(fake: FakeDiscord) -> dict[str, int]:
    """How often each command shows in the test server: its own copies plus the global ones."""
    names = [*fake.synced_commands(fake.default_guild), *fake.synced_commands()]
    return {name: names.count(name) for name in names}


async def test_guild_run_then_global_run_lists_each_command_once(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    guild_bot = await bot_runner.start(
        JukeBot(make_settings(), sqlite_store, sync_guild_ids=[fake_discord.default_guild.id])
    )
    assert "jukebox" in fake_discord.synced_commands(fake_discord.default_guild)
    assert set(_scopes_listing(fake_discord).values()) == {1}
    await bot_runner.stop(guild_bot)

    global_bot = await bot_runner.start(JukeBot(make_settings(), sqlite_store))
    await fake_discord.wait_for(lambda: not fake_discord.synced_commands(fake_discord.default_guild))
    assert "jukebox" in fake_discord.synced_commands()
    assert set(_scopes_listing(fake_discord).values()) == {1}
    await bot_runner.stop(global_bot)

    await bot_runner.start(
        JukeBot(make_settings(), sqlite_store, sync_guild_ids=[fake_discord.default_guild.id])
    )
    assert not fake_discord.synced_commands()
    assert "jukebox" in _scopes_listing(fake_discord)
    assert set(_scopes_listing(fake_discord).values()) == {1}
