"""A job of a server the bot was removed from, retried by the operator (`jukebot jobs retry`): the bot
cancelled it when it left (`on_guild_remove`), and the relay shows and posts only the jobs of servers the
bot is in, so run again it would use GPU time for results nobody sees. The retry refuses it until the bot
is added back (`on_guild_join`)."""

from __future__ import annotations

import logging

import pytest

from storage.errors import JobNotRetryable
from storage.models import JobStatus
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord
from tests.bot.harness import PlayedWorker, make_bot, progress_message, queue_song, when
from tests.waiting import wait_until


async def test_a_job_of_a_server_the_bot_left_is_not_retried(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    worker = PlayedWorker(store)
    record = await fake.invoke_command("jukebox", {"samples": 1}, user=fake.user("alice"))
    await fake.wait_for(lambda: record.original is not None and not record.original.loading)
    job = await worker.claim()
    await fake.wait_for(when(lambda: progress_message(fake, job.id, "general")))
    await fake.dispatch("GUILD_DELETE", {"id": str(fake.default_guild.id)})

    async def stopping() -> bool:
        return (await store.get_job(job.id)).status is JobStatus.CANCELLING

    await wait_until(stopping, 10.0, "the job of the server the bot left to stop")
    await worker.cancelled(job.id)
    assert fake.default_guild.id not in {guild.id for guild in bot.guilds}

    with pytest.raises(JobNotRetryable, match="the bot was removed from its server"):
        await store.retry_job(job.id)  # what `jukebot jobs retry` does

    assert (await store.get_job(job.id)).status is JobStatus.CANCELLED
    assert await store.claim(worker.worker_id, ["5b_lyrics"], 60) is None  # no GPU time for it

    # Added back to the server: the job may go back, and the bot shows it again.
    joined = fake.default_guild.payload(full=True)
    joined.pop("unavailable", None)  # a server joined, not one that was in an outage
    await fake.dispatch("GUILD_CREATE", joined)

    async def retried() -> bool:
        try:
            return (await store.retry_job(job.id)).status is JobStatus.QUEUED
        except JobNotRetryable:
            return False  # the bot has not recorded that it is back yet

    await wait_until(retried, 10.0, "the job to be retried once the bot is back in its server")


async def test_a_join_the_database_cannot_record_is_one_warning_saying_what_it_means(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake, store = fake_discord, sqlite_store
    await bot_runner.start(make_bot(fake, store))
    await fake.dispatch("GUILD_DELETE", {"id": str(fake.default_guild.id)})

    async def database_away(guild_ids: object) -> None:
        raise ConnectionRefusedError("the database is away")

    monkeypatch.setattr(store, "mark_guilds_present", database_away)
    caplog.set_level(logging.WARNING)
    joined = fake.default_guild.payload(full=True)
    joined.pop("unavailable", None)
    await fake.dispatch("GUILD_CREATE", joined)

    async def warned() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "could not record it" in r.getMessage()]

    (warning,) = await wait_until(warned, 10.0, "the warning")
    assert str(fake.default_guild.id) in warning.getMessage() and "next start" in warning.getMessage()
    assert warning.exc_info is None  # one line, no traceback

    # The database back, a member's request for a job there records the join it missed (review: every
    # /jukebox was refused as "removed from the server" until the bot restarted).
    monkeypatch.undo()
    assert (await queue_song(fake, "alice", artist="queen", samples=1)).startswith("Queued as job #")
