"""Two bots on one database (README: several bot processes may share it) each post a progress message
for a job that has none: the one recorded first stands, and the other bot deletes its own, so the
channel never keeps a second message frozen at "Queued"."""

from __future__ import annotations

from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord, FakeMessage
from tests.bot.harness import bot_messages, make_bot


async def test_a_progress_message_two_bots_post_at_once_is_kept_once(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    job_id = await store.enqueue(
        kind="generate",
        model="1b_lyrics",
        params={"artist": "queen", "genres": ["pop"], "seconds": 10, "n_samples": 1, "seed": 1},
        channel_id=fake.channel("general").id,
        user_id=fake.user("alice").id,
        guild_id=fake.default_guild.id,
    )
    first_bots_post = fake.hold("POST", "/channels/{channel_id}/messages")
    await bot_runner.start(make_bot(fake, store))
    await fake.wait_for(lambda: first_bots_post.arrived)
    await bot_runner.start(make_bot(fake, store))  # sees no progress message either

    def progress_messages() -> list[FakeMessage]:
        return [m for m in bot_messages(fake) if m.content.startswith(f"**Job #{job_id}**")]

    await fake.wait_for(lambda: progress_messages() or None)  # the second bot's
    first_bots_post.release()
    await fake.wait_for(lambda: len(progress_messages()) == 2 or None)
    # Whichever bot recorded its message first keeps it (the second bot may not have recorded its
    # own yet when the first one's lands): the other deletes its own.
    await fake.wait_for(lambda: [m for m in progress_messages() if m.deleted] or None)

    (kept,) = [m for m in progress_messages() if not m.deleted]
    assert kept.id == (await store.get_job(job_id)).progress_message_id
