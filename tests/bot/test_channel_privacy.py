"""Samples and jobs made in a channel stay with those who may read it: a member who cannot see
#music neither re-posts, continues, upsamples, votes on nor curates its samples from another channel,
and the listings (/top, /history, /curate user:/top:) leave them out for that member. A sample's maker
always may use it; a deleted channel's or thread's are its maker's alone, an archived thread's stay
its channel's. Public listings keep to what all who read their channel may see (test_public_listings.py). Decided from Discord's permissions, the bot's cache for other channels than the
interaction's own."""

from __future__ import annotations

import asyncio

import discord
import pytest

from bot.bot import JukeBot
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord, FakeMessage, FakeUser, InteractionRecord
from tests.bot.harness import PlayedWorker, answer_of, job_count, make_bot, reply_of, sample_posts
from tests.bot.test_curate import final_reply
from tests.waiting import wait_until

VIEW = discord.Permissions(view_channel=True).value
CHANNEL_LOOKUP = "/channels/{channel_id}"


def hidden_sample(sample_id: int) -> str:
    return (
        f"Sample #{sample_id} was made in a channel you cannot see; you can only use samples made in "
        "channels you can read, and your own."
    )


async def hidden_from(fake: FakeDiscord, bot: JukeBot, member: str, channel: str) -> FakeUser:
    """Take View Channel from `member` in `channel`, as a moderator does while the bot runs: Discord
    tells the bot (CHANNEL_UPDATE), whose cache then has the overwrite."""
    user, target = fake.user(member), fake.channel(channel)
    target.member_overwrites[user.id] = (0, VIEW)
    await fake.dispatch("CHANNEL_UPDATE", target.payload())

    async def known() -> bool:
        cached = bot.get_channel(target.id)
        assert isinstance(cached, discord.TextChannel)
        return cached.overwrites_for(discord.Object(user.id)).view_channel is False

    await wait_until(known, within=10.0, what=f"the bot to know {member} cannot see #{channel}")
    return user


READ = discord.Permissions(view_channel=True, read_message_history=True).value


async def private_music(fake: FakeDiscord, bot: JukeBot, reader: str) -> None:
    """#music made private as a moderator does: @everyone loses View Channel there, `reader` keeps it
    (the fake has no role overwrites: Discord's CHANNEL_UPDATE carries the @everyone one)."""
    guild, music, user = fake.default_guild, fake.channel("music"), fake.user(reader)
    music.member_overwrites[user.id] = (READ, 0)
    payload = music.payload()
    payload["permission_overwrites"].append({"id": str(guild.id), "type": 0, "allow": "0", "deny": str(READ)})
    await fake.dispatch("CHANNEL_UPDATE", payload)

    async def known() -> bool:
        cached = bot.get_channel(music.id)
        assert isinstance(cached, discord.TextChannel)
        return cached.overwrites_for(cached.guild.default_role).view_channel is False

    await wait_until(known, within=10.0, what="the bot to know #music is private")


async def made(store: JobStore, fake: FakeDiscord, user: str, channel_id: int, n: int = 1) -> list[int]:
    """A job by `user` in `channel_id`, played to success with `n` samples."""
    await store.enqueue(
        kind="generate",
        model="5b",
        params={"artist": "queen", "n_samples": n},
        channel_id=channel_id,
        user_id=fake.user(user).id,
        guild_id=fake.default_guild.id,
    )
    worker = PlayedWorker(store)
    return await worker.complete(await worker.claim(), n=n, full=False)


async def posted(fake: FakeDiscord, record: InteractionRecord) -> FakeMessage:
    """The public answer to an interaction (a re-posted sample, /top), once given."""
    message = await fake.wait_for(lambda: answer_of(record))
    assert not message.ephemeral, message.content
    return message


