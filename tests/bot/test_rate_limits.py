"""Rate limits longer than the bot waits inside a call (`MAX_RATE_LIMIT_WAIT_S`: discord.py raises
`discord.RateLimited`, which is not a `discord.HTTPException`) are handled where they can come: the bot
starts all the same, a replaced progress message still goes, a channel lookup counts as unanswered.
(The relay's own waits are in test_relay_delivery.py.)"""

from __future__ import annotations

import logging
import types
from typing import Any

import discord
import pytest

from bot import actions
from bot.relay import ProgressRelay
from storage.records import ClaimedJob
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord, FakeMessage
from tests.bot.harness import (
    PlayedWorker,
    bot_messages,
    make_bot,
    progress_message,
    relay_of,
    when,
)


async def _running_job(
    fake: FakeDiscord, bot_runner: BotRunner, store: JobStore
) -> tuple[ProgressRelay, PlayedWorker, ClaimedJob, FakeMessage]:
    """A started bot whose relay edits at every pass, and a member's job a worker runs, with its progress
    message."""
    bot = await bot_runner.start(make_bot(fake, store))
    relay = relay_of(bot)
    relay.min_edit_interval_s = 0.0
    worker = PlayedWorker(store)
    record = await fake.invoke_command("jukebox", {"samples": 1}, user=fake.user("alice"))
    await fake.wait_for(lambda: record.original is not None and not record.original.loading)
    job = await worker.claim()
    return relay, worker, job, await fake.wait_for(when(lambda: progress_message(fake, job.id)))


@pytest.mark.parametrize(
    ("failure", "said"),
    [
        ({"status": 429, "retry_after": 120.0}, "Discord asks to wait 120 s; trying again in 120 s"),
        ({"status": 503}, "Discord could not be reached (DiscordServerError("),
    ],
    ids=["rate-limited", "discord-down"],
)
async def test_a_command_sync_discord_refuses_at_start_does_not_stop_the_bot_and_is_tried_again(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    caplog: pytest.LogCaptureFixture,
    failure: dict[str, Any],
    said: str,
) -> None:
    """Restarts in a row (a crash loop, deploys) meet Discord's limit on command syncs, or Discord is
    down for a while (a 503 stopped the bot, and `jukebot run` its workers with it): the commands of
    the last sync stand, the bot starts, and syncs them later."""
    fake = fake_discord
    fake.fail_next("PUT", "/applications/{application_id}/guilds/{guild_id}/commands", **failure)
    caplog.set_level(logging.WARNING, logger="bot.bot")
    bot = make_bot(fake, sqlite_store)
    bot.sync_retry_s = (0.0, 0.0)  # the wait before trying again, cut to nothing here
    await bot_runner.start(bot)
    assert bot.is_ready()
    (warning,) = [r for r in caplog.records if r.name == "bot.bot"]
    assert said in warning.getMessage() and "the commands of the last sync stand" in warning.getMessage()
    if failure["status"] == 503:
        await fake.wait_for(lambda: "jukebox" in fake.synced_commands(fake.default_guild))


async def test_a_replaced_progress_message_whose_delete_is_rate_limited_goes_at_a_later_pass(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """The old message was out of edits (30046): the relay goes on in a fresh one and deletes the old
    one; Discord asks to wait for that delete: a later pass deletes it, and one progress message stays."""
    fake = fake_discord
    relay, worker, job, old = await _running_job(fake, bot_runner, sqlite_store)

    await worker.progress(job.id, window=1, of=4)
    fake.fail_next("PATCH", "/channels/{channel_id}/messages/{message_id}", status=400, code=30046)
    fake.fail_next("DELETE", "/channels/{channel_id}/messages/{message_id}", status=429, retry_after=120.0)
    await relay.run_pass()
    assert [r.status for r in fake.rejections] == [400, 429] and not old.deleted
    await relay.run_pass()

    shown = [m for m in bot_messages(fake) if m.content.startswith(f"**Job #{job.id}**") and not m.deleted]
    assert len(shown) == 1 and shown[0] is not old and old.deleted


class _RateLimitedBot:
    """Stands in for the bot whose lookup of a channel Discord asks to wait for."""

    async def fetch_channel(self, channel_id: int) -> object:
        raise discord.RateLimited(120.0)


async def test_a_rate_limited_channel_lookup_counts_as_unanswered() -> None:
    """Who may use a sample of a channel the cache lacks: a lookup Discord asks to wait for counts as
    unanswered ("not shown"), as an HTTP error does; /queue, /history, /top and /curate leave that one
    entry out instead of failing whole."""
    assert await actions._uncached_channel(_RateLimitedBot(), 42) is None  # type: ignore[arg-type]


class _DeleteFails:
    """A replaced progress message whose delete, retried at a pass, meets a connection error."""

    id = 1234

    async def delete(self) -> None:
        raise ConnectionResetError("connection reset by peer")


async def test_a_pending_delete_that_meets_a_connection_error_does_not_stop_the_pass(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """A pending delete retried at a pass meets a connection error (which discord.py raises after its own
    retries): the pass goes on with the jobs, and the delete is kept for the next pass."""
    fake = fake_discord
    relay, worker, job, _ = await _running_job(fake, bot_runner, sqlite_store)
    await worker.progress(job.id, window=3, of=4)

    relay._to_delete[_DeleteFails.id] = (job.id, _DeleteFails(), "its old progress message")  # type: ignore[assignment]
    await relay.run_pass()

    shown = progress_message(fake, job.id)
    assert shown is not None and "3/4" in shown.content
    assert _DeleteFails.id in relay._to_delete


class _DeleteMeetsServerError:
    """A replaced progress message whose delete meets Discord's 503 (a transient server error)."""

    id = 4321

    async def delete(self) -> None:
        raise discord.DiscordServerError(types.SimpleNamespace(status=503, reason="Service Unavailable"), "")


async def test_a_pending_delete_that_meets_a_discord_server_error_is_kept(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """A 5xx from Discord is as passing as a rate limit: the delete is tried again at the next pass."""
    bot = await bot_runner.start(make_bot(fake_discord, sqlite_store))
    relay = relay_of(bot)
    relay._to_delete[_DeleteMeetsServerError.id] = (1, _DeleteMeetsServerError(), "its old progress message")  # type: ignore[assignment]
    await relay.run_pass()
    assert _DeleteMeetsServerError.id in relay._to_delete
