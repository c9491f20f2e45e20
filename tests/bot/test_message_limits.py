"""Replies whose length grows with what is stored (long labels, many jobs, many channels) stay within
Discord's 2,000 characters and keep their mentions and timestamps whole; requests the bot could not
answer in the channel are refused up front.

The fake Discord refuses content over 2,000 characters (50035) as Discord does: an unbounded reply
shows up there as the bot's apology instead of the list.
"""

from __future__ import annotations

import re

import discord

from bot.errors import MAX_MESSAGE_CHARS
from sampler.jobspec import JobParams
from storage.records import GuildSettings
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord, FakeUser
from tests.bot.harness import (
    PlayedWorker,
    answer_of,
    bot_messages,
    job_count,
    make_bot,
    reply_of,
)

# About the longest labels a model knows: a long artist name and five long genres.
LONG_ARTIST = "the presidents of the united states of america and the rest of the very long band name"
LONG_GENRES = ("experimental", "contemporary", "progressive", "psychedelic", "deutschrock")
TIMESTAMP = re.compile(r"<t:\d+:R>")


async def _jobs(
    store: JobStore, fake: FakeDiscord, user: FakeUser, count: int, *, samples: int = 0
) -> list[int]:
    """`count` jobs of `user` with the long labels; each finished with `samples` samples when > 0."""
    params = JobParams(artist=LONG_ARTIST, genres=LONG_GENRES, n_samples=max(samples, 1))
    ids = []
    for _ in range(count):
        ids.append(
            await store.enqueue(
                kind="generate",
                model="5b_lyrics",
                params=params.to_json(),
                channel_id=fake.channel("general").id,
                user_id=user.id,
                guild_id=fake.default_guild.id,
                max_running_per_user=1000,
                max_queued_per_user=1000,
            )
        )
        if samples:
            worker = PlayedWorker(store)
            await worker.complete(await worker.claim(), n=samples, full=False, seconds=0.5)
    return ids