async def test_a_sample_of_a_channel_a_member_cannot_see_is_refused_to_them_everywhere(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    alice = await hidden_from(fake, bot, "alice", "music")
    bob, moderator = fake.user("bob"), fake.user("moderator")
    music = fake.channel("music")
    (hidden,) = await made(store, fake, "bob", music.id)
    (own,) = await made(store, fake, "alice", music.id)  # hers, from before she lost the channel

    for command, options in (
        ("sample", {"id": hidden}),
        ("continue", {"sample": hidden}),
        ("upsample", {"sample": hidden}),
    ):
        refused = await fake.invoke_command(command, options, user=alice)
        assert await reply_of(fake, refused) == hidden_sample(hidden), command

    # Bob, who reads #music, posts it in #general: its buttons refuse her too.
    message = await posted(fake, await fake.invoke_command("sample", {"id": hidden}, user=bob))
    assert message.attachments
    for button in ("vote", "continue", "upsample"):
        clicked = await fake.click(message, f"jukebot:{button}:{hidden}", user=alice)
        assert await reply_of(fake, clicked) == hidden_sample(hidden), button
        assert clicked.modal is None  # no Continue form to fill in for nothing
    assert await store.vote_count(hidden) == 0
    assert await job_count(store) == 2  # nothing queued for her

    # Those who read #music may; her own sample stays hers.
    await fake.click(message, f"jukebot:vote:{hidden}", user=moderator)
    await fake.wait_for(lambda: message.buttons[0]["label"] == "👍 1")
    assert (await posted(fake, await fake.invoke_command("sample", {"id": own}, user=alice))).attachments
    assert fake.calls("GET", CHANNEL_LOOKUP) == []  # decided from the bot's cache, not asked of Discord


async def test_listings_leave_out_what_a_member_cannot_see(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    alice = await hidden_from(fake, bot, "alice", "music")
    bob = fake.user("bob")
    general, music = fake.channel("general"), fake.channel("music")
    first, second = await made(store, fake, "bob", general.id, n=2)  # job 1
    (hidden,) = await made(store, fake, "bob", music.id)  # job 2
    for voter in range(3):  # the most voted of all
        await store.toggle_vote(hidden, voter)

    seen_by_alice = (
        await posted(fake, await fake.invoke_command("top", {"period": "all"}, user=alice))
    ).content
    assert f"Sample #{first} " in seen_by_alice and f"Sample #{second} " in seen_by_alice, seen_by_alice
    assert f"Sample #{hidden} " not in seen_by_alice and seen_by_alice.startswith(
        f"**Top samples of all time**\n1. Sample #{second} · 👍 0"
    ), seen_by_alice
    # Bob's /top is public in #general: it lists #music's sample only because @everyone may read
    # #music (Alice is kept out by her own overwrite alone); a channel closed to @everyone stays out of
    # public listings elsewhere (test_public_listings.py). Alice's /top there leaves it out all the same.
    seen_by_bob = (await posted(fake, await fake.invoke_command("top", {"period": "all"}, user=bob))).content
    assert f"1. Sample #{hidden} · 👍 3" in seen_by_bob, seen_by_bob
    await private_music(fake, bot, "bob")
    seen_by_bob = (await posted(fake, await fake.invoke_command("top", {"period": "all"}, user=bob))).content
    assert f"Sample #{hidden} " not in seen_by_bob and f"1. Sample #{second} " in seen_by_bob, seen_by_bob
    in_music = fake.invoke_command("top", {"period": "all"}, user=bob, channel=music)
    assert f"1. Sample #{hidden} · 👍 3" in (await posted(fake, await in_music)).content

    history = await reply_of(fake, await fake.invoke_command("history", {"user": bob}, user=alice))
    assert "• Job #1 " in history and "• Job #2 " not in history, history
    own = await reply_of(fake, await fake.invoke_command("history", user=bob))
    assert "• Job #1 " in own and "• Job #2 · generate · 5b · queen / unknown · succeeded" in own, own

    async def curate(options: dict[str, object]) -> str:
        return await final_reply(fake, await fake.invoke_command("curate", options, user=alice))

    assert await curate({"job": 2}) == (
        "Job #2 was made in a channel you cannot see; you can only use jobs made in channels you can "
        "read, and your own."
    )
    assert await curate({"samples": f"{first}, {hidden}"}) == (
        f"Sample #{hidden} was made in a channel you cannot see; you can only curate samples made in "
        "channels you can read, and your own."
    )
    assert (await curate({"top": "all"})).startswith("Done: sample #")  # the piece is a sample too
    piece = (await store.recent_jobs(alice.id))[0]
    assert sorted(piece.params["curation"]["sample_ids"]) == [first, second]
    (piece_sample,) = await store.samples_for_job(piece.id)
    # Bob's samples she may see are the same two: joined already (and so not #music's).
    assert (await curate({"user": bob})).startswith(
        f"These 2 samples were joined already: sample #{piece_sample.id} "
    )


async def test_a_deleted_channels_samples_are_their_makers_alone_and_an_archived_threads_stay_its_channels(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    # Archived before the bot starts: a thread the bot's cache lacks, as after a day without messages.
    thread = fake.add_thread(fake.channel("music"), "jam")
    thread.archived = True
    bot = await bot_runner.start(make_bot(fake, store))
    alice = await hidden_from(fake, bot, "alice", "music")
    deleted_channel = fake._snowflake()  # an id Discord no longer knows
    (from_deleted,) = await made(store, fake, "bob", deleted_channel)
    (from_thread,) = await made(store, fake, "bob", thread.id)

    # Who could read a deleted channel (or a deleted thread's channel) cannot be told: only its maker
    # may use what was made there, and it stays in their listings.
    for _ in range(2):
        refused = await fake.invoke_command("sample", {"id": from_deleted}, user=alice)
        assert await reply_of(fake, refused) == hidden_sample(from_deleted)
    bob = fake.user("bob")
    assert (
        await posted(fake, await fake.invoke_command("sample", {"id": from_deleted}, user=bob))
    ).attachments
    history = await reply_of(fake, await fake.invoke_command("history", user=bob))
    assert "• Job #1 " in history, history
    refused = await fake.invoke_command("sample", {"id": from_thread}, user=alice)
    assert await reply_of(fake, refused) == hidden_sample(from_thread)
    moderator = fake.user("moderator")  # reads #music
    assert (
        await posted(fake, await fake.invoke_command("sample", {"id": from_thread}, user=moderator))
    ).attachments
    # Discord was asked once about each channel the cache lacks, whatever used them since
    asked = sorted(call.path.rsplit("/", 1)[-1] for call in fake.calls("GET", CHANNEL_LOOKUP))
    assert asked == sorted([str(deleted_channel), str(thread.id)])


async def test_an_archived_thread_deleted_since_the_bot_looked_it_up_is_its_makers_alone(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """Discord's answer about an archived thread is kept, but a thread can still be deleted: then what
    was made there is its maker's alone, as for any deleted thread."""
    fake, store = fake_discord, sqlite_store
    thread = fake.add_thread(fake.channel("music"), "jam")
    thread.archived = True
    await bot_runner.start(make_bot(fake, store))
    (from_thread,) = await made(store, fake, "bob", thread.id)
    moderator = fake.user("moderator")  # reads #music, did not make it
    assert (
        await posted(fake, await fake.invoke_command("sample", {"id": from_thread}, user=moderator))
    ).attachments

    await fake.delete_thread(thread)  # the bot hears of it before the next command (one gateway, in order)
    refused = await fake.invoke_command("sample", {"id": from_thread}, user=moderator)
    assert await reply_of(fake, refused) == hidden_sample(from_thread)
    bob = fake.user("bob")
    assert (
        await posted(fake, await fake.invoke_command("sample", {"id": from_thread}, user=bob))
    ).attachments


async def test_a_thread_deleted_while_the_bot_looks_it_up_is_its_makers_alone(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Discord answers the lookup of an archived thread, the thread is deleted, then the answer arrives:
    the deletion must stand, not the older answer (which would let its channel's readers use it)."""
    from bot import actions

    fake, store = fake_discord, sqlite_store
    monkeypatch.setattr(actions, "UNCACHED_LOOKUP_SECONDS", 30.0)  # the answer is held, not lost
    heard = asyncio.Event()
    hear = actions.thread_deleted

    def thread_deleted(bot: JukeBot, thread_id: int) -> None:
        hear(bot, thread_id)
        heard.set()

    monkeypatch.setattr(actions, "thread_deleted", thread_deleted)
    thread = fake.add_thread(fake.channel("music"), "jam")
    thread.archived = True
    await bot_runner.start(make_bot(fake, store))
    (from_thread,) = await made(store, fake, "bob", thread.id)
    lookup = fake.hold("GET", CHANNEL_LOOKUP, handled=True)  # Discord answered: a thread of #music
    moderator = fake.user("moderator")  # reads #music, did not make it
    asked = await fake.invoke_command("sample", {"id": from_thread}, user=moderator)
    await fake.wait_for(lambda: lookup.arrived)
    await fake.delete_thread(thread)
    await asyncio.wait_for(heard.wait(), 10)
    lookup.release()
    assert await reply_of(fake, asked) == hidden_sample(from_thread)
    again = await fake.invoke_command("sample", {"id": from_thread}, user=moderator)
    assert await reply_of(fake, again) == hidden_sample(from_thread)
    assert len(fake.calls("GET", CHANNEL_LOOKUP)) == 1


async def test_an_upsample_made_in_a_hidden_channel_is_not_named_to_who_cannot_see_it(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    alice = await hidden_from(fake, bot, "alice", "music")
    moderator = fake.user("moderator")
    (preview,) = await made(store, fake, "bob", fake.channel("general").id)  # job 1, Bob's
    # The moderator upsamples it from #music, which Alice cannot see (job 2).
    asked = await fake.invoke_command(
        "upsample", {"sample": preview}, user=moderator, channel=fake.channel("music")
    )
    assert (await reply_of(fake, asked)).startswith("Queued as job #2.")

    running = await reply_of(fake, await fake.invoke_command("upsample", {"sample": preview}, user=alice))
    assert running == (
        f"Sample #{preview} is already being upsampled, in a channel you cannot see; whoever asked for "
        "it there can share its full-quality version."
    ), running
    worker = PlayedWorker(store)
    (full,) = await worker.complete(await worker.claim(), n=1, full=True)
    done = await reply_of(fake, await fake.invoke_command("upsample", {"sample": preview}, user=alice))
    assert done == (
        f"Sample #{preview} was upsampled already, in a channel you cannot see; whoever asked for it "
        "there can share its full-quality version."
    ), done
    assert f"#{full}" not in done and "job #2" not in done
    refused = await reply_of(fake, await fake.invoke_command("sample", {"id": full}, user=alice))
    assert refused == hidden_sample(full)
    # The moderator, who reads #music, is told where it is.
    told = await reply_of(fake, await fake.invoke_command("upsample", {"sample": preview}, user=moderator))
    assert told.startswith(f"Sample #{preview} was upsampled already, by job #2"), told


async def test_the_maker_of_a_sample_may_use_its_upsample_made_in_a_channel_they_cannot_see(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    alice = await hidden_from(fake, bot, "alice", "music")
    (preview,) = await made(store, fake, "alice", fake.channel("general").id)  # job 1, hers
    asked = await fake.invoke_command(
        "upsample", {"sample": preview}, user=fake.user("bob"), channel=fake.channel("music")
    )
    assert (await reply_of(fake, asked)).startswith("Queued as job #2.")

    # The one upsample of her sample runs where she cannot see: she is told where it will be.
    running = await reply_of(fake, await fake.invoke_command("upsample", {"sample": preview}, user=alice))
    assert running == (
        f"Sample #{preview} is already being upsampled as job #2; its full-quality version is posted in "
        f"another channel when that job ends; `/upsample sample:{preview}` then says how to post it here."
    ), running
    worker = PlayedWorker(store)
    (full,) = await worker.complete(await worker.claim(), n=1, full=True)
    done = await reply_of(fake, await fake.invoke_command("upsample", {"sample": preview}, user=alice))
    assert done == (
        f"Sample #{preview} was upsampled already, by job #2: its full-quality version is sample #{full} "
        f"(`/sample {full}` posts it again)."
    ), done
    message = await posted(fake, await fake.invoke_command("sample", {"id": full}, user=alice))
    assert message.content.startswith(f"**Sample #{full}**") and message.attachments


async def test_another_members_history_looks_through_a_bounded_number_of_their_jobs(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    jobs_extension = bot.extensions["bot.exts.jobs"]  # the module the bot loaded
    monkeypatch.setattr(jobs_extension, "HISTORY_SCAN", 2)
    monkeypatch.setattr(jobs_extension, "HISTORY_SCAN_LIMIT", 4, raising=False)
    alice = await hidden_from(fake, bot, "alice", "music")
    bob = fake.user("bob")
    for channel in ("general", "music", "music", "music", "music"):  # job 1 she may see, then 4 she may not
        await store.enqueue(
            kind="generate",
            model="5b",
            params={"artist": "queen"},
            channel_id=fake.channel(channel).id,
            user_id=bob.id,
            guild_id=fake.default_guild.id,
        )

    history = await reply_of(fake, await fake.invoke_command("history", {"user": bob}, user=alice))
    assert history == (
        f"<@{bob.id}> has no jobs here that you can see.\nOlder jobs may be hidden: only their latest 4 "
        "jobs were looked through for those made in channels you can read."
    ), history
    own = await reply_of(fake, await fake.invoke_command("history", user=bob))  # his own: all of them
    assert "• Job #1 " in own and "• Job #5 " in own and "Older jobs" not in own, own


async def test_threads_deleted_that_the_bot_never_looked_up_leave_nothing_behind(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """Every thread deleted in every server (forums, ticket bots) was remembered until a restart; a thread
    deleted before the bot ever asked about it answers "deleted" (404) when it does."""
    from bot import actions

    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    for number in range(20):
        await fake.delete_thread(fake.add_thread(fake.channel("general"), f"ticket-{number}"))
    jam = fake.add_thread(fake.channel("music"), "jam")
    jam.archived = True
    (from_jam,) = await made(store, fake, "bob", jam.id)
    await fake.delete_thread(jam)
    assert len(actions._UNCACHED.get(bot, {})) == 0
    moderator = fake.user("moderator")  # reads #music, did not make it: a deleted thread's sample is Bob's
    refused = await fake.invoke_command("sample", {"id": from_jam}, user=moderator)
    assert await reply_of(fake, refused) == hidden_sample(from_jam)
    assert len(actions._UNCACHED[bot]) == 1


async def test_top_looks_past_the_most_voted_samples_of_channels_not_shown_here(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """/top read the server's 100 most voted samples, then left out those not shown here: 101 voted
    samples of a private channel made /top in #general say "No samples of all time yet", and
    `/curate top:` find none either (review of the listings)."""
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    await private_music(fake, bot, "bob")
    alice = fake.user("alice")
    general, music = fake.channel("general"), fake.channel("music")
    shown = await made(store, fake, "alice", general.id, n=2)
    await store.toggle_vote(shown[0], 1)
    hidden: list[int] = []
    for _ in range(7):
        hidden += await made(store, fake, "bob", music.id, n=16)
    for sample_id in hidden[:101]:
        await store.toggle_vote(sample_id, 1)
        await store.toggle_vote(sample_id, 2)
    top = (await posted(fake, await fake.invoke_command("top", {"period": "all"}, user=alice))).content
    listed = [int(line.split("Sample #")[1].split(" ")[0]) for line in top.splitlines()[1:]]
    assert listed == [shown[0], shown[1]], top


async def test_a_private_channels_sample_is_not_posted_publicly_elsewhere_by_another_member(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """A member who reads the private #music posted its sample with `/sample` in #general, for all
    there to hear, and everyone there met buttons saying it was "made in a channel you cannot see".
    /top keeps such samples out of #general; /sample now does too, but for their maker's own choice."""
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    await private_music(fake, bot, "bob")
    general, music = fake.channel("general"), fake.channel("music")
    (sample_id,) = await made(store, fake, "alice", music.id)  # made there before it was closed to her

    refused = await reply_of(
        fake, await fake.invoke_command("sample", {"id": sample_id}, user=fake.user("bob"))
    )
    assert refused == (
        f"Sample #{sample_id} was made in <#{music.id}>, which not everyone here can read, so it is not "
        f"posted in this channel: use `/sample {sample_id}` there."
    )
    assert not sample_posts(fake, sample_id, "general")
    there = await fake.invoke_command("sample", {"id": sample_id}, user=fake.user("bob"), channel=music)
    assert (await posted(fake, there)).content.startswith(f"**Sample #{sample_id}**")
    own = await fake.invoke_command("sample", {"id": sample_id}, user=fake.user("alice"), channel=general)
    assert (await posted(fake, own)).content.startswith(f"**Sample #{sample_id}**")  # its maker's choice
