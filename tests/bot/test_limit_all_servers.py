"""`JUKEBOT_MAX_JOBS_PER_USER_ALL_SERVERS` through the bot: a member at the limit in one server is
refused in another, told which jobs count and where the limit comes from."""

from __future__ import annotations

from bot.bot import JukeBot
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord, Upload
from tests.bot.harness import job_count, make_settings, prime_wav, queue_song, reply_of

ATTACHMENT_DOWNLOAD = ("GET", "/attachments/{channel_id}/{attachment_id}/{filename}")


async def test_a_member_at_the_bot_wide_limit_is_refused_in_another_server(
    fake_discord: FakeDiscord, bot_runner: BotRunner, db_store: JobStore
) -> None:
    fake = fake_discord
    other = fake.add_guild("Other Server", channels=("lounge",))
    alice = fake.user("alice")
    fake.add_member(other, alice)
    settings = make_settings(max_jobs_per_user_all_servers=2, max_queued_jobs_per_user=3)
    await bot_runner.start(JukeBot(settings, db_store, sync_guild_ids=[fake.default_guild.id, other.id]))
    await queue_song(fake, "alice")  # job 1, here
    await queue_song(fake, "alice")  # job 2: within this server's own limit of 3

    refused = await fake.invoke_command(
        "jukebox",
        {},
        user=alice,
        guild=other,
        channel=other.channel("lounge"),
        attachments={"prime": Upload("riff.wav", prime_wav(3.0))},
    )
    assert await reply_of(fake, refused) == (
        "You have 2 unfinished jobs in all servers (#1, #2), and this bot takes at most 2 per member in "
        "all servers together; try again when job #1 ends (or cancel one with /cancel in its server)."
    )
    assert await job_count(db_store) == 2
    assert not fake.calls(*ATTACHMENT_DOWNLOAD)  # refused before its clip was fetched and decoded
    await queue_song(fake, "bob")  # another member's jobs are their own