async def test_history_of_jobs_with_long_labels_and_many_samples_fits_one_message(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    await bot_runner.start(make_bot(fake, store))
    alice = fake.user("alice")
    jobs = await _jobs(store, fake, alice, 11, samples=16)  # a page and one more

    history = await reply_of(fake, await fake.invoke_command("history", user=alice))
    assert len(history) <= MAX_MESSAGE_CHARS and fake.rejections == [], history
    lines = history.splitlines()
    assert lines[-1] == "More: `/history page:2`"
    assert [int(line.split("#")[1].split(" ")[0]) for line in lines[1:-1]] == jobs[::-1][:10]
    for line in lines[1:-1]:  # the labels are what gets shortened: the timestamp and samples stay
        assert " · the presidents of the united states" in line and "…" in line, line
        assert TIMESTAMP.search(line) and re.search(r"→ samples #\d+, #\d+, .*and \d+ more$", line), line


async def test_queue_lists_the_first_jobs_and_counts_the_rest(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    await bot_runner.start(make_bot(fake, store))
    alice, bob = fake.user("alice"), fake.user("bob")
    await store.set_guild_settings(
        GuildSettings(guild_id=fake.default_guild.id, max_queued_jobs_per_user=100)
    )
    running = await _jobs(store, fake, bob, 30)
    for job_id in running:  # thirty of bob's jobs run at once on thirty workers
        await PlayedWorker(store, worker_id=f"worker-{job_id}").claim()
    mine = await _jobs(store, fake, alice, 45)

    queue = await reply_of(fake, await fake.invoke_command("queue", user=alice))
    assert len(queue) <= MAX_MESSAGE_CHARS and fake.rejections == [], queue
    assert f"• Job #{mine[0]} (generate, 5b_lyrics): queued, position 1" in queue
    assert f"• Job #{mine[9]} (generate, 5b_lyrics): queued, position 10" in queue
    assert f"Job #{mine[10]} " not in queue and "• and 35 more (`/history` lists them)" in queue
    assert f"• Job #{running[7]} for <@{bob.id}>" in queue and f"Job #{running[8]} " not in queue
    assert queue.endswith("• and 22 more")


async def test_top_with_long_labels_fits_one_message(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    await bot_runner.start(make_bot(fake, store))
    await _jobs(store, fake, fake.user("alice"), 2, samples=5)

    top = await fake.invoke_command("top", {"period": "day"})
    message = await fake.wait_for(lambda: answer_of(top))
    assert len(message.content) <= MAX_MESSAGE_CHARS and fake.rejections == [], message.content
    lines = message.content.splitlines()
    assert lines[0] == "**Top samples today**" and len(lines) == 11
    for place, line in enumerate(lines[1:], start=1):
        assert line.startswith(f"{place}. Sample #") and "…" in line, line
        assert re.search(r"in <#\d+> \(`/sample \d+`\)$", line), line


async def test_admin_show_and_the_allow_list_refusal_name_many_channels_within_one_message(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    await bot_runner.start(make_bot(fake, store))
    guild = fake.default_guild
    allowed = tuple(10**18 + n for n in range(120))  # channels need not exist to be on the list
    await store.set_guild_settings(GuildSettings(guild_id=guild.id, allowed_channel_ids=allowed))

    show = await reply_of(fake, await fake.invoke_command("jukebot-admin show", user=fake.user("mod")))
    assert len(show) <= MAX_MESSAGE_CHARS and fake.rejections == [], show
    assert re.search(r"Allowed channels: <#1000000000000000000>, .*, and \d+ more$", show), show

    refused = await reply_of(fake, await fake.invoke_command("jukebox", {}, user=fake.user("alice")))
    assert refused.startswith("Jukebox is not available in this channel. Use it in <#1000000000000000000>, ")
    assert re.search(r", and \d+ more\.$", refused) and len(refused) <= MAX_MESSAGE_CHARS, refused


async def test_a_channel_where_the_bot_may_not_post_refuses_jobs_before_queuing_them(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """Results posted in a channel where the bot may not post would never be seen: hours of GPU
    work for nothing. The user hears which permission is missing, and nothing is queued."""
    fake, store = fake_discord, sqlite_store
    await bot_runner.start(make_bot(fake, store))
    general = fake.channel("general")
    general.bot_denied = discord.Permissions(send_messages=True, attach_files=True).value

    reply = await reply_of(fake, await fake.invoke_command("jukebox", {}, user=fake.user("alice")))
    assert reply == (
        "I cannot post results in this channel: I am missing the Send Messages, Attach Files permissions "
        "here. Ask a moderator to grant them to me, or use me in another channel."
    )
    assert await job_count(store) == 0

    general.bot_denied = discord.Permissions(read_message_history=True).value
    reply = await reply_of(fake, await fake.invoke_command("jukebox", {}, user=fake.user("alice")))
    assert reply.startswith("I cannot post results in this channel: I am missing the Read Message History ")
    assert await job_count(store) == 0

    general.bot_denied = 0
    reply = await reply_of(fake, await fake.invoke_command("jukebox", {}, user=fake.user("alice")))
    assert reply.startswith("Queued as job #1."), reply


async def test_lyrics_too_long_for_the_form_are_refused_not_cut(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    await bot_runner.start(make_bot(fake, store))
    lyrics = "la " * 1700  # 5,100 characters: the option takes them, the form (4,000) would not
    record = await fake.invoke_command("jukebox", {"lyrics": lyrics, "lyrics_modal": True})
    assert await reply_of(fake, record) == (
        "Your lyrics are 5,100 characters, more than the form's 4,000: send them in `lyrics` without "
        "`lyrics_modal` (up to 6,000), or shorten them."
    )
    assert await job_count(store) == 0


async def test_a_sample_that_cannot_be_posted_here_says_so_to_the_asker_alone(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """/sample thinks in public (its answer is for everyone): a refusal after that must not be."""
    fake, store = fake_discord, sqlite_store
    await bot_runner.start(make_bot(fake, store))
    (job_id,) = await _jobs(store, fake, fake.user("alice"), 1, samples=1)
    assert await store.claim_results_posting(job_id, "test", 600)  # the relay leaves the job alone
    assert await store.finish_results_posting(job_id, "test")
    fake.default_guild.attachment_size_limit = 300  # nothing fits, even split into parts

    record = await fake.invoke_command("sample", {"id": 1}, user=fake.user("bob"))
    refusal = await fake.wait_for(lambda: next(iter(record.followups), None))
    assert refusal.ephemeral and refusal.content.startswith("jukebot_sample_1 does not fit in this server's ")
    assert record.original is not None and record.original.deleted  # the public "thinking…" is gone
    # nothing public came of it (a progress message of the job may be there: the relay's own doing)
    public = [m for m in bot_messages(fake) if not m.deleted and not m.content.startswith("**Job #1**")]
    assert public == []
