"""Limits under bursts, forged interactions, and answering while another connection writes.

Each test runs on SQLite and Postgres (`db_url`), with the real bot against the fake Discord.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError

from storage.engine import create_engine
from storage.models import JobRow, JobStatus, PrimeRow
from storage.records import GuildSettings
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import (
    INTERACTION_COMMAND,
    INTERACTION_COMPONENT,
    FakeChannel,
    FakeDiscord,
    FakeMessage,
    FakeUser,
    InteractionRecord,
    Upload,
)
from tests.bot.harness import PlayedWorker, job_count, make_bot, prime_wav, progress_message, when
from tests.bot.test_bad_input import _sample_in_other_server, reply_of

DISCORD_ACK_DEADLINE_S = 3.0


async def _forge(
    fake: FakeDiscord,
    kind: int,
    data: dict[str, Any],
    user: FakeUser,
    *,
    dm: bool,
    message: FakeMessage | None = None,
) -> InteractionRecord:
    """An interaction Discord itself would not send (a hidden command, a button on a message the
    bot never posted, or one from a direct message), as a modified client could."""
    guild = fake.default_guild
    record = fake._interaction_base(kind, data, user, guild, guild.channels[0], "en-US")
    if message is not None:
        record.payload["message"] = fake.message_payload(message)
        record.source_message = message
    if dm:
        channel = FakeChannel(fake._snowflake(), f"dm-{user.name}", None, type=1, recipients=[user])
        fake.channels[channel.id] = channel
        for key in ("guild_id", "guild", "member", "guild_locale"):
            record.payload.pop(key, None)
        record.payload |= {
            "user": user.payload(),
            "channel_id": str(channel.id),
            "channel": channel.payload(),
            "context": 1,
            "authorizing_integration_owners": {"1": str(user.id)},
        }
        record.channel_id = channel.id
    return await fake._deliver(record, wait=True, timeout_s=10.0)


async def test_a_burst_from_twenty_users_queues_exactly_their_limits(
    fake_discord: FakeDiscord, bot_runner: BotRunner, db_store: JobStore
) -> None:
    fake = fake_discord
    users = [fake.add_user(f"user{i}") for i in range(20)]
    for user in users:
        fake.add_member(fake.default_guild, user)
    await bot_runner.start(make_bot(fake, db_store))  # 1 running and 3 queued jobs per user

    records = await asyncio.gather(
        *(
            fake.invoke_command("jukebox", {"samples": 1}, user=users[i % 20], timeout_s=30.0)
            for i in range(100)
        )
    )
    # Answering 100 at once takes a while on a loaded machine: a generous bound, then each reply.
    await fake.wait_for(
        lambda: all(r.original is not None and not r.original.loading for r in records), timeout_s=120.0
    )
    replies = await asyncio.gather(*(reply_of(fake, record) for record in records))

    assert all(record.acknowledged for record in records)
    queued = [reply for reply in replies if reply.startswith("Queued as job #")]
    refused = [reply for reply in replies if reply.startswith("You have 3 jobs waiting in the queue (#")]
    assert (len(queued), len(refused)) == (60, 40), Counter(reply[:40] for reply in replies)
    assert all("the limit here is 3; try again when job #" in reply for reply in refused)
    for user in users:
        counts = await db_store.user_job_counts(user.id, fake.default_guild.id)
        assert (counts.queued, counts.running) == (3, 0)
    assert await job_count(db_store) == 60
    assert fake.rejections == []


ATTACHMENT_ROUTE = "/attachments/{channel_id}/{attachment_id}/{filename}"


async def test_a_burst_of_requests_with_clips_downloads_one_clip_per_member_at_a_time(
    fake_discord: FakeDiscord, bot_runner: BotRunner, db_store: JobStore
) -> None:
    """The job limits are checked before a clip downloads and enforced when the job is stored: a
    member's second clip while the first is still downloading is refused at once, not downloaded
    and decoded for a place in the queue that one of them cannot have. Others are not held up."""
    fake = fake_discord
    await bot_runner.start(make_bot(fake, db_store))
    alice, bob = fake.user("alice"), fake.user("bob")
    clip = {"prime": Upload("riff.wav", prime_wav(3.0))}
    held = fake.hold("GET", ATTACHMENT_ROUTE)
    first = await fake.invoke_command("jukebox", {"length": 20.0}, attachments=clip, user=alice)
    await fake.wait_for(lambda: held.arrived)

    burst = await asyncio.gather(
        *(fake.invoke_command("jukebox", {"length": 20.0}, attachments=clip, user=alice) for _ in range(3))
    )
    for record in burst:
        assert await reply_of(fake, record) == (
            "Your previous clip is still being downloaded and checked; wait for its answer, then send "
            "this request again."
        )
    others = await fake.invoke_command("jukebox", {"length": 20.0}, attachments=clip, user=bob)
    assert (await reply_of(fake, others)).startswith("Queued as job #")
    held.release()
    assert (await reply_of(fake, first)).startswith("Queued as job #")
    assert len({call.path for call in fake.calls("GET", ATTACHMENT_ROUTE)}) == 2  # alice's first, bob's
    again = await fake.invoke_command("jukebox", {"length": 20.0}, attachments=clip, user=alice)
    assert (await reply_of(fake, again)).startswith("Queued as job #")  # one at a time, not one in all
    assert await job_count(db_store) == 3
    assert fake.rejections == []


async def test_a_forged_vote_on_another_servers_sample_or_from_a_dm_is_refused(
    fake_discord: FakeDiscord, bot_runner: BotRunner, db_store: JobStore
) -> None:
    fake = fake_discord
    foreign, _ = await _sample_in_other_server(fake, db_store)
    await bot_runner.start(make_bot(fake, db_store))
    alice = fake.user("alice")
    custom_id = f"jukebot:vote:{foreign}"
    button = {"type": 2, "style": 2, "label": "👍 0", "custom_id": custom_id}
    here = fake.channel("general")
    message = FakeMessage(
        fake._snowflake(),
        here.id,
        here.guild_id,
        fake.bot_user,
        components=[{"type": 1, "components": [button]}],
    )
    vote = {"custom_id": custom_id, "component_type": 2}

    from_here = await _forge(fake, INTERACTION_COMPONENT, vote, alice, dm=False, message=message)
    assert (await reply_of(fake, from_here)).startswith(f"Sample #{foreign} was made in another server;")
    from_dm = await _forge(fake, INTERACTION_COMPONENT, vote, alice, dm=True, message=message)
    assert (
        await reply_of(fake, from_dm)
        == "This command works only in a server channel, not in direct messages."
    )
    assert await db_store.vote_count(foreign) == 0


async def test_queue_lists_only_this_servers_running_jobs(
    fake_discord: FakeDiscord, bot_runner: BotRunner, db_store: JobStore
) -> None:
    fake = fake_discord
    other = fake.add_guild("Other Server", channels=("lounge",))
    stranger = fake.add_user("stranger")
    fake.add_member(other, stranger)
    theirs = await db_store.enqueue(
        kind="generate",
        model="5b",
        params={"artist": "queen"},
        channel_id=other.channel("lounge").id,
        user_id=stranger.id,
        guild_id=other.id,
    )
    assert (await PlayedWorker(db_store).claim()).id == theirs
    await bot_runner.start(make_bot(fake, db_store))

    queue = await reply_of(fake, await fake.invoke_command("queue", user=fake.user("alice")))
    assert "Nothing is running" in queue
    assert f"Job #{theirs}" not in queue and str(stranger.id) not in queue


async def test_admin_commands_refuse_a_forged_interaction_without_manage_server(
    fake_discord: FakeDiscord, bot_runner: BotRunner, db_store: JobStore
) -> None:
    fake = fake_discord
    await bot_runner.start(make_bot(fake, db_store))
    guild = fake.default_guild
    data = fake._build_command_data("jukebot-admin limits", {"max_queued": 2}, guild, guild.channels[0])
    record = await _forge(fake, INTERACTION_COMMAND, data, fake.user("alice"), dm=False)
    assert await reply_of(fake, record) == "You are missing Manage Server permission(s) to run this command."
    assert await db_store.get_guild_settings(guild.id) == GuildSettings(guild_id=guild.id)
    # A member who has the permission still can.
    mod = await fake.invoke_command("jukebot-admin limits", {"max_queued": 2}, user=fake.user("mod"))
    assert (await reply_of(fake, mod)).startswith("Saved.")
    assert (await db_store.get_guild_settings(guild.id)).max_queued_jobs_per_user == 2


async def test_cancel_and_queue_are_acknowledged_while_another_connection_writes(
    fake_discord: FakeDiscord, bot_runner: BotRunner, db_store: JobStore, db_url: str
) -> None:
    """A worker's long write (a checkpoint) holds the write lock (SQLite) or the job's row (Postgres)."""
    fake = fake_discord
    await bot_runner.start(make_bot(fake, db_store))
    await PlayedWorker(db_store).start()  # a worker is up: job 1 has a place in the queue
    alice = fake.user("alice")
    assert (await reply_of(fake, await fake.invoke_command("jukebox", {}, user=alice))).startswith(
        "Queued as job #1."
    )
    await fake.wait_for(when(lambda: progress_message(fake, 1)))

    writer_engine = create_engine(db_url)
    holding, release = asyncio.Event(), asyncio.Event()

    async def hold_a_write() -> None:
        async with writer_engine.connect() as connection:
            transaction = await connection.begin()
            await connection.execute(update(JobRow).where(JobRow.id == 1).values(stage="checkpointing"))
            holding.set()
            await release.wait()
            await transaction.rollback()

    writer = asyncio.create_task(hold_a_write())
    try:
        await holding.wait()
        queue = await fake.invoke_command("queue", user=alice, timeout_s=DISCORD_ACK_DEADLINE_S)
        assert "• Job #1 (generate, 5b_lyrics): queued, position 1" in await reply_of(fake, queue)
        cancel = await fake.invoke_command("cancel", {"job": 1}, user=alice, timeout_s=DISCORD_ACK_DEADLINE_S)
        assert cancel.deferred
        # /jukebox without a model reads which models the workers serve before it answers
        song = await fake.invoke_command("jukebox", user=fake.user("bob"), timeout_s=DISCORD_ACK_DEADLINE_S)
        assert song.deferred
        assert (await db_store.get_job(1)).status == JobStatus.QUEUED  # the cancel waits for the writer
    finally:
        release.set()
        await writer
        await writer_engine.dispose()
    assert await reply_of(fake, cancel) == "Job #1 is cancelled; it had not started."
    assert (await db_store.get_job(1)).status == JobStatus.CANCELLED
    assert (await reply_of(fake, song)).startswith("Queued as job #2.")


async def test_jobs_queued_while_a_prime_downloads_refuse_it_and_the_clip_is_not_kept(
    fake_discord: FakeDiscord, bot_runner: BotRunner, db_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quick check passes before the download; the user's other commands fill their places
    before this one inserts (played here at a known point: right after the clip is stored)."""
    fake = fake_discord
    bot = await bot_runner.start(make_bot(fake, db_store))
    alice = fake.user("alice")
    store_prime = db_store.store_prime

    async def store_prime_then_others_queue(**fields: Any) -> int:
        prime_id = await store_prime(**fields)
        for _ in range(3):
            await db_store.enqueue(
                kind="generate",
                model="5b",
                params={"artist": "queen"},
                channel_id=fake.channel("general").id,
                user_id=alice.id,
                guild_id=fake.default_guild.id,
            )
        return prime_id

    monkeypatch.setattr(bot.store, "store_prime", store_prime_then_others_queue)
    record = await fake.invoke_command(
        "jukebox", {"length": 20.0}, attachments={"prime": Upload("riff.wav", prime_wav(3.0))}, user=alice
    )
    assert await reply_of(fake, record) == (
        "You have 3 jobs waiting in the queue (#1, #2, #3), the limit here is 3; try again when job #1 "
        "starts (or cancel one with /cancel)."
    )
    assert await job_count(db_store) == 3
    async with db_store.engine.connect() as connection:
        assert await connection.scalar(select(func.count()).select_from(PrimeRow)) == 0


async def test_a_clip_whose_job_the_database_failed_to_queue_is_not_kept_for_nobody(
    fake_discord: FakeDiscord, bot_runner: BotRunner, db_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a refusal dropped the stored clip: a database that went away between storing the clip and
    queueing its job left megabytes no job uses, which no prune freed."""
    fake = fake_discord
    bot = await bot_runner.start(make_bot(fake, db_store))

    async def connection_lost(**fields: Any) -> int:
        raise OperationalError("INSERT INTO jobs", {}, ConnectionResetError("connection was closed"))

    monkeypatch.setattr(bot.store, "enqueue", connection_lost)
    record = await fake.invoke_command(
        "jukebox", {"length": 20.0}, attachments={"prime": Upload("riff.wav", prime_wav(3.0))}
    )
    assert (await reply_of(fake, record)).startswith("The bot cannot reach its database right now")
    assert await job_count(db_store) == 0
    async with db_store.engine.connect() as connection:
        assert await connection.scalar(select(func.count()).select_from(PrimeRow)) == 0
