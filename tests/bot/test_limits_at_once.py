"""Server settings changed while other requests are under way. Two `/jukebot-admin` changes at once
each read the settings, then wrote a whole new row: the later write undid the earlier, though both
said "Saved.". A `/jukebox` with a clip read the server's limits before the download and queued the
job with them after it: an admin's lower running limit meanwhile did not hold for that job, and a job
queued while the bot was being removed from the server ran for nobody.

Each test runs on SQLite and Postgres (`db_store`), with the real bot against the fake Discord.
"""

from __future__ import annotations

import asyncio

from storage.models import JobStatus
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord, HeldRequest, InteractionRecord, Upload
from tests.bot.harness import PlayedWorker, make_bot, make_settings, prime_wav, queue_song, reply_of
from tests.waiting import wait_until

ATTACHMENT_DOWNLOAD = ("GET", "/attachments/{channel_id}/{attachment_id}/{filename}")
MODELS = ["5b_lyrics", "5b", "1b_lyrics"]


async def _admin(fake: FakeDiscord, command: str, options: dict[str, object]) -> InteractionRecord:
    return await fake.invoke_command(f"jukebot-admin {command}", options, user=fake.user("mod"))


async def _song_with_a_clip_held(
    fake: FakeDiscord, **options: object
) -> tuple[InteractionRecord, HeldRequest]:
    """Alice's `/jukebox` with a clip, held while its clip downloads."""
    held = fake.hold(*ATTACHMENT_DOWNLOAD)
    record = await fake.invoke_command(
        "jukebox",
        {"length": 20.0, **options},
        attachments={"prime": Upload("riff.wav", prime_wav(3.0))},
        user=fake.user("alice"),
    )
    await fake.wait_for(lambda: held.arrived)
    return record, held


async def test_limit_changes_at_once_are_all_kept(
    fake_discord: FakeDiscord, bot_runner: BotRunner, db_store: JobStore
) -> None:
    fake = fake_discord
    ceilings = make_settings(max_running_jobs_per_user=4, max_queued_jobs_per_user=8)  # the operator's
    await bot_runner.start(make_bot(fake, db_store, ceilings))
    changes = ({"max_running": 2}, {"max_queued": 5}, {"max_samples": 2})
    records = await asyncio.gather(*(_admin(fake, "limits", change) for change in changes))
    for record in records:
        assert (await reply_of(fake, record)).startswith("Saved.")
    stored = await db_store.get_guild_settings(fake.default_guild.id)
    kept = (stored.max_running_jobs_per_user, stored.max_queued_jobs_per_user, stored.max_samples_per_job)
    assert kept == (2, 5, 2)


async def test_channels_allowed_at_once_are_all_kept(
    fake_discord: FakeDiscord, bot_runner: BotRunner, db_store: JobStore
) -> None:
    fake = fake_discord
    rooms = [fake.add_channel(fake.default_guild, f"room{index}") for index in range(4)]
    await bot_runner.start(make_bot(fake, db_store))
    records = await asyncio.gather(
        *(_admin(fake, "channels", {"action": "allow", "channel": room}) for room in rooms)
    )
    for record in records:
        assert (await reply_of(fake, record)).startswith("Saved.")
    stored = await db_store.get_guild_settings(fake.default_guild.id)
    assert sorted(stored.allowed_channel_ids or ()) == sorted(room.id for room in rooms)


async def test_a_running_limit_lowered_while_a_clip_downloads_holds_for_its_job(
    fake_discord: FakeDiscord, bot_runner: BotRunner, db_store: JobStore
) -> None:
    fake, store = fake_discord, db_store
    await bot_runner.start(make_bot(fake, store, make_settings(max_running_jobs_per_user=3)))
    with_clip, download = await _song_with_a_clip_held(fake)
    await queue_song(fake, "alice", artist="queen", samples=1)
    lowered = await _admin(fake, "limits", {"max_running": 1})
    assert (await reply_of(fake, lowered)).startswith("Saved.")
    download.release()
    assert (await reply_of(fake, with_clip)).startswith("Queued as job #")

    worker = PlayedWorker(store)
    await worker.start()
    await worker.claim()
    assert await store.claim("another-worker", MODELS, lease_seconds=600) is None  # one at a time
    assert [job.max_running_per_user for job in await store.unfinished_jobs()] == [1, 1]


async def test_a_song_whose_clip_downloads_while_the_bot_is_removed_is_not_queued(
    fake_discord: FakeDiscord, bot_runner: BotRunner, db_store: JobStore
) -> None:
    fake, store = fake_discord, db_store
    await bot_runner.start(make_bot(fake, store))
    await queue_song(fake, "alice", artist="queen", samples=1)
    (queued,) = await store.unfinished_jobs()
    with_clip, download = await _song_with_a_clip_held(fake, full=True)
    await fake.dispatch("GUILD_DELETE", {"id": str(fake.default_guild.id)})

    async def server_jobs_cancelled() -> bool:
        return (await store.get_job(queued.id)).status is JobStatus.CANCELLED

    await wait_until(server_jobs_cancelled, 10.0, "the jobs of the server the bot left to be cancelled")
    download.release()
    assert await reply_of(fake, with_clip) == (
        f"The bot was removed from server {fake.default_guild.id}, so nothing was queued for it."
    )
    assert await store.unfinished_jobs() == []
    assert await store.claim("worker", MODELS, lease_seconds=600) is None  # no GPU time for nobody
