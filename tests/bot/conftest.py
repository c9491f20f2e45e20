"""Fixtures for end-to-end bot tests against the fake Discord server (tests/bot/fake_discord.py).

- `fake_discord`: a started fake with one guild ("Test Server": #general, #music), members
  alice and bob, and mod (manage-server permission); discord.py's REST base and gateway URL
  point at it for the test and are restored afterwards.
- `db_store`: a store with the real clock on each database kind (SQLite, Postgres: `db_url`).
- `bot_runner`: `await bot_runner.start(bot)` logs a `commands.Bot` in and waits for READY;
  `await bot_runner.stop(bot)` closes it (restart tests start a new one on the same fake);
  every bot still running is closed at teardown, and a bot that crashed fails the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

import discord
import pytest
from discord.ext import commands

from storage.engine import create_engine
from storage.store import JobStore
from tests.bot.fake_discord import FakeDiscord, discord_py_pointed_at

BotT = TypeVar("BotT", bound=commands.Bot)


class BotStartError(Exception):
    """The bot stopped or failed before it became ready against the fake server."""


@pytest.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as fake:
        guild = fake.add_guild("Test Server", channels=("general", "music"))
        fake.add_member(guild, fake.add_user("alice"))
        fake.add_member(guild, fake.add_user("bob"))
        fake.add_member(guild, fake.add_user("mod"), permissions=discord.Permissions(manage_guild=True).value)
        # may manage messages: cancels anyone's job
        fake.add_member(
            guild, fake.add_user("moderator"), permissions=discord.Permissions(manage_messages=True).value
        )
        with discord_py_pointed_at(fake):
            yield fake


class BotRunner:
    """Starts and stops real `commands.Bot`s against one fake server."""

    def __init__(self, fake: FakeDiscord) -> None:
        self.fake = fake
        self._tasks: dict[commands.Bot, asyncio.Task[None]] = {}

    async def start(self, bot: BotT, *, timeout_s: float = 10.0) -> BotT:
        # The fake sends every GUILD_CREATE right after READY: discord.py's default 2 s wait for
        # more guilds would only slow each start down.
        bot._connection.guild_ready_timeout = min(bot._connection.guild_ready_timeout, 0.05)
        await bot.login(self.fake.token)  # runs setup_hook (command sync, dynamic items)
        task = asyncio.create_task(bot.connect(reconnect=True), name=f"bot-{id(bot)}")
        self._tasks[bot] = task
        ready = asyncio.create_task(bot.wait_until_ready())
        done, _ = await asyncio.wait({task, ready}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            if task in done:
                del self._tasks[bot]
                await bot.close()
                raise BotStartError(
                    f"the bot stopped before READY: {task.exception()!r}"
                ) from task.exception()
            raise BotStartError(f"the bot was not ready within {timeout_s}s")
        return bot

    async def stop(self, bot: commands.Bot) -> None:
        task = self._tasks.pop(bot)
        await bot.close()
        await task  # re-raises whatever ended the bot's connection loop

    async def stop_all(self) -> None:
        errors = []
        for bot in list(self._tasks):
            try:
                await self.stop(bot)
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
async def bot_runner(fake_discord: FakeDiscord) -> AsyncIterator[BotRunner]:
    runner = BotRunner(fake_discord)
    try:
        yield runner
    finally:
        await runner.stop_all()


@pytest.fixture
async def db_store(db_url: str) -> AsyncIterator[JobStore]:
    """A store with the real clock on each database kind."""
    engine = create_engine(db_url)
    yield JobStore(engine)
    await engine.dispose()
